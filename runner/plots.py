"""matplotlib figures from a run's history; no MLflow here (tracking logs what this draws).

A history maps metric names to [(step, value)] lists. Figures are plain `Figure` objects
(no pyplot state), so parallel jobs and long sweeps never leak open windows.
"""
import numpy as np
from matplotlib.figure import Figure


def _xy(points, skip=0):
    points = points[skip:]
    if not points:
        return np.array([]), np.array([])
    steps, values = zip(*points)
    return np.asarray(steps), np.asarray(values, dtype=float)


def _smooth(values, window):
    """Moving average so a batch-8 loss curve still shows its trend."""
    if len(values) < window * 2 or window <= 1:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def _log_if_wide(ax, *series) -> None:
    """Log scale when positive values span over two decades (e.g. a loss starting at 1e8)."""
    values = np.concatenate([np.asarray(v, dtype=float) for v in series if len(v)] or [[]])
    values = values[np.isfinite(values)]
    if len(values) and values.min() > 0 and values.max() / values.min() > 100:
        ax.set_yscale("log")


def curves(history, skip_first: int = 0) -> Figure:
    """Loss (train per step, smoothed; validation per eval) and validation accuracy vs step."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    val_steps, val_loss = _xy(history.get("val_loss", []), skip_first)
    first_step = val_steps[0] if len(val_steps) else 0
    steps, train_loss = _xy([p for p in history.get("train_loss", []) if p[0] >= first_step])
    if len(steps):
        window = max(1, len(steps) // 100)
        loss_ax.plot(steps, train_loss, color="tab:blue", alpha=0.2, lw=0.6)
        loss_ax.plot(steps[window - 1:] if window > 1 and len(steps) >= 2 * window else steps,
                     _smooth(train_loss, window), color="tab:blue", label="train loss")
    loss_ax.plot(val_steps, val_loss, color="tab:orange", marker=".", label="validation loss")
    loss_ax.set(xlabel="step", ylabel="loss", title="loss")
    _log_if_wide(loss_ax, train_loss, val_loss)
    loss_ax.legend()
    acc_steps, val_acc = _xy(history.get("val_acc", []), skip_first)
    acc_ax.plot(acc_steps, val_acc, color="tab:green", marker=".", label="validation accuracy")
    acc_ax.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    acc_ax.legend(loc="lower right")
    if skip_first:
        fig.suptitle(f"without the first {skip_first} evaluations")
    return fig


def grad_norms(history) -> Figure:
    """Global gradient norm before and after clipping, and the share clipped, vs step."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    norm_ax, frac_ax = fig.subplots(1, 2)
    for key, label, color in (("grad_norm", "before clipping", "tab:red"),
                              ("grad_norm_clipped", "after clipping", "tab:blue")):
        steps, values = _xy(history.get(key, []))
        norm_ax.plot(steps, values, label=label, color=color, lw=0.8)
    norm_ax.set(xlabel="step", ylabel="global gradient norm", title="gradient norm")
    if history.get("grad_norm") and min(v for _, v in history["grad_norm"]) > 0:
        norm_ax.set_yscale("log")
    norm_ax.legend()
    steps, fraction = _xy(history.get("clip_fraction", []))
    frac_ax.plot(steps, fraction, color="tab:purple", lw=0.8)
    frac_ax.set(xlabel="step", ylabel="share clipped", title="clip fraction", ylim=(-0.02, 1.02))
    return fig


def sweep_comparison(histories, keys=("val_loss", "val_acc")) -> Figure:
    """Every run of a sweep on one chart per metric in `keys` (e.g. val_loss, val_acc)."""
    fig = Figure(figsize=(6 * len(keys), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(keys)))
    for i, name in enumerate(histories):
        for ax, key in zip(axes, keys):
            steps, values = _xy(histories[name].get(key, []))
            ax.plot(steps, values, label=name, lw=1, color=f"C{i % 10}")
    for ax, key in zip(axes, keys):
        ax.set(xlabel="epoch" if "perplexity" in key else "step", ylabel=key, title=key)
        if key.endswith("acc"):
            ax.set_ylim(0, 1.02)
        else:
            _log_if_wide(ax, *[_xy(h.get(key, []))[1] for h in histories.values()])
    axes[-1].legend(fontsize="small")
    return fig


def grad_norms_per_variable(history) -> Figure:
    """Each variable's gradient norm before (left) and after (right) clipping vs step."""
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    before_ax, after_ax = fig.subplots(1, 2, sharey=True)
    for ax, key, title in ((before_ax, "var_norms", "before clipping"),
                           (after_ax, "var_norms_clipped", "after clipping")):
        points = history.get(key, [])
        names = list(points[0][1]) if points else []
        for name in names:
            ax.plot([s for s, _ in points], [norms[name] for _, norms in points], label=name, lw=1)
        ax.set(xlabel="step", ylabel="gradient norm", title=f"per-variable gradient norm, {title}")
        if points and min(min(n.values()) for _, n in points) > 0:
            ax.set_yscale("log")
    before_ax.legend(fontsize="x-small")
    return fig


def weight_images(weights) -> Figure:
    """Each weight matrix min-max normalised to [0, 1] as an image (seed 003's w1..w4)."""
    names = list(weights)
    cols = min(4, max(1, len(names)))
    rows = max(1, -(-len(names) // cols))
    fig = Figure(figsize=(3.4 * cols, 3.2 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, name in zip(axes, names):
        w = weights[name]
        w = w.reshape(-1, w.shape[-1])  # conv kernels: one column per output channel
        span = w.max() - w.min()
        ax.imshow((w - w.min()) / span if span > 0 else np.zeros_like(w), aspect="auto",
                  cmap="viridis", interpolation="nearest")
        ax.set_title(f"{name} {tuple(weights[name].shape)}", fontsize="small")
    for ax in axes[len(names):]:
        ax.axis("off")
    return fig


def perplexity_curves(history, test_perplexity=None) -> Figure:
    """Train and valid perplexity per epoch (log scale), plus the per-word loss per step."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ppl_ax, loss_ax = fig.subplots(1, 2)
    for key, label, color in (("train_perplexity", "train", "tab:blue"),
                              ("valid_perplexity", "valid", "tab:orange")):
        points = [(e, v) for e, v in history.get(key, []) if np.isfinite(v)]
        if points:
            ppl_ax.plot(*zip(*points), marker=".", color=color, label=label)
    if test_perplexity is not None and history.get("valid_perplexity"):
        ppl_ax.plot([history["valid_perplexity"][-1][0]], [test_perplexity], marker="*",
                    markersize=12, ls="", color="tab:red", label=f"test {test_perplexity:.1f}")
    ppl_ax.set(xlabel="epoch", ylabel="perplexity", title="perplexity", yscale="log")
    if ppl_ax.lines:
        ppl_ax.legend()
    if history.get("train_loss"):
        steps, values = (np.asarray(v) for v in zip(*history["train_loss"]))
        window = max(1, len(values) // 200)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        loss_ax.plot(steps, values, color="tab:blue", alpha=0.2, lw=0.6)
        loss_ax.plot(steps[window - 1:], smooth, color="tab:blue", label="train loss per word")
        lr_ax = loss_ax.twinx()
        lr_ax.plot(*zip(*history["lr"]), color="tab:green", lw=1, label="lr")
        lr_ax.set_ylabel("learning rate", color="tab:green")
        loss_ax.legend(loc="upper right")
    loss_ax.set(xlabel="step", ylabel="cross-entropy per word", title="training loss")
    return fig
