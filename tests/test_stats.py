"""runner.stats against numbers worked out by hand (t-quantiles from a printed t table; the
p-values of t with 2 and 4 degrees of freedom from their closed-form distribution functions)."""
import math

import pytest

from runner import stats
from runner.stats import (BEST, DIFFERENT, PAIRED, TIED, UNTESTABLE, WELCH, Sample, best_index,
                          compare, holm, judge, summarise)


def _t2_two_sided(t: float) -> float:
    """P(|T| > t), 2 degrees of freedom: 1 - t / sqrt(t^2 + 2)."""
    return 1 - abs(t) / math.sqrt(t * t + 2)


def _t4_two_sided(t: float) -> float:
    """P(|T| > t), 4 degrees of freedom: F(t) = 1/2 + 3/8 u (1 - t^2 / (12 (1 + t^2/4))),
    u = t / sqrt(1 + t^2/4)."""
    s = 1 + t * t / 4
    cdf = 0.5 + 3 / 8 * (abs(t) / math.sqrt(s)) * (1 - t * t / (12 * s))
    return 2 * (1 - cdf)


# ---------------------------------------------------------------- one config

def test_summary_of_five_values():
    # mean 3, sd sqrt(10/4) = 1.58114, sem = sd / sqrt(5) = 0.707107, t(0.975, 4) = 2.776445
    s = summarise([1, 2, 3, 4, 5])
    assert (s.n, s.mean) == (5, 3.0)
    assert s.sd == pytest.approx(math.sqrt(2.5))
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)  # 1.963243
    assert s.ci_low == pytest.approx(3 - half, abs=1e-6)
    assert s.ci_high == pytest.approx(3 + half, abs=1e-6)
    assert s.half_width == pytest.approx(half, abs=1e-6)


def test_two_values_give_the_wide_interval_of_one_degree_of_freedom():
    # mean 3, sd sqrt(2), sem 1, t(0.975, 1) = 12.7062
    s = summarise([2.0, 4.0])
    assert s.sd == pytest.approx(math.sqrt(2))
    assert (s.ci_low, s.ci_high) == pytest.approx((3 - 12.7062, 3 + 12.7062), abs=1e-4)


def test_fewer_than_two_values_have_no_spread():
    one = summarise([0.25])
    assert (one.n, one.mean) == (1, 0.25)
    assert math.isnan(one.sd) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    none = summarise([])
    assert none.n == 0 and math.isnan(none.mean)


def test_identical_values_have_a_zero_width_interval():
    s = summarise([0.5, 0.5, 0.5])
    assert (s.sd, s.ci_low, s.ci_high) == (0.0, 0.5, 0.5)


def test_non_finite_values_are_the_callers_to_drop():
    with pytest.raises(ValueError, match="finite"):
        summarise([1.0, math.nan])
    with pytest.raises(ValueError, match="finite"):
        summarise([1.0, math.inf])


# ---------------------------------------------------------------- two configs

def test_same_seeds_are_paired_in_seed_order():
    # b's runs listed in another order: paired by seed, the differences are -1, -2, 0:
    # mean -1, sd 1, t = -1 / (1 / sqrt(3)) = -sqrt(3), 2 degrees of freedom.
    a = Sample([1.0, 2.0, 3.0], ["0", "1", "2"])
    b = Sample([3.0, 2.0, 4.0], ["2", "0", "1"])
    test, p = compare(a, b)
    assert test == PAIRED
    assert p == pytest.approx(_t2_two_sided(math.sqrt(3)))  # 0.225403
    assert p == pytest.approx(0.225403, abs=1e-6)


def test_different_seeds_use_welch():
    # Equal variances (1) and n (3): se^2 = 2/3, t = -2 / sqrt(2/3) = -sqrt(6), Welch df = 4.
    a = Sample([1.0, 2.0, 3.0], ["0", "1", "2"])
    b = Sample([3.0, 4.0, 5.0], ["0", "1", "3"])
    test, p = compare(a, b)
    assert test == WELCH
    assert p == pytest.approx(_t4_two_sided(math.sqrt(6)))  # 0.070484
    assert p == pytest.approx(0.070484, abs=1e-6)
    assert compare(Sample(a.values), Sample(b.values))[0] == WELCH  # seeds unknown
    repeated = Sample([1.0, 2.0, 3.0], ["0", "0", "1"])  # a seed twice cannot pair
    assert compare(repeated, Sample([3.0, 4.0, 5.0], ["0", "0", "1"]))[0] == WELCH


def test_tests_that_nothing_varies_in_answer_plainly():
    same = Sample([0.3, 0.4, 0.5], ["0", "1", "2"])
    assert compare(same, same) == (PAIRED, 1.0)  # every difference 0: SciPy says nan
    assert compare(Sample([1.0, 1.0]), Sample([1.0, 1.0])) == (WELCH, 1.0)
    assert compare(Sample([1.0, 1.0]), Sample([2.0, 2.0])) == (WELCH, 0.0)


def test_a_test_needs_two_values_each():
    with pytest.raises(ValueError, match="n >= 2"):
        compare(Sample([1.0]), Sample([1.0, 2.0]))


# ---------------------------------------------------------------- Holm

def test_holm_step_down_by_hand():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1, then monotone
    assert holm([0.2]) == [0.2]
    assert holm([]) == []


def test_holm_rejects_what_bonferroni_would_not():
    # 3 tests at alpha 0.05: Bonferroni needs p <= 0.0167 each; Holm's second step only 0.025.
    adjusted = holm([0.01, 0.02, 0.9])
    assert adjusted == pytest.approx([0.03, 0.04, 0.9])
    assert [p <= 0.05 for p in adjusted] == [True, True, False]
    assert [p * 3 <= 0.05 for p in (0.01, 0.02, 0.9)] == [True, False, False]


# ---------------------------------------------------------------- the best and its ties

def test_best_follows_the_direction_and_prefers_configs_with_a_spread():
    low, high, single = summarise([1.0, 2.0]), summarise([5.0, 6.0]), summarise([0.1])
    assert best_index([high, low], higher_is_better=False) == 1
    assert best_index([high, low], higher_is_better=True) == 0
    assert best_index([single, high, low], higher_is_better=False) == 2  # n = 1 is an anecdote
    assert best_index([summarise([0.2]), single], higher_is_better=False) == 1  # all n = 1
    assert best_index([summarise([]), summarise([])], higher_is_better=False) is None
    assert best_index([low, low], higher_is_better=False) == 0  # a tie goes to the first


def test_judge_marks_best_tied_different_and_untestable():
    seeds = ["0", "1", "2"]
    best = Sample([1.0, 2.0, 3.0], seeds)
    close = Sample([3.0, 2.0, 4.0], ["2", "0", "1"])  # paired p 0.225403
    far = Sample([11.0, 12.0, 13.0], seeds)  # every difference -10, sd 0: paired p = 0
    welch = Sample([3.0, 4.0, 5.0], ["5", "6", "7"])  # Welch p 0.070484
    single = Sample([0.5], ["0"])  # lower than the best, but one run
    verdicts = judge([close, far, best, welch, single], higher_is_better=False)
    assert [v.verdict for v in verdicts] == [TIED, DIFFERENT, BEST, TIED, UNTESTABLE]
    assert [v.test for v in verdicts] == [PAIRED, PAIRED, None, WELCH, None]
    # Holm over 3 p-values: 0 x 3 = 0, 0.070484 x 2 = 0.140968, 0.225403 x 1 -> 0.225403
    assert verdicts[0].p == pytest.approx(0.225403, abs=1e-6)
    assert verdicts[0].p_holm == pytest.approx(0.225403, abs=1e-6)
    assert verdicts[1].p_holm == 0.0
    assert verdicts[3].p_holm == pytest.approx(2 * 0.070484, abs=2e-6)
    assert math.isnan(verdicts[4].p) and math.isnan(verdicts[2].p_holm)
    higher = judge([close, far, best], higher_is_better=True)
    assert [v.verdict for v in higher] == [DIFFERENT, BEST, DIFFERENT]


def test_one_seed_per_config_leaves_everything_untestable_but_the_best():
    verdicts = judge([Sample([0.3]), Sample([0.2]), Sample([])], higher_is_better=False)
    assert [v.verdict for v in verdicts] == [UNTESTABLE, BEST, UNTESTABLE]
    assert judge([Sample([]), Sample([])], higher_is_better=False) == [
        stats.Verdict(UNTESTABLE)] * 2
