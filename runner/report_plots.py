"""The sweep report's two figures, from job records; no MLflow here (report.py logs them).

`sweep_map`: the metric per config over the swept axes (a heatmap for two, a line for one,
one map per value of any further axis): each cell annotated with its mean ± half of the 95 %
interval over seeds and its failures ("2/5 div"), the best config outlined, the configs that
cannot be told apart from it marked with a dot, diverged/collapsed cells hatched.
`sweep_curves`: one panel per value of the map's rows, one line per config (its mean over
seeds, a band of ±1 sd across seeds), coloured along a sequential colormap and labelled at
the line's end (no legend over data).
Figures are plain `Figure` objects at dpi 100, cheap to render and never left open.
"""
import math
import textwrap
from typing import Dict, List, Optional, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from runner import stats, tags
from runner.outcome import COLLAPSED, DIVERGED, OK
from runner.results import (METRICS, RUN_AXIS, Cell, Grid, JobRecord, axis_values, configs,
                            config_axes, facets, grid, is_numeric, map_axes, map_cells,
                            replicates)

DPI = 100
# Outcomes without a value worth colouring (the metric predates a blow-up, or never came).
NO_VALUE_FILL = {DIVERGED: "#d9d9d9", tags.OUTCOME_ERROR: "#f2f2f2",
                 tags.OUTCOME_KILLED: "#f2f2f2", tags.OUTCOME_RUNNING: "#f2f2f2"}
DIVERGED_HATCH, COLLAPSED_HATCH = "xx", "////"
COLLAPSED_EDGE = "#b2182b"  # dark red hatch over the cell's value colour
TIED_MARK = dict(marker="o", ms=6, mfc="black", mec="white", mew=1.0, ls="none")
SHORT = {DIVERGED: "div", COLLAPSED: "coll"}  # outcome counts in a cell: "2/5 div"


def _wrap(text: str, width_in: float, fontsize: float = 9.5) -> str:
    """Lines that fit `width_in` inches at `fontsize` (about 0.55 em per character), each
    paragraph (\n) wrapped on its own."""
    chars = max(20, int(width_in * 72 / (fontsize * 0.55)))
    return "\n".join(textwrap.fill(part, chars) for part in text.split("\n"))


def tied_label() -> str:
    """The legend's words for the dot, exactly what runner.stats.judge decides."""
    return (f"cannot be told apart from the best:\npaired t-test (same seeds) / Welch,\n"
            f"Holm-corrected, α = {stats.ALPHA:g}")


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


def _colour_values(cells: Sequence[Cell]) -> np.ndarray:
    """Values that set the colour scale: the means of cells with a counted value."""
    return np.array([c.summary.mean for c in cells if c.summary.n])


def _failures(cell: Cell) -> List[str]:
    """Outcome counts worth a line in a replicated cell: "2/5 div", "1/5 killed"."""
    counts: Dict[str, int] = {}
    for job in cell.jobs:
        if job.outcome != OK:
            counts[job.outcome] = counts.get(job.outcome, 0) + 1
    return [f"{k}/{cell.runs} {SHORT.get(o, o)}" for o, k in counts.items()]


# ---------------------------------------------------------------- the map

def _cell_text(cell: Optional[Cell]) -> str:
    """One run: its value (or how it failed). Replicates: mean, ± half of the 95 % interval
    (n = 1: "n=1" instead), then the failures."""
    if cell is None:
        return "no run"
    s = cell.summary
    if cell.runs == 1:
        job = cell.jobs[0]
        if job.outcome == DIVERGED:
            return f"diverged\n@ {job.diverged_at}" if job.diverged_at is not None else "diverged"
        text = _fmt(s.mean) if s.n else job.outcome
        return f"{text}\ncollapsed" if job.outcome == COLLAPSED else text
    if not s.n:
        return "\n".join(["no value", *_failures(cell)])
    spread = f"±{_fmt(s.half_width)}" if s.n >= stats.MIN_N else f"n={s.n}"
    return "\n".join([_fmt(s.mean), spread, *_failures(cell)])


def _heatmap(ax, cells: Grid, norm, cmap, fontsize: float) -> None:
    rows, cols = cells.values.shape
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)  # first row on top
    for i in range(rows):
        for j in range(cols):
            cell, value = cells.cells[i][j], cells.values[i, j]
            outcome = cells.outcome(i, j)  # None when its runs differ
            xy = (j - 0.5, i - 0.5)
            if cell is None:
                fill, hatch, edge = "white", None, "#bbbbbb"
            elif not math.isfinite(value):
                fill, hatch, edge = NO_VALUE_FILL.get(outcome, "#f2f2f2"), (
                    DIVERGED_HATCH if outcome == DIVERGED else None), "#7f7f7f"
            else:
                fill, hatch, edge = cmap(norm(value)), (
                    COLLAPSED_HATCH if outcome == COLLAPSED else None), COLLAPSED_EDGE
            ax.add_patch(Rectangle(xy, 1, 1, facecolor=fill, edgecolor="white", lw=1.5))
            if hatch:  # hatch drawn in its own colour, over the fill
                ax.add_patch(Rectangle(xy, 1, 1, fill=False, hatch=hatch, edgecolor=edge,
                                       lw=0))
            ink = _ink(fill) if math.isfinite(value) and hatch is None else "black"
            verdict = cell.verdict.verdict if cell else None
            ax.text(j, i, _cell_text(cell), ha="center", va="center", fontsize=fontsize,
                    color=ink, fontweight="bold" if verdict == stats.BEST else "normal",
                    linespacing=1.1,
                    bbox=(dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85)
                          if hatch else None))
            if verdict == stats.BEST:
                ax.add_patch(Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False,
                                       edgecolor="black", lw=2.5))
            elif verdict == stats.TIED:  # a dot in the cell's top-right corner
                ax.plot([j + 0.36], [i - 0.3], **TIED_MARK)
    ax.set_xticks(range(cols), [_short(v) for v in cells.x_values])
    ax.set_yticks(range(rows), [_short(v) for v in cells.y_values] if cells.y_axis else [""])
    ax.set_xlabel(cells.x_axis)
    if cells.y_axis:
        ax.set_ylabel(cells.y_axis)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)


def _line_map(ax, cells: Sequence[Cell], metric: str, x_axis: str,
              pooled: Optional[Cell] = None) -> None:
    """One swept axis: each config's mean against it with its 95 % interval as an error bar,
    the best ringed, its ties dotted, failures marked at the floor. `pooled`: for a sweep of
    one config drawn run by run, that config's mean and interval as a line and a band."""
    spec = METRICS[metric]
    values = axis_values(cells, x_axis)
    numeric = is_numeric(cells, x_axis)
    position = {v: (float(v) if numeric else k) for k, v in enumerate(values)}
    row = grid(cells, metric, x_axis, None)
    xs = np.array([position[v] for v in values])
    ys = row.values[0]
    shown = [(x, y, row.cells[0][j]) for j, (x, y) in enumerate(zip(xs, ys))
             if math.isfinite(y)]
    if shown:
        ax.plot([p[0] for p in shown], [p[1] for p in shown], color="#4c72b0", lw=1.5,
                marker="o", zorder=2)
    for x, y, cell in shown:
        s = cell.summary
        if s.n >= stats.MIN_N:
            ax.errorbar([x], [y], yerr=[[y - s.ci_low], [s.ci_high - y]], color="#4c72b0",
                        capsize=4, lw=1.2, zorder=2)
        collapsed = all(job.outcome == COLLAPSED for job in cell.jobs)
        if collapsed:
            ax.plot([x], [y], marker="o", ms=11, mfc="none", mec=COLLAPSED_EDGE, mew=2)
        if cell.verdict.verdict == stats.BEST:
            ax.plot([x], [y], marker="o", ms=15, mfc="none", mec="black", mew=2.5, zorder=3)
        elif cell.verdict.verdict == stats.TIED:
            ax.plot([x], [y], zorder=4, **TIED_MARK)
        text = _cell_text(cell).replace("\n±", " ±")
        ax.annotate(text, (x, s.ci_high if s.n >= stats.MIN_N else y),
                    textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8.5,
                    color=COLLAPSED_EDGE if collapsed else "black")
    for j, x in enumerate(xs):
        cell = row.cells[0][j]
        if cell is not None and not math.isfinite(ys[j]):
            ax.plot([x], [0.04], marker="X", ms=10, color="#7f7f7f",
                    transform=ax.get_xaxis_transform(), clip_on=False)
            ax.annotate(_cell_text(cell).replace("\n", " "), (x, 0.04),
                        xycoords=ax.get_xaxis_transform(), textcoords="offset points",
                        xytext=(0, 9), ha="center", fontsize=8, color="#555555")
    if pooled is not None and pooled.summary.n >= stats.MIN_N:
        s = pooled.summary
        ax.axhline(s.mean, color="black", lw=1, ls="--", zorder=1)
        ax.axhspan(s.ci_low, s.ci_high, color="black", alpha=0.08, lw=0, zorder=0)
        ax.annotate(f"mean {_fmt(s.mean)} ± {_fmt(s.half_width)} (95 %, n={s.n})",
                    (0.01, s.mean), xycoords=("axes fraction", "data"),
                    textcoords="offset points", xytext=(0, 4), fontsize=8.5)
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    ax.set_xticks(xs, [_short(v) for v in values])
    ax.minorticks_off()
    finite_y = np.array([p[1] for p in shown])
    if len(finite_y) and finite_y.min() > 0 and finite_y.max() / finite_y.min() > 10:
        ax.set_yscale("log")
    ax.margins(x=0.15, y=0.3)
    ax.set(xlabel=x_axis, ylabel=metric)
    ax.grid(alpha=0.3)
    ax.set_title(f"{metric} ({spec.direction})", fontsize=10)


def _map_title(metric: str, cells: Sequence[Cell], replicated: bool) -> str:
    spec = METRICS[metric]
    if replicated:
        return (f"{metric} per config ({spec.direction}): mean over seeds ± half of its 95 % "
                f"t-interval; outlined = best config")
    return (f"final {metric} per job ({spec.direction}); outlined = best. One seed per config: "
            f"no spread, no test (add seed=0,1,2,3,4)")


def sweep_map(records: Sequence[JobRecord], metric: str) -> Figure:
    """The metric over the swept axes, each cell (or point) annotated with its mean and
    interval over seeds (or its one value), the best outlined and its ties marked."""
    spec = METRICS[metric]
    cells = map_cells(records, metric)
    replicated = replicates(cells) > 1
    x_axis, y_axis, extra = map_axes(records)
    if y_axis is None:
        width = max(6.5, 1.1 * len(axis_values(cells, x_axis)) + 2)
        fig = Figure(figsize=(width, 4.8), dpi=DPI, layout="constrained")
        pooled = None
        if not config_axes(records):  # one config drawn run by run: its statistics as a band
            pooled = configs(records, metric)[0] if records else None
            replicated = bool(pooled) and pooled.summary.n > 1
        _line_map(fig.subplots(), cells, metric, x_axis, pooled)
        fig.suptitle(_wrap(_map_title(metric, cells, replicated).replace("outlined", "ringed")
                           if config_axes(records) else f"{metric} per run ({spec.direction})",
                           width), fontsize=9.5)
        fig.legend(handles=_legend_handles(cells, ring=True),
                   loc="outside lower center", ncols=2, fontsize=8.5, frameon=False)
        return fig
    groups = facets(cells, extra)
    n_cols, n_rows = len(axis_values(cells, x_axis)), len(axis_values(cells, y_axis))
    per_row = len(groups) if len(groups) <= 3 else min(3, math.ceil(math.sqrt(len(groups))))
    grid_rows = -(-len(groups) // per_row)
    lines = max(_cell_text(c).count("\n") + 1 for c in cells)
    cell_w, cell_h = 0.95, max(0.55, 0.17 * lines + 0.1)
    width = max(6.5 if replicated else 5.0, per_row * (n_cols * cell_w + 1.6) + 1.2)
    fig = Figure(figsize=(width, grid_rows * (n_rows * cell_h + 1.1) + 1.8),
                 dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(grid_rows, per_row, squeeze=False)).ravel()
    cmap = colormaps["viridis" if spec.higher_is_better else "viridis_r"]
    norm = _norm(_colour_values(cells))
    for ax, (label, group) in zip(axes, groups):
        _heatmap(ax, grid(group, metric, x_axis, y_axis), norm, cmap,
                 8.5 if lines <= 2 else 8.0)
        if label:
            ax.set_title(label, fontsize=10)
    for ax in axes[len(groups):]:
        ax.axis("off")
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[:len(groups)]),
                       shrink=0.9, aspect=25, pad=0.02)
    bar.set_label(f"{'mean ' if replicated else ''}{metric} ({spec.direction})")
    if isinstance(norm, LogNorm):  # plain numbers, not 2x10^-1: five ticks across the range
        bar.set_ticks(np.geomspace(norm.vmin, norm.vmax, 5), labels=[
            _fmt(v) for v in np.geomspace(norm.vmin, norm.vmax, 5)])
        bar.ax.minorticks_off()
    fig.suptitle(_wrap(_map_title(metric, cells, replicated), width), fontsize=9.5)
    fig.legend(handles=_legend_handles(cells), loc="outside lower center",
               ncols=2, fontsize=8.5, frameon=False)
    return fig


def _legend_handles(cells: Sequence[Cell], ring: bool = False) -> List:
    """What each mark means: best, tied (with the test named), untestable, the failures
    (hatches and fills belong to cells whose runs all ended one way)."""
    outcomes = {c.jobs[0].outcome for c in cells if len({j.outcome for j in c.jobs}) == 1}
    best = "best config: best mean\namong configs with n ≥ 2" if replicates(cells) > 1 else \
        "best"
    handles: List = [Line2D([], [], marker="o", ms=11, mfc="none", mec="black", mew=2.5,
                            ls="none", label=best) if ring else
                     Patch(facecolor="white", edgecolor="black", lw=2.5, label=best)]
    verdicts = {c.verdict.verdict for c in cells}
    if replicates(cells) > 1:
        none = "" if stats.TIED in verdicts else "\n(none here)"
        handles.append(Line2D([], [], label=tied_label() + none, **TIED_MARK))
    if replicates(cells) > 1 and any(0 < c.summary.n < stats.MIN_N for c in cells):
        handles.append(Patch(facecolor="white", edgecolor="none",
                             label="n=1: one finite run: untestable\n(not tied, not different)"))
    elif stats.UNTESTABLE in verdicts and replicates(cells) > 1:
        handles.append(Patch(facecolor="white", edgecolor="none",
                             label="no value: untestable"))
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
    if any(c.runs > 1 and _failures(c) for c in cells):
        handles.append(Patch(facecolor="white", edgecolor="none",
                             label="k/n div, coll: k of the config's n runs\ndiverged, "
                                   "collapsed; statistics over\nits finite, undiverged runs"))
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
    """The metric's curve per config: one panel per row value of the map (and facet), one
    line per column value (its mean over seeds, a band of ±1 sd across them), coloured along
    the column axis and labelled at the line's end."""
    curve = METRICS[metric].curve
    x_axis, y_axis, extra = map_axes(records)
    cells = map_cells(records, metric)
    replicated = any(c.runs > 1 for c in cells)
    panel_axes = ([y_axis] if y_axis else []) + extra
    panels = facets(cells, panel_axes)
    colour_values = axis_values(cells, x_axis)
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
    for ax, (label, group) in zip(axes, panels):
        if log:  # ticks as 0.1, 0.2, 0.5, 1 rather than 10^-1
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(*limits)
        ends = _draw_panel(ax, group, curve, x_axis, colour_of)
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
    if replicated:
        key += ("\nline = mean over the seeds that did not diverge, band = ±1 sd across them; "
                "a diverged seed drawn thin on its own")
    fig.suptitle(_wrap(f"{curve} per evaluation{by}\n{key}", width), fontsize=9.5)
    return fig


def mean_curve(jobs: Sequence[JobRecord], curve: str):
    """(steps, mean, sd) of the jobs' curves at each step any of them evaluated, over the
    jobs with a finite value there; sd is NaN where fewer than two."""
    at: Dict[int, List[float]] = {}
    for job in jobs:
        for step, value in _finite_points(job.histories.get(curve, [])):
            at.setdefault(step, []).append(value)
    steps = sorted(at)
    mean = np.array([np.mean(at[s]) for s in steps])
    sd = np.array([np.std(at[s], ddof=1) if len(at[s]) > 1 else np.nan for s in steps])
    return np.array(steps), mean, sd


def _draw_panel(ax, cells: Sequence[Cell], curve: str, colour_axis: str,
                colour_of: Dict[str, tuple]) -> List[tuple]:
    """Draw each cell's curve (a config's mean over its undiverged seeds with a ±1 sd band,
    its diverged seeds thin on their own; one run as it is); return (last y, label, colour)
    per line for the end labels."""
    ends = []
    top = ax.get_ylim()[1]
    for cell in cells:
        value = cell.axis_value(colour_axis)
        colour = colour_of[value]
        text = _short(value) if colour_axis != RUN_AXIS else value
        alive = [job for job in cell.jobs if job.outcome != DIVERGED]
        diverged = [job for job in cell.jobs if job.outcome == DIVERGED]
        last = None
        for job in diverged:
            points = _finite_points(job.histories.get(curve, []))
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, color=colour, lw=1.4 if cell.runs == 1 else 0.7,
                        alpha=1.0 if cell.runs == 1 else 0.7)
                ax.plot([steps[-1]], [values[-1]], marker="X", ms=9 if cell.runs == 1 else 6,
                        color=colour, mec="black", mew=0.6, zorder=3)
                last = values[-1] if last is None else last
        steps, mean, sd = mean_curve(alive, curve)
        collapsed = bool(alive) and all(job.outcome == COLLAPSED for job in alive)
        if len(steps):
            ax.plot(steps, mean, color=colour, lw=1.4, ls="--" if collapsed else "-")
            if np.isfinite(sd).any():
                ax.fill_between(steps, mean - sd, mean + sd, color=colour, alpha=0.18, lw=0)
            last = mean[-1]
        if last is None:
            continue
        if cell.runs == 1:
            text += {DIVERGED: " diverged", COLLAPSED: " collapsed"}.get(cell.jobs[0].outcome,
                                                                          "")
        else:
            text += "".join(f" {f}" for f in _failures(cell))
        if last > top:  # off the chart: say where it ended
            text += f" ↑ {_fmt(last)}"
        ends.append((last, text, colour))
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
