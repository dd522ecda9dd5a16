"""The sweep report's two figures, from job records; no MLflow here (report.py logs them).

`sweep_map`: the final metric over the swept axes (a heatmap for two, a line for one, one map
per value of any further axis), every cell annotated, diverged/collapsed cells hatched.
`sweep_curves`: one panel per value of the map's rows, one line per value of its columns,
coloured along a sequential colormap and labelled at the line's end (no legend over data).
Figures are plain `Figure` objects at dpi 100, cheap to render and never left open.
"""
import math
from typing import Dict, List, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from runner import tags
from runner.outcome import COLLAPSED, DIVERGED, OK
from runner.results import (METRICS, RUN_AXIS, Grid, JobRecord, axis_values, facets, grid,
                            is_numeric, map_axes, ranked)

DPI = 100
# Outcomes without a value worth colouring (the metric predates a blow-up, or never came).
NO_VALUE_FILL = {DIVERGED: "#d9d9d9", tags.OUTCOME_ERROR: "#f2f2f2",
                 tags.OUTCOME_KILLED: "#f2f2f2", tags.OUTCOME_RUNNING: "#f2f2f2"}
DIVERGED_HATCH, COLLAPSED_HATCH = "xx", "////"
COLLAPSED_EDGE = "#b2182b"  # dark red hatch over the cell's value colour


def _short(value: str) -> str:
    """A tick label: numbers compact (5e-05, 0.0005), names as they are."""
    try:
        return f"{float(value):g}"
    except ValueError:
        return value


def _fmt(value: float) -> str:
    """Three significant digits, trailing zeros kept so a column reads evenly (1.40, 0.565);
    large and tiny numbers as 8.70e4, not 8.70e+04."""
    if not math.isfinite(value):
        return "—"
    text = f"{value:#.3g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        return f"{mantissa.rstrip('.')}e{int(exponent)}"
    return text.rstrip(".")


def _norm(values: np.ndarray):
    """Log colour scale when positive values span more than a decade, linear otherwise."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return Normalize(0, 1)
    low, high = finite.min(), finite.max()
    if low > 0 and high / low > 10:
        return LogNorm(low, high)
    return Normalize(low, high if high > low else low + 1e-12)


def _ink(rgba) -> str:
    """Black or white text, whichever reads on this fill."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _colour_values(records: Sequence[JobRecord], metric: str) -> np.ndarray:
    """Values that set the colour scale: finite, not from diverged jobs."""
    return np.array([r.value(metric) for r in records if r.outcome != DIVERGED])


# ---------------------------------------------------------------- the map

def _cell_text(cell: Grid, i: int, j: int) -> str:
    job, value = cell.jobs[i][j], cell.values[i, j]
    if job is None:
        return "no run"
    if job.outcome == DIVERGED:
        return f"diverged\n@ {job.diverged_at}" if job.diverged_at is not None else "diverged"
    text = _fmt(value) if math.isfinite(value) else job.outcome
    return f"{text}\ncollapsed" if job.outcome == COLLAPSED else text


def _best_cells(cell: Grid, higher: bool) -> set:
    """(i, j) of the best value in each column among jobs that learned (ok); ties all count
    (clipping that never triggers gives the very same run as no clipping)."""
    best = set()
    for j in range(len(cell.x_values)):
        column = {i: cell.values[i, j] for i in range(len(cell.y_values))
                  if math.isfinite(cell.values[i, j]) and cell.outcome(i, j) == OK}
        if column:
            top = (max if higher else min)(column.values())
            best.update((i, j) for i, value in column.items() if value == top)
    return best


def _heatmap(ax, cell: Grid, norm, cmap, higher: bool, overall_best) -> None:
    rows, cols = cell.values.shape
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)  # first row on top
    best_in_column = _best_cells(cell, higher)
    for i in range(rows):
        for j in range(cols):
            job, value = cell.jobs[i][j], cell.values[i, j]
            outcome = job.outcome if job else None
            xy = (j - 0.5, i - 0.5)
            if job is None:
                fill, hatch, edge = "white", None, "#bbbbbb"
            elif outcome == DIVERGED or not math.isfinite(value):
                fill, hatch, edge = NO_VALUE_FILL.get(outcome, "#f2f2f2"), (
                    DIVERGED_HATCH if outcome == DIVERGED else None), "#7f7f7f"
            else:
                fill, hatch, edge = cmap(norm(value)), (
                    COLLAPSED_HATCH if outcome == COLLAPSED else None), COLLAPSED_EDGE
            ax.add_patch(Rectangle(xy, 1, 1, facecolor=fill, edgecolor="white", lw=1.5))
            if hatch:  # hatch drawn in its own colour, over the fill
                ax.add_patch(Rectangle(xy, 1, 1, fill=False, hatch=hatch, edgecolor=edge,
                                       lw=0))
            is_value = job is not None and outcome != DIVERGED and math.isfinite(value)
            ink = _ink(fill) if is_value and hatch is None else "black"
            ax.text(j, i, _cell_text(cell, i, j), ha="center", va="center", fontsize=8.5,
                    color=ink, fontweight="bold" if (i, j) in best_in_column else "normal",
                    bbox=(dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85)
                          if hatch else None))
            if job is not None and job is overall_best:
                ax.add_patch(Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False,
                                       edgecolor="black", lw=2.5))
    ax.set_xticks(range(cols), [_short(v) for v in cell.x_values])
    ax.set_yticks(range(rows), [_short(v) for v in cell.y_values] if cell.y_axis else [""])
    ax.set_xlabel(cell.x_axis)
    if cell.y_axis:
        ax.set_ylabel(cell.y_axis)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)


def _line_map(ax, records: Sequence[JobRecord], metric: str, x_axis: str) -> None:
    """One swept axis: the metric against it, markers per job, failures marked at the floor."""
    spec = METRICS[metric]
    values = axis_values(records, x_axis)
    numeric = is_numeric(records, x_axis)
    position = {v: (float(v) if numeric else k) for k, v in enumerate(values)}
    cell = grid(records, metric, x_axis, None)
    xs = np.array([position[v] for v in values])
    ys = cell.values[0]
    finite = [(x, y, cell.jobs[0][j]) for j, (x, y) in enumerate(zip(xs, ys))
              if math.isfinite(y) and cell.outcome(0, j) != DIVERGED]
    if finite:
        ax.plot([p[0] for p in finite], [p[1] for p in finite], color="#4c72b0", lw=1.5,
                marker="o", zorder=2)
    for x, y, job in finite:
        collapsed = job.outcome == COLLAPSED
        if collapsed:
            ax.plot([x], [y], marker="o", ms=11, mfc="none", mec=COLLAPSED_EDGE, mew=2)
        ax.annotate(_fmt(y) + ("\ncollapsed" if collapsed else ""), (x, y),
                    textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8.5,
                    color=COLLAPSED_EDGE if collapsed else "black")
    for j, x in enumerate(xs):
        job = cell.jobs[0][j]
        if job is not None and (job.outcome == DIVERGED or not math.isfinite(ys[j])):
            ax.plot([x], [0.04], marker="X", ms=10, color="#7f7f7f",
                    transform=ax.get_xaxis_transform(), clip_on=False)
            ax.annotate(_cell_text(cell, 0, j).replace("\n", " "), (x, 0.04),
                        xycoords=ax.get_xaxis_transform(), textcoords="offset points",
                        xytext=(0, 9), ha="center", fontsize=8, color="#555555")
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    ax.set_xticks(xs, [_short(v) for v in values])
    ax.minorticks_off()
    finite_y = np.array([p[1] for p in finite])
    if len(finite_y) and finite_y.min() > 0 and finite_y.max() / finite_y.min() > 10:
        ax.set_yscale("log")
    ax.margins(x=0.08, y=0.25)
    ax.set(xlabel=x_axis, ylabel=metric)
    ax.grid(alpha=0.3)
    ax.set_title(f"{metric} ({spec.direction})", fontsize=10)


def sweep_map(records: Sequence[JobRecord], metric: str) -> Figure:
    """The final metric over the swept axes, each cell (or point) annotated with its value."""
    spec = METRICS[metric]
    x_axis, y_axis, extra = map_axes(records)
    if y_axis is None:
        fig = Figure(figsize=(max(5.0, 1.1 * len(axis_values(records, x_axis)) + 2), 3.8),
                     dpi=DPI, layout="constrained")
        _line_map(fig.subplots(), records, metric, x_axis)
        return fig
    groups = facets(records, extra)
    n_cols, n_rows = len(axis_values(records, x_axis)), len(axis_values(records, y_axis))
    per_row = len(groups) if len(groups) <= 3 else min(3, math.ceil(math.sqrt(len(groups))))
    grid_rows = -(-len(groups) // per_row)
    cell_w, cell_h = 0.95, 0.55
    fig = Figure(figsize=(per_row * (n_cols * cell_w + 1.6) + 1.2,
                          grid_rows * (n_rows * cell_h + 1.1) + 1.3),
                 dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(grid_rows, per_row, squeeze=False)).ravel()
    cmap = colormaps["viridis" if spec.higher_is_better else "viridis_r"]
    norm = _norm(_colour_values(records, metric))
    best = next((r for r in ranked(records, metric)
                 if r.outcome == OK and math.isfinite(r.value(metric))), None)
    for ax, (label, jobs) in zip(axes, groups):
        _heatmap(ax, grid(jobs, metric, x_axis, y_axis), norm, cmap, spec.higher_is_better,
                 best)
        if label:
            ax.set_title(label, fontsize=10)
    for ax in axes[len(groups):]:
        ax.axis("off")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[:len(groups)]),
                       shrink=0.9, aspect=25, pad=0.02)
    bar.set_label(f"{metric} ({spec.direction})")
    if isinstance(norm, LogNorm):  # plain numbers, not 2x10^-1: five ticks across the range
        bar.set_ticks(np.geomspace(norm.vmin, norm.vmax, 5), labels=[
            _fmt(v) for v in np.geomspace(norm.vmin, norm.vmax, 5)])
        bar.ax.minorticks_off()
    fig.suptitle(f"final {metric} per job ({spec.direction})\nbold = best "
                 f"{y_axis.removesuffix('.name')} at each {x_axis}", fontsize=9.5)
    fig.legend(handles=_legend_handles(records), loc="outside lower center",
               ncols=4, fontsize=8.5, frameon=False)
    return fig


def _legend_handles(records: Sequence[JobRecord]) -> List[Patch]:
    outcomes = {r.outcome for r in records}
    handles = [Patch(facecolor="white", edgecolor="black", lw=2.5, label="best overall")]
    if DIVERGED in outcomes:
        handles.append(Patch(facecolor=NO_VALUE_FILL[DIVERGED], hatch=DIVERGED_HATCH,
                             edgecolor="#7f7f7f", label="diverged (NaN/Inf) at step"))
    if COLLAPSED in outcomes:
        handles.append(Patch(facecolor="white", hatch=COLLAPSED_HATCH, edgecolor=COLLAPSED_EDGE,
                             label="collapsed (finite, learned nothing)"))
    other = outcomes - {OK, DIVERGED, COLLAPSED}
    if other:
        handles.append(Patch(facecolor="#f2f2f2", edgecolor="#7f7f7f",
                             label=" / ".join(sorted(other)) + " (no value)"))
    return handles


# ---------------------------------------------------------------- the curves

def _spread(positions: List[float], gap: float) -> List[float]:
    """Nudge label heights (axes fraction) apart by at least `gap`, keeping their order."""
    order = sorted(range(len(positions)), key=lambda k: positions[k])
    placed = [positions[k] for k in order]
    for k in range(1, len(placed)):
        placed[k] = max(placed[k], placed[k - 1] + gap)
    overflow = placed[-1] - 1.0 if placed else 0
    if overflow > 0:  # shift the stack down, but not below the floor
        placed = [p - overflow for p in placed]
        for k in range(len(placed) - 2, -1, -1):
            placed[k] = min(placed[k], placed[k + 1] - gap)
    out = [0.0] * len(positions)
    for k, p in zip(order, placed):
        out[k] = p
    return out


def _finite_points(history):
    return [(s, v) for s, v in history if math.isfinite(v) and abs(v) < 1e300]


def _view(records: Sequence[JobRecord], curve: str):
    """(y limits, log scale?) shared by every panel, fitted to the jobs that learned.

    A blown-up run (perplexity 1e78) would otherwise flatten every other line; its line
    leaves the top of the chart and its end label says where it ended.
    """
    def values(jobs):
        return [v for r in jobs for _, v in _finite_points(r.histories.get(curve, []))]

    shown = values([r for r in records if r.outcome == OK]) or values(records)
    if curve.endswith("acc"):
        return (0.0, 1.02), False
    if not shown:
        return (0.0, 1.0), False
    low, high = min(shown), max(shown)
    if low > 0 and high / low > 30:
        return (low / 1.3, high * 1.3), True
    pad = 0.06 * (high - low or abs(high) or 1)
    return (low - pad, high + pad), False


def sweep_curves(records: Sequence[JobRecord], metric: str) -> Figure:
    """The metric's curve per job: one panel per row value of the map (and facet), one line
    per column value, coloured along the column axis and labelled at the line's end."""
    curve = METRICS[metric].curve
    x_axis, y_axis, extra = map_axes(records)
    panel_axes = ([y_axis] if y_axis else []) + extra
    panels = facets(records, panel_axes)
    colour_values = axis_values(records, x_axis)
    cmap = colormaps["plasma"]
    # plasma from dark blue to orange: its yellow end is unreadable as text on white.
    colour_of = {v: cmap(0.78 * k / max(1, len(colour_values) - 1))
                 for k, v in enumerate(colour_values)}
    per_row = min(len(panels), 4)
    grid_rows = -(-len(panels) // per_row)
    panel_h = 2.9
    width = max(6.0, per_row * 3.9 + 0.4)
    fig = Figure(figsize=(width, grid_rows * panel_h + 1.0), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(grid_rows, per_row, squeeze=False, sharex=True,
                                      sharey=True)).ravel()
    limits, log = _view(records, curve)
    for ax, (label, jobs) in zip(axes, panels):
        if log:  # ticks as 0.1, 0.2, 0.5, 1 rather than 10^-1
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(*limits)
        ends = _draw_panel(ax, jobs, curve, x_axis, colour_of)
        ax.set_title(label or curve, fontsize=10)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True, steps=[1, 2, 5, 10]))
        _label_ends(ax, ends, panel_h)
    for ax in axes[len(panels):]:
        ax.axis("off")
    for ax in axes[(grid_rows - 1) * per_row:]:
        ax.set_xlabel("epoch" if "perplexity" in curve else "step")
    for ax in axes[::per_row]:
        ax.set_ylabel(curve)
    by = f", one panel per {' x '.join(panel_axes)}" if panel_axes else ""
    key = (f"one line per {x_axis}: dark = {_short(colour_values[0])} to light = "
           f"{_short(colour_values[-1])}; × = diverged, dashed = collapsed")
    if len(key) > width * 13:  # about the characters a line of 9.5 pt holds
        key = key.replace("; ", "\n")
    fig.suptitle(f"{curve} per evaluation{by}\n{key}", fontsize=9.5)
    return fig


def _draw_panel(ax, jobs: Sequence[JobRecord], curve: str, colour_axis: str,
                colour_of: Dict[str, tuple]) -> List[tuple]:
    """Draw each job's curve; return (last y, label, colour) per line for end labels."""
    ends = []
    top = ax.get_ylim()[1]
    for job in jobs:
        points = _finite_points(job.histories.get(curve, []))
        if not points:
            continue
        value = job.axis_value(colour_axis)
        colour = colour_of[value]
        text = _short(value) if colour_axis != RUN_AXIS else value
        steps, values = zip(*points)
        collapsed = job.outcome == COLLAPSED
        ax.plot(steps, values, color=colour, lw=1.4, ls="--" if collapsed else "-")
        if job.outcome == DIVERGED:
            ax.plot([steps[-1]], [values[-1]], marker="X", ms=9, color=colour, mec="black",
                    mew=0.6, zorder=3)
            text += " diverged"
        elif collapsed:
            text += " collapsed"
        if values[-1] > top:  # off the chart: say where it ended
            text += f" ↑ {_fmt(values[-1])}"
        ends.append((values[-1], text, colour))
    return ends


def _label_ends(ax, ends: List[tuple], panel_height_in: float) -> None:
    """Labels in the right margin at each line's last height, spread so none overlap."""
    if not ends:
        return
    to_axes = ax.transScale + ax.transLimits
    heights = [float(np.clip(to_axes.transform((1.0, y))[1], 0, 1)) for y, _, _ in ends]
    gap = (8.5 * 1.25 / 72) / max(0.8, panel_height_in - 0.8)
    for y, (_, text, colour) in zip(_spread(heights, gap), ends):
        ax.text(1.02, y, text, transform=ax.transAxes, fontsize=8.5, color=colour,
                va="center", ha="left", clip_on=False)
