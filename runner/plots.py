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


def sweep_comparison(histories) -> Figure:
    """Every run of a sweep on one chart: validation loss and accuracy vs step."""
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for name, history in histories.items():
        steps, values = _xy(history.get("val_loss", []))
        (line,) = loss_ax.plot(steps, values, label=name, lw=1)
        steps, values = _xy(history.get("val_acc", []))
        acc_ax.plot(steps, values, label=name, lw=1, color=line.get_color())
    loss_ax.set(xlabel="step", ylabel="validation loss", title="validation loss")
    acc_ax.set(xlabel="step", ylabel="validation accuracy", title="validation accuracy",
               ylim=(0, 1.02))
    acc_ax.legend(fontsize="small", loc="lower right")
    return fig
