"""Replicate statistics for a sweep's report: per config n, mean, sd and a 95 % t-interval, the
best config, and which configs cannot be told apart from it. Pure functions over numbers; SciPy
computes every statistic (t-intervals, paired and Welch t-tests); only Holm's step-down, a few
lines over SciPy's p-values, is written here.

A config's values are its runs' final ranking metric, one per seed; the caller passes finite
values only (a diverged run's last value predates its blow-up: it is counted as an outcome,
not as a value). Every test is two-sided: "cannot be told apart" means the Holm-adjusted
p-value of "same mean" stays above alpha.
"""
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
from scipy import stats as sp

ALPHA = 0.05  # family-wise error rate over one sweep's comparisons with its best config
CONFIDENCE = 0.95  # the per-config t-interval
MIN_N = 2  # fewer finite values than this: no sd, no interval, no test

# How a config relates to the best one (the `verdict` of each config).
BEST, TIED, DIFFERENT, UNTESTABLE = "best", "tied", "different", "untestable"
PAIRED, WELCH = "paired t-test", "Welch t-test"  # which test compared a config with the best


@dataclass(frozen=True)
class Summary:
    """One config's finite values: n, mean, sd (n - 1) and the t-interval of the mean.
    NaN where undefined: everything for n = 0, sd and interval for n = 1."""
    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


@contextmanager
def _quiet():
    """SciPy warns on (nearly) identical values; the callers below handle those cases."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"statistics take finite values only, got {list(values)}")
    return array


def summarise(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """n, mean, sd and the `confidence` t-interval of the mean (SciPy's one-sample t)."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(np.mean(x))
    if n < MIN_N:
        return Summary(n, mean, math.nan, math.nan, math.nan)
    sd = float(np.std(x, ddof=1))
    if sd == 0:  # identical values: SciPy's interval is nan * 0; the interval is the point
        return Summary(n, mean, 0.0, mean, mean)
    with _quiet():
        interval = sp.ttest_1samp(x, popmean=0.0).confidence_interval(confidence)
    return Summary(n, mean, sd, float(interval.low), float(interval.high))


@dataclass(frozen=True)
class Sample:
    """One config's finite values and the seed of each (None: seeds unknown)."""
    values: Sequence[float]
    seeds: Optional[Sequence[str]] = None


def paired_order(a: Sample, b: Sample) -> Optional[List[int]]:
    """Indices that put b's values in the order of a's seeds, when both configs ran the very
    same seeds (each once); None otherwise: then the runs cannot be paired."""
    if a.seeds is None or b.seeds is None:
        return None
    a_seeds, b_seeds = list(a.seeds), list(b.seeds)
    if (len(set(a_seeds)) != len(a_seeds) or len(set(b_seeds)) != len(b_seeds)
            or set(a_seeds) != set(b_seeds)):
        return None
    return [b_seeds.index(seed) for seed in a_seeds]


def compare(a: Sample, b: Sample) -> tuple:
    """(test, two-sided p) for "a and b have the same mean": SciPy's paired t-test when both
    ran the same seeds (a seed's data split and initial weights are shared, so differences
    per seed cancel what the seed does), Welch's t-test otherwise. Both need n >= 2.

    A test SciPy leaves undefined because nothing varies gets its plain answer: identical
    values (every per-seed difference 0, or two constant samples with one mean) p = 1.
    """
    x, y = _finite(a.values), _finite(b.values)
    if len(x) < MIN_N or len(y) < MIN_N:
        raise ValueError(f"a t-test needs n >= {MIN_N} on both sides, got {len(x)} and {len(y)}")
    order = paired_order(a, b)
    with _quiet():
        if order is not None:
            test, p = PAIRED, sp.ttest_rel(x, y[order]).pvalue
        else:
            test, p = WELCH, sp.ttest_ind(x, y, equal_var=False).pvalue
    return test, (1.0 if math.isnan(p) else float(p))


def holm(p_values: Sequence[float]) -> List[float]:
    """Holm's step-down adjusted p-values, in the input order: the k-th smallest of m p-values
    is multiplied by (m - k + 1), capped at 1, and made non-decreasing along the sorted order.
    A hypothesis is rejected at level alpha when its adjusted p-value is <= alpha; the
    family-wise error rate stays <= alpha without assuming the tests are independent."""
    m = len(p_values)
    adjusted = [math.nan] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda k: p_values[k])):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True)
class Verdict:
    """A config against the best: BEST, TIED (cannot be told apart), DIFFERENT, or UNTESTABLE
    (it or the best has n < 2); the test used, its p-value and the Holm-adjusted p-value."""
    verdict: str
    test: Optional[str] = None
    p: float = math.nan
    p_holm: float = math.nan


def best_index(summaries: Sequence[Summary], *, higher_is_better: bool) -> Optional[int]:
    """The best config: the best mean among configs with n >= 2 (a single run is an anecdote,
    and a best that cannot be tested answers nothing), or among n >= 1 when no config has two
    values. Ties go to the first. None when no config has a value."""
    for least in (MIN_N, 1):
        candidates = [k for k, s in enumerate(summaries) if s.n >= least]
        if candidates:
            sign = -1.0 if higher_is_better else 1.0
            return min(candidates, key=lambda k: (sign * summaries[k].mean, k))
    return None


def judge(samples: Sequence[Sample], *, higher_is_better: bool,
          alpha: float = ALPHA) -> List[Verdict]:
    """Each config's verdict against the best one (`higher_is_better` says which way is best):
    one test per config with n >= 2 against the best, Holm-corrected over those tests."""
    summaries = [summarise(s.values) for s in samples]
    best = best_index(summaries, higher_is_better=higher_is_better)
    verdicts = [Verdict(UNTESTABLE) for _ in samples]
    if best is None:
        return verdicts
    verdicts[best] = Verdict(BEST)
    if summaries[best].n < MIN_N:
        return verdicts
    tested = [k for k, s in enumerate(summaries) if k != best and s.n >= MIN_N]
    results = [compare(samples[best], samples[k]) for k in tested]
    adjusted = holm([p for _, p in results])
    for k, (test, p), p_holm in zip(tested, results, adjusted):
        verdicts[k] = Verdict(TIED if p_holm > alpha else DIFFERENT, test, p, p_holm)
    return verdicts
