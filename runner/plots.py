"""matplotlib figures from a run's history; no MLflow here (tracking logs what this draws).

A history maps metric names to [(step, value)] lists. Figures are plain `Figure` objects
(no pyplot state), so parallel jobs and long sweeps never leak open windows.

Drawing cost is set by a `Rendering` (benchmarks/bench_plots.py measures both). `CHEAP`, the
default: each per-step series drawn as a min/max envelope of a few hundred points, big weight
matrices strided down to what the pixels can show, fixed margins (matplotlib's constrained
layout measures every tick label: over half of the old cost), fewer ticks and plain-text log
labels (each tick ~1 ms of Python, a mathtext label ~5 ms), 80 dpi, fast PNG compression.
`DETAILED` is the old look: every point, 100 dpi, constrained layout, matplotlib's ticks.
Write a figure with `figure.savefig(path, **rendering.savefig_kwargs)`.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, LogLocator, MaxNLocator, NullLocator


@dataclass(frozen=True)
class Rendering:
    """What a figure costs to draw; None means no limit."""
    dpi: int = 80
    scale: float = 1.0  # figure inches; smaller also means fewer ticks (matplotlib fits them)
    max_points: Optional[int] = 400  # per line: a min/max envelope keeps spikes visible
    max_image_side: Optional[int] = 300  # weight images: rows/columns strided down to this
    # Constrained layout and automatic title placement measure every tick label's extent;
    # False: fixed margins in inches and titles pinned above the axes.
    measure_text: bool = False
    # Each tick costs ~1 ms of Python and a mathtext label ~5 ms. A number: linear axes get
    # at most this many tick intervals; log axes plain-text labels (1e-02, not 10^-2) and
    # minor ticks at 2 and 5 only (not 2..9), none when two decades or more are shown;
    # weight images no ticks (their titles give the shape). None: matplotlib's own ticks.
    tick_bins: Optional[int] = 5
    # zlib level of the PNG (Pillow's default is 6); 1 is ~2x faster for ~10% more bytes.
    png_compress_level: int = 1

    @property
    def savefig_kwargs(self):
        """Keyword arguments for `Figure.savefig` (MLflow: `log_figure(save_kwargs=...)`)."""
        return {"pil_kwargs": {"compress_level": self.png_compress_level}}


CHEAP = Rendering()
PNG = CHEAP.savefig_kwargs  # how a run writes its figures (tracking's log_figure save_kwargs)
DETAILED = Rendering(dpi=100, max_points=None, max_image_side=None, measure_text=True,
                     tick_bins=None, png_compress_level=6)

# Fixed margins (inches) around the axes when constrained layout is off: room for tick
# labels, an axis label and a title at 10 pt.
MARGINS = {"left": 0.75, "right": 0.2, "bottom": 0.55, "top": 0.4}
SUPTITLE_ROOM = 0.3  # extra inches at the top for a figure title


def _subplots(rendering, size, rows=1, cols=1, gap=(0.7, 0.6), top=MARGINS["top"],
              right=MARGINS["right"], count=None, **kw):
    """A Figure of `size` inches with a rows x cols grid of axes `gap` inches apart.

    `count`: only the first `count` cells get axes (an Axes costs ~10 ms even when empty).
    """
    size = width, height = size[0] * rendering.scale, size[1] * rendering.scale
    if rendering.measure_text:
        fig = Figure(figsize=size, dpi=rendering.dpi, layout="constrained")
        return fig, _grid(fig, rows, cols, count, **kw)
    fig = Figure(figsize=size, dpi=rendering.dpi)
    left, bottom = MARGINS["left"], MARGINS["bottom"]
    axes_width = (width - left - right - (cols - 1) * gap[0]) / cols
    axes_height = (height - bottom - top - (rows - 1) * gap[1]) / rows
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, wspace=gap[0] / axes_width,
                        hspace=gap[1] / axes_height)
    axes = _grid(fig, rows, cols, count, **kw)
    if rendering.tick_bins:
        for ax in axes.flat:
            for axis in (ax.xaxis, ax.yaxis):  # round steps, like matplotlib's own locator
                axis.set_major_locator(MaxNLocator(rendering.tick_bins,
                                                   steps=[1, 2, 2.5, 5, 10]))
    return fig, axes


def _grid(fig, rows, cols, count, **kw):
    if count is None:
        return fig.subplots(rows, cols, squeeze=False, **kw)
    return np.array([[fig.add_subplot(rows, cols, i + 1, **kw) for i in range(count)]])


def envelope(steps, values, max_points):
    """At most `max_points` of (steps, values): each bucket's min and max, in step order.

    A 1000-step loss drawn at 800 px has more points than pixel columns; the envelope draws
    the same band (spikes and global extremes kept exactly) for a fraction of the cost.
    """
    steps, values = np.asarray(steps), np.asarray(values, dtype=float)
    if max_points is None or len(values) <= max_points:
        return steps, values
    edges = np.linspace(0, len(values), max(1, max_points // 2) + 1).astype(int)
    low = np.where(np.isnan(values), np.inf, values)  # NaN never wins a bucket
    high = np.where(np.isnan(values), -np.inf, values)
    keep = set()
    for start, stop in zip(edges[:-1], edges[1:]):
        keep.update((start + int(np.argmin(low[start:stop])),
                     start + int(np.argmax(high[start:stop]))))
    keep = np.array(sorted(keep))
    return steps[keep], values[keep]


def _title(ax, text, rendering, **style) -> None:
    """Axes title; pinned above the axes unless text is measured (placing it measures ticks)."""
    ax.set_title(text, y=None if rendering.measure_text else 1.0, **style)


def _log_y(ax, rendering) -> None:
    """Log y axis; with sparse ticks, minor ticks only where decades alone read poorly."""
    ax.set_yscale("log")
    if rendering.tick_bins:
        low, high = ax.get_ylim()  # the data is drawn: these are the final limits
        few_decades = high / low < 100
        ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)) if few_decades
                                   else NullLocator())
        ax.yaxis.set_major_formatter(LogFormatter())
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))  # labels a short span


def _line(ax, steps, values, rendering, **style):
    ax.plot(*envelope(steps, values, rendering.max_points), **style)


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


def _log_if_wide(ax, *series, rendering=DETAILED) -> None:
    """Log scale when positive values span over two decades (e.g. a loss starting at 1e8)."""
    values = np.concatenate([np.asarray(v, dtype=float) for v in series if len(v)] or [[]])
    values = values[np.isfinite(values)]
    if len(values) and values.min() > 0 and values.max() / values.min() > 100:
        _log_y(ax, rendering)


def curves(history, skip_first: int = 0, rendering: Rendering = CHEAP) -> Figure:
    """Loss (train per step, smoothed; validation per eval) and validation accuracy vs step."""
    top = MARGINS["top"] + (SUPTITLE_ROOM if skip_first else 0)
    fig, ((loss_ax, acc_ax),) = _subplots(rendering, (11, 4.2), cols=2, top=top)
    val_steps, val_loss = _xy(history.get("val_loss", []), skip_first)
    first_step = val_steps[0] if len(val_steps) else 0
    steps, train_loss = _xy([p for p in history.get("train_loss", []) if p[0] >= first_step])
    if len(steps):
        window = max(1, len(steps) // 100)
        _line(loss_ax, steps, train_loss, rendering, color="tab:blue", alpha=0.2, lw=0.6)
        _line(loss_ax, steps[window - 1:] if window > 1 and len(steps) >= 2 * window else steps,
              _smooth(train_loss, window), rendering, color="tab:blue", label="train loss")
    loss_ax.plot(val_steps, val_loss, color="tab:orange", marker=".", label="validation loss")
    loss_ax.set(xlabel="step", ylabel="loss")
    _title(loss_ax, "loss", rendering)
    _log_if_wide(loss_ax, train_loss, val_loss, rendering=rendering)
    loss_ax.legend()
    acc_steps, val_acc = _xy(history.get("val_acc", []), skip_first)
    acc_ax.plot(acc_steps, val_acc, color="tab:green", marker=".", label="validation accuracy")
    acc_ax.set(xlabel="step", ylabel="accuracy", ylim=(0, 1.02))
    _title(acc_ax, "accuracy", rendering)
    acc_ax.legend(loc="lower right")
    if skip_first:
        fig.suptitle(f"without the first {skip_first} evaluations")
    return fig


def grad_norms(history, rendering: Rendering = CHEAP) -> Figure:
    """Global gradient norm before and after clipping, and the share clipped, vs step."""
    fig, ((norm_ax, frac_ax),) = _subplots(rendering, (11, 4.2), cols=2)
    for key, label, color in (("grad_norm", "before clipping", "tab:red"),
                              ("grad_norm_clipped", "after clipping", "tab:blue")):
        _line(norm_ax, *_xy(history.get(key, [])), rendering, label=label, color=color, lw=0.8)
    norm_ax.set(xlabel="step", ylabel="global gradient norm")
    _title(norm_ax, "gradient norm", rendering)
    if history.get("grad_norm") and min(v for _, v in history["grad_norm"]) > 0:
        _log_y(norm_ax, rendering)
    norm_ax.legend()
    _line(frac_ax, *_xy(history.get("clip_fraction", [])), rendering, color="tab:purple", lw=0.8)
    frac_ax.set(xlabel="step", ylabel="share clipped", ylim=(-0.02, 1.02))
    _title(frac_ax, "clip fraction", rendering)
    return fig


def grad_norms_per_variable(history, rendering: Rendering = CHEAP) -> Figure:
    """Each variable's gradient norm before (left) and after (right) clipping vs step."""
    fig, ((before_ax, after_ax),) = _subplots(rendering, (12, 4.6), cols=2, gap=(0.3, 0),
                                              sharey=True)
    for ax, key, title in ((before_ax, "var_norms", "before clipping"),
                           (after_ax, "var_norms_clipped", "after clipping")):
        points = history.get(key, [])
        names = list(points[0][1]) if points else []
        steps = [s for s, _ in points]
        for name in names:
            _line(ax, steps, [norms[name] for _, norms in points], rendering, label=name, lw=1)
        ax.set(xlabel="step")
        _title(ax, f"per-variable gradient norm, {title}", rendering)
        if points and min(min(n.values()) for _, n in points) > 0:
            _log_y(ax, rendering)
    before_ax.set_ylabel("gradient norm")
    before_ax.legend(fontsize="x-small")
    return fig


def weight_images(weights, rendering: Rendering = CHEAP) -> Figure:
    """Each weight matrix min-max normalised to [0, 1] as an image (seed 003's w1..w4).

    Rows and columns beyond `rendering.max_image_side` are strided, as nearest-neighbour
    drawing would do anyway; the image keeps the matrix's own row and column coordinates.
    """
    names = list(weights)
    cols = min(4, max(1, len(names)))
    rows = max(1, -(-len(names) // cols))
    fig, axes = _subplots(rendering, (3.4 * cols, 3.2 * rows), rows, cols, gap=(0.6, 0.7),
                          count=len(names))
    for ax, name in zip(axes.flat, names):
        w = weights[name]
        w = w.reshape(-1, w.shape[-1])  # conv kernels: one column per output channel
        span = w.max() - w.min()
        shown = _stride_to(w, rendering.max_image_side)
        ax.imshow((shown - w.min()) / span if span > 0 else np.zeros_like(shown), aspect="auto",
                  cmap="viridis", interpolation="nearest",
                  extent=(-0.5, w.shape[1] - 0.5, w.shape[0] - 0.5, -0.5))
        if rendering.tick_bins:
            ax.set_axis_off()  # the title gives the shape; tick machinery is most of the cost
        _title(ax, f"{name} {tuple(weights[name].shape)}", rendering, fontsize="small")
    return fig


def _stride_to(matrix, max_side):
    """Every k-th row and column so neither side exceeds `max_side` (None: unchanged)."""
    if max_side is None:
        return matrix
    row_step, col_step = (-(-side // max_side) for side in matrix.shape)
    return matrix[::row_step, ::col_step]


def perplexity_curves(history, test_perplexity=None, rendering: Rendering = CHEAP) -> Figure:
    """Train and valid perplexity per epoch (log scale), plus the per-word loss per step."""
    fig, ((ppl_ax, loss_ax),) = _subplots(rendering, (11, 4.2), cols=2, gap=(0.9, 0),
                                          right=0.8)
    for key, label, color in (("train_perplexity", "train", "tab:blue"),
                              ("valid_perplexity", "valid", "tab:orange")):
        points = [(e, v) for e, v in history.get(key, []) if np.isfinite(v)]
        if points:
            ppl_ax.plot(*zip(*points), marker=".", color=color, label=label)
    if test_perplexity is not None and history.get("valid_perplexity"):
        ppl_ax.plot([history["valid_perplexity"][-1][0]], [test_perplexity], marker="*",
                    markersize=12, ls="", color="tab:red", label=f"test {test_perplexity:.1f}")
    ppl_ax.set(xlabel="epoch", ylabel="perplexity")
    _log_y(ppl_ax, rendering)
    _title(ppl_ax, "perplexity", rendering)
    if ppl_ax.lines:
        ppl_ax.legend()
    if history.get("train_loss"):
        steps, values = (np.asarray(v) for v in zip(*history["train_loss"]))
        window = max(1, len(values) // 200)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        _line(loss_ax, steps, values, rendering, color="tab:blue", alpha=0.2, lw=0.6)
        _line(loss_ax, steps[window - 1:], smooth, rendering, color="tab:blue",
              label="train loss per word")
        lr_ax = loss_ax.twinx()
        _line(lr_ax, *_xy(history["lr"]), rendering, color="tab:green", lw=1, label="lr")
        lr_ax.set_ylabel("learning rate", color="tab:green")
        loss_ax.legend(loc="upper right")
    loss_ax.set(xlabel="step", ylabel="cross-entropy per word")
    _title(loss_ax, "training loss", rendering)
    return fig
