"""A sweep's results as plain records: the metric registry, the swept axes, the grid a map is
drawn from, and best-first order. No MLflow and no matplotlib here: report.py reads records
from the store, report_plots.py draws them, and both agree on what this module computes.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from runner.outcome import DIVERGED


@dataclass(frozen=True)
class MetricSpec:
    """A metric a sweep can be judged on, which way is better, and the curve drawn for it."""
    name: str
    higher_is_better: bool
    curve: str  # the per-evaluation history that shows how the final value came about

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


# Every metric `sweeplab report --metric` accepts; the first is the classifier default.
METRICS: Dict[str, MetricSpec] = {m.name: m for m in (
    MetricSpec("val_loss", False, "val_loss"),
    MetricSpec("test_acc", True, "val_acc"),
    MetricSpec("val_acc", True, "val_acc"),
    MetricSpec("best_val_acc", True, "val_acc"),
    MetricSpec("test_loss", False, "val_loss"),
    MetricSpec("valid_perplexity", False, "valid_perplexity"),  # the language model's default
    MetricSpec("test_perplexity", False, "valid_perplexity"),
)}
CURVES = ("val_loss", "val_acc", "valid_perplexity")  # histories a report reads per job
RUN_AXIS = "run"  # pseudo-axis when no param varies (repeats of one config): one cell per run


@dataclass
class JobRecord:
    """One child run of a sweep, as the report needs it."""
    run_id: str
    name: str
    params: Dict[str, str]  # the flattened config, as logged
    outcome: str  # the `outcome` tag: ok, diverged, collapsed, error, killed, running
    metrics: Dict[str, float]  # each metric's last value
    histories: Dict[str, List[Tuple[int, float]]] = field(default_factory=dict)
    status: str = "FINISHED"

    def value(self, metric: str) -> float:
        """The metric's final value, NaN when the job did not log it."""
        return float(self.metrics.get(metric, math.nan))

    @property
    def diverged_at(self) -> Optional[int]:
        step = self.metrics.get("diverged_at_step")
        return None if step is None else int(step)

    def axis_value(self, axis: str) -> str:
        return self.name if axis == RUN_AXIS else self.params.get(axis, "-")


def default_metric(records: Sequence[JobRecord]) -> Optional[str]:
    """val_loss for a classifier sweep, valid_perplexity for a language-model sweep."""
    for name in METRICS:
        if any(name in r.metrics for r in records):
            return name
    return None


# ---------------------------------------------------------------- swept axes

def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except (TypeError, ValueError):
        return False


def is_numeric(records: Sequence[JobRecord], axis: str) -> bool:
    return axis != RUN_AXIS and all(_is_number(r.axis_value(axis)) for r in records)


def axis_values(records: Sequence[JobRecord], axis: str) -> List[str]:
    """Distinct values of one axis: numbers ascending, names in the order the jobs ran."""
    values = list(dict.fromkeys(r.axis_value(axis) for r in records))
    return sorted(values, key=float) if is_numeric(records, axis) else values


def _determines(records, a: str, b: str) -> bool:
    """True when each value of param `a` comes with a single value of param `b`."""
    seen = {}
    return all(seen.setdefault(r.params.get(a), r.params.get(b)) == r.params.get(b)
               for r in records)


def _preference(key: str) -> Tuple[int, str]:
    """Which of two params that move together names the axis: a group's option, its size."""
    leaf = key.rsplit(".", 1)[-1]
    return ({"name": 0, "size": 1}.get(leaf, 2), key)


def swept_axes(records: Sequence[JobRecord]) -> List[str]:
    """The params that vary between jobs, minus those that just follow another of their group.

    `clipping=none,norm` also changes `clipping.clip_norm` (each option has its own default),
    and `model=lstm_small,lstm_medium` changes `model.hidden`, `model.keep_prob`...: such a
    param is dropped when another param of the same group determines it. Params of different
    groups are never merged, so a partly finished lr x clipping grid keeps both axes.
    Order: the numeric axis with the most values first (the map's columns, e.g. lr), then
    names before numbers (the map's rows, e.g. clipping), each with the most values first;
    any further axes facet the map.
    """
    keys = list(dict.fromkeys(k for r in records for k in r.params))
    varying = [k for k in keys if len({r.params.get(k) for r in records}) > 1]

    def follows(key: str) -> bool:
        group = key.split(".", 1)[0]
        for other in varying:
            if other == key or other.split(".", 1)[0] != group:
                continue
            if _determines(records, other, key) and (
                    not _determines(records, key, other) or _preference(other) < _preference(key)):
                return True
        return False

    axes = [k for k in varying if not follows(k)]
    if not axes:
        return []
    first = min(axes, key=lambda a: (not is_numeric(records, a), -len(axis_values(records, a)),
                                     a))
    rest = sorted((a for a in axes if a != first),
                  key=lambda a: (is_numeric(records, a), -len(axis_values(records, a)), a))
    return [first, *rest]


# ---------------------------------------------------------------- the grid a map shows

@dataclass
class Grid:
    """The metric over two axes: values[i][j] belongs to y_values[i] and x_values[j]."""
    metric: str
    x_axis: str
    x_values: List[str]
    y_axis: Optional[str]  # None: one swept axis, a single row
    y_values: List[str]
    values: np.ndarray  # [rows, columns], NaN where no job logged the metric
    jobs: List[List[Optional[JobRecord]]]  # the job behind each cell, None where none ran

    def outcome(self, i: int, j: int) -> Optional[str]:
        job = self.jobs[i][j]
        return None if job is None else job.outcome


def map_axes(records: Sequence[JobRecord]) -> Tuple[str, Optional[str], List[str]]:
    """(x axis, y axis or None, facet axes) for a sweep's map."""
    axes = swept_axes(records) or [RUN_AXIS]
    return axes[0], (axes[1] if len(axes) > 1 else None), axes[2:]


def grid(records: Sequence[JobRecord], metric: str, x_axis: Optional[str] = None,
         y_axis: Optional[str] = None) -> Grid:
    """The matrix the map is drawn from; axes default to the sweep's first two swept axes.

    When several jobs share a cell (a re-run, or facets flattened), the last one counts.
    """
    if x_axis is None:
        x_axis, y_axis, _ = map_axes(records)
    x_values = axis_values(records, x_axis)
    y_values = axis_values(records, y_axis) if y_axis else [""]
    values = np.full((len(y_values), len(x_values)), np.nan)
    jobs: List[List[Optional[JobRecord]]] = [[None] * len(x_values) for _ in y_values]
    for record in records:
        i = y_values.index(record.axis_value(y_axis)) if y_axis else 0
        j = x_values.index(record.axis_value(x_axis))
        values[i, j] = record.value(metric)
        jobs[i][j] = record
    return Grid(metric, x_axis, x_values, y_axis, y_values, values, jobs)


def facets(records: Sequence[JobRecord],
           axes: Sequence[str]) -> List[Tuple[str, List[JobRecord]]]:
    """The jobs split by every combination of the extra axes: [("a=1, b=x", jobs), ...]."""
    if not axes:
        return [("", list(records))]
    groups: Dict[Tuple[str, ...], List[JobRecord]] = {}
    orders = [axis_values(records, a) for a in axes]
    for record in records:
        groups.setdefault(tuple(record.axis_value(a) for a in axes), []).append(record)
    ordered = sorted(groups, key=lambda key: [o.index(v) for o, v in zip(orders, key)])
    return [(", ".join(f"{a}={v}" for a, v in zip(axes, key)), groups[key]) for key in ordered]


# ---------------------------------------------------------------- best first

def best_step(record: JobRecord, curve: str) -> Optional[int]:
    """The step (epoch for perplexity) of the curve's best finite value."""
    points = [(s, v) for s, v in record.histories.get(curve, []) if math.isfinite(v)]
    if not points:
        return None
    pick = max if METRICS[curve].higher_is_better else min
    return pick(points, key=lambda p: p[1])[0]


def ranked(records: Sequence[JobRecord], metric: str) -> List[JobRecord]:
    """Best first by the metric's direction; then diverged jobs (longest-lived first); then
    jobs without the metric. A diverged job's last value predates its blow-up, so it never
    ranks among the finite runs however good that value was.
    """
    spec = METRICS[metric]

    def key(record: JobRecord):
        value = record.value(metric)
        if record.outcome == DIVERGED:
            return (1, -(record.diverged_at or 0))
        if not math.isfinite(value):
            return (2, 0)
        return (0, -value if spec.higher_is_better else value)

    return sorted(records, key=key)  # stable: ties keep the order the jobs ran
