"""A sweep's results as plain records: the metric registry, the swept axes, the configs
(replicate groups: runs that differ only in `seed`) with their statistics, the grid a map is
drawn from, and best-first order. No MLflow and no matplotlib here: report.py reads records
from the store, report_plots.py draws them, and both agree on what this module computes.
"""
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from runner import stats
from runner.outcome import COLLAPSED, DIVERGED, OK
from runner.tags import REPLICATE
from runner.tasks import spec_of_run


@dataclass(frozen=True)
class MetricSpec:
    """A metric a sweep can be judged on, which way is better, the curve drawn for it, and
    what its final value measures (the report says it beside the ranking)."""
    name: str
    higher_is_better: bool
    curve: str  # the per-evaluation history that shows how the final value came about
    about: str

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


# `about` may name {eval_size}: the sweep's train.eval_size (validation examples per evaluation).
_WINDOW = "one evaluation is a window of {eval_size} validation examples"
# Every metric `sweeplab report --metric` accepts. A sweep's default is its task's ranking
# metric (runner.tasks.TaskSpec.ranking) when its runs logged it, else the first one logged.
METRICS: Dict[str, MetricSpec] = {m.name: m for m in (
    MetricSpec("val_loss_tail", False, "val_loss",
               "the mean of the last 10 evaluations' val_loss (all, if fewer), ten windows of "
               "{eval_size} validation examples: one window alone is too noisy to rank by"),
    MetricSpec("val_loss", False, "val_loss", "the last evaluation's val_loss; " + _WINDOW),
    MetricSpec("test_acc", True, "val_acc", "accuracy on the test split, once at the end"),
    MetricSpec("val_acc", True, "val_acc", "the last evaluation's accuracy; " + _WINDOW),
    MetricSpec("best_val_acc", True, "val_acc",
               "the best evaluation's accuracy (picked after the fact: optimistic)"),
    MetricSpec("test_loss", False, "val_loss", "loss on the test split, once at the end"),
    MetricSpec("valid_loss", False, "valid_perplexity",  # the language model's ranking
               "mean loss per word (log perplexity) on the whole validation text after the "
               "last epoch: seeds' perplexities are skewed, their logs are not"),
    MetricSpec("valid_perplexity", False, "valid_perplexity",
               "perplexity on the whole validation text after the last epoch"),
    MetricSpec("test_perplexity", False, "valid_perplexity",
               "perplexity on the whole test text, once at the end"),
)}
CURVES = ("val_loss", "val_acc", "valid_perplexity")  # histories a report reads per job
RUN_AXIS = "run"  # pseudo-axis when no param varies (repeats of one config): one cell per run
SEED = "seed"  # the param that makes replicates: a config is every swept key but this one


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
    tags: Dict[str, str] = field(default_factory=dict)  # the run's MLflow tags

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
    """The task's ranking metric (val_loss_tail for images, valid_loss for the language
    model) when a run logged it; else the first of METRICS a run logged (runs that predate
    val_loss_tail rank by val_loss)."""
    for name in dict.fromkeys(spec_of_run(r.tags).ranking for r in records):
        if name in METRICS and any(name in r.metrics for r in records):
            return name
    for name in METRICS:
        if any(name in r.metrics for r in records):
            return name
    return None


# ---------------------------------------------------------------- swept axes

def is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except (TypeError, ValueError):
        return False


def is_numeric(records: Sequence[JobRecord], axis: str) -> bool:
    return axis != RUN_AXIS and all(is_number(r.axis_value(axis)) for r in records)


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
    if SEED in axes:  # replicates: never the map's columns while a config axis exists
        rest = [a for a in axes if a != SEED]
        return [*_ordered(records, rest), SEED] if rest else [SEED]
    return _ordered(records, axes)


def _ordered(records, axes: List[str]) -> List[str]:
    first = min(axes, key=lambda a: (not is_numeric(records, a), -len(axis_values(records, a)),
                                     a))
    rest = sorted((a for a in axes if a != first),
                  key=lambda a: (is_numeric(records, a), -len(axis_values(records, a)), a))
    return [first, *rest]


def config_axes(records: Sequence[JobRecord]) -> List[str]:
    """The swept keys that make a config: every swept axis but `seed`."""
    return [a for a in swept_axes(records) if a != SEED]


# ---------------------------------------------------------------- configs (replicate groups)

def _params_key(record: JobRecord) -> str:
    """A run's replicate group from its params: the config minus `seed` (and `mlflow.*`,
    where it was tracked), as runner.tracking.replicate_hash names it from the config;
    `derived.*` follow from the config and may be missing on a run that stopped early."""
    kept = {k: v for k, v in record.params.items()
            if k != SEED and not k.startswith(("mlflow.", "derived."))}
    return "params:" + hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def replicate_groups(records: Sequence[JobRecord]) -> List[List[JobRecord]]:
    """The runs grouped by config, in the order each config first ran: by the
    `sweeplab.replicate` tag when every run carries it, else (runs that predate the tag,
    alone or mixed with newer ones) by their params minus `seed` for all."""
    tagged = all(REPLICATE in r.tags for r in records)
    groups: Dict[str, List[JobRecord]] = {}
    for record in records:
        groups.setdefault(record.tags[REPLICATE] if tagged else _params_key(record),
                          []).append(record)
    return list(groups.values())


def counted(record: JobRecord, metric: str) -> bool:
    """Whether a run's value enters its config's statistics: finite, and not from a run that
    diverged (its last value predates the blow-up; it counts as an outcome instead)."""
    return record.outcome != DIVERGED and math.isfinite(record.value(metric))


@dataclass
class Cell:
    """The runs behind one place of the map or one row of the summary: a config's replicates
    (or, for a sweep of one config, a single run), their statistics and their verdict."""
    jobs: List[JobRecord]
    metric: str
    summary: stats.Summary
    verdict: stats.Verdict = stats.Verdict(stats.UNTESTABLE)

    def axis_value(self, axis: str) -> str:
        return self.jobs[0].axis_value(axis)

    def count(self, outcome: str) -> int:
        return sum(job.outcome == outcome for job in self.jobs)

    @property
    def runs(self) -> int:
        return len(self.jobs)

    def sample(self) -> stats.Sample:
        kept = [job for job in self.jobs if counted(job, self.metric)]
        return stats.Sample([job.value(self.metric) for job in kept],
                            [job.params.get(SEED, "") for job in kept])


def cell_of(jobs: Sequence[JobRecord], metric: str) -> Cell:
    values = [job.value(metric) for job in jobs if counted(job, metric)]
    return Cell(list(jobs), metric, stats.summarise(values))


def configs(records: Sequence[JobRecord], metric: str) -> List[Cell]:
    """One cell per config with n, mean, sd and the 95 % interval of the metric over its
    counted runs, and its verdict against the best config (runner.stats.judge)."""
    cells = [cell_of(group, metric) for group in replicate_groups(records)]
    verdicts = stats.judge([c.sample() for c in cells],
                           higher_is_better=METRICS[metric].higher_is_better)
    for cell, verdict in zip(cells, verdicts):
        cell.verdict = verdict
    return cells


def best_first(cells: Sequence[Cell]) -> List[Cell]:
    """The best config, then the others by mean in the metric's direction, then those without
    a value; ties keep the order the configs ran."""
    if not cells:
        return []
    sign = -1.0 if METRICS[cells[0].metric].higher_is_better else 1.0
    return sorted(cells, key=lambda c: (c.verdict.verdict != stats.BEST, c.summary.n == 0,
                                        sign * c.summary.mean if c.summary.n else 0.0))


def replicates(cells: Sequence[Cell]) -> int:
    """The most runs with a value any config has: 1 means every answer is one seed's."""
    return max((c.summary.n for c in cells), default=0)


# ---------------------------------------------------------------- the summary table

SUMMARY_STATS = ("metric", "n", "mean", "sd", "ci95_low", "ci95_high", OK, DIVERGED,
                 COLLAPSED, "best", "tied_with_best", "test", "p", "p_holm")


def summary_rows(cells: Sequence[Cell], axes: Sequence[str]) -> List[Dict[str, object]]:
    """`report/summary.csv`, one dict per config, best first: the config's swept keys, then
    SUMMARY_STATS. tied_with_best: true / false / untestable (n < 2 here or in the best), empty
    on the best's own row; test, p and p_holm say how that was decided."""
    rows = []
    for cell in best_first(cells):
        s, v = cell.summary, cell.verdict
        tied = {stats.TIED: "true", stats.DIFFERENT: "false", stats.UNTESTABLE: "untestable",
                stats.BEST: ""}[v.verdict]
        rows.append({**{a: cell.axis_value(a) for a in axes}, "metric": cell.metric, "n": s.n,
                     "mean": s.mean, "sd": s.sd, "ci95_low": s.ci_low, "ci95_high": s.ci_high,
                     OK: cell.count(OK), DIVERGED: cell.count(DIVERGED),
                     COLLAPSED: cell.count(COLLAPSED),
                     "best": "true" if v.verdict == stats.BEST else "false",
                     "tied_with_best": tied, "test": v.test or "", "p": v.p,
                     "p_holm": v.p_holm})
    return rows


# ---------------------------------------------------------------- the grid a map shows

@dataclass
class Grid:
    """The metric over two axes: values[i][j] (a cell's mean) belongs to y_values[i] and
    x_values[j]."""
    metric: str
    x_axis: str
    x_values: List[str]
    y_axis: Optional[str]  # None: one swept axis, a single row
    y_values: List[str]
    values: np.ndarray  # [rows, columns], NaN where no run has a counted value
    cells: List[List[Optional[Cell]]]  # the runs behind each place, None where none ran

    def outcome(self, i: int, j: int) -> Optional[str]:
        """The cell's outcome when all its runs share one, else None (also for no run)."""
        cell = self.cells[i][j]
        outcomes = {job.outcome for job in cell.jobs} if cell else set()
        return outcomes.pop() if len(outcomes) == 1 else None


def map_axes(records: Sequence[JobRecord]) -> Tuple[str, Optional[str], List[str]]:
    """(x axis, y axis or None, facet axes) for a sweep's map: the config axes; for a sweep
    of one config, its seeds (or its runs) side by side."""
    axes = config_axes(records) or [SEED if SEED in swept_axes(records) else RUN_AXIS]
    return axes[0], (axes[1] if len(axes) > 1 else None), axes[2:]


def map_cells(records: Sequence[JobRecord], metric: str) -> List[Cell]:
    """What the map shows: the configs with their statistics, or each run of a one-config
    sweep on its own (its statistics are the summary's single row)."""
    if config_axes(records):
        return configs(records, metric)
    return [cell_of([record], metric) for record in records]


def grid(cells: Sequence[Cell], metric: str, x_axis: str, y_axis: Optional[str] = None) -> Grid:
    """The matrix the map is drawn from. When several cells share a place (a config differing
    only in a key that is not an axis), the last one counts."""
    x_values = axis_values(cells, x_axis)
    y_values = axis_values(cells, y_axis) if y_axis else [""]
    values = np.full((len(y_values), len(x_values)), np.nan)
    placed: List[List[Optional[Cell]]] = [[None] * len(x_values) for _ in y_values]
    for cell in cells:
        i = y_values.index(cell.axis_value(y_axis)) if y_axis else 0
        j = x_values.index(cell.axis_value(x_axis))
        values[i, j] = cell.summary.mean
        placed[i][j] = cell
    return Grid(metric, x_axis, x_values, y_axis, y_values, values, placed)


def facets(records: Sequence, axes: Sequence[str]) -> List[Tuple[str, List]]:
    """The jobs (or cells) split by every combination of the extra axes:
    [("a=1, b=x", items), ...]."""
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
