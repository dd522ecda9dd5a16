"""The outcome rule, on hand-computed cases (runner/outcome.py's docstring states it)."""
import math

from runner.outcome import (COLLAPSED, DIVERGED, OK, classify, classify_language_model,
                            why_collapsed, why_lm_collapsed)

LN10 = math.log(10)  # a 10-class net's loss at chance: 2.3026


def test_diverged_wins_over_everything():
    assert classify(True, 2.30, 2.30, None, 10) == DIVERGED
    assert classify(True, 2.30, 0.10, 0.98, 10) == DIVERGED
    assert classify_language_model(True, 1e5, 10000) == DIVERGED


def test_a_learning_run_is_ok():
    assert classify(False, LN10, 0.30, 0.95, 10) == OK
    assert why_collapsed(LN10, 0.30, 0.95, 10) is None


def test_dead_lenet_at_chance_is_collapsed_by_both_rules():
    # lr 0.05 LeNet: val_loss 2.3026 -> 2.3010 (ratio 0.9993), test accuracy 0.098.
    assert classify(False, LN10, 2.3010, 0.098, 10) == COLLAPSED
    assert "val_loss" in why_collapsed(LN10, 2.3010, 0.098, 10)  # the loss rule comes first
    assert classify(False, LN10, 2.3010, None, 10) == COLLAPSED  # loss rule alone
    assert classify(False, None, None, 0.098, 10) == COLLAPSED  # accuracy rule alone


def test_loss_ratio_boundary():
    # 0.95 x 2.0 = 1.9: at the boundary counts as collapsed, just below does not.
    assert classify(False, 2.0, 1.9, 0.6, 10) == COLLAPSED
    assert classify(False, 2.0, 1.89, 0.6, 10) == OK


def test_accuracy_boundary_is_one_and_a_half_times_chance():
    # 1.5 / 10 classes = 0.15; 1.5 / 2 classes = 0.75.
    assert classify(False, 2.0, 0.5, 0.15, 10) == COLLAPSED
    assert classify(False, 2.0, 0.5, 0.151, 10) == OK
    assert classify(False, 0.69, 0.40, 0.75, 2) == COLLAPSED
    assert classify(False, 0.69, 0.40, 0.76, 2) == OK


def test_huge_step0_loss_falling_to_chance_is_caught_by_accuracy():
    # A sigma=1 init starts at loss 1e8 and falls to ln 10: the ratio rule alone says "learned".
    assert why_collapsed(1e8, LN10, None, 10) is None
    reason = why_collapsed(1e8, LN10, 0.10, 10)
    assert reason is not None and "test_acc" in reason
    assert classify(False, 1e8, LN10, 0.10, 10) == COLLAPSED


def test_missing_or_non_finite_inputs_do_not_apply_a_rule():
    assert classify(False) == OK
    assert classify(False, None, 2.3, None, 10) == OK  # no step-0 loss: no ratio
    assert classify(False, math.inf, 0.3, 0.9, 10) == OK  # infinite step-0 loss: no ratio
    assert classify(False, 2.3, math.inf, 0.9, 10) == OK  # one confident miss, accuracy fine
    assert classify(False, 2.3, math.nan, 0.9, 10) == OK
    assert classify(False, 2.3, 0.3, 0.05, None) == OK  # no class count: no accuracy rule


def test_language_model_rule_is_the_loss_rule_against_a_uniform_guess():
    limit = 10000 ** 0.95  # 6309.57: ln(limit) = 0.95 x ln(10000) = 8.750
    assert math.isclose(math.log(limit), 0.95 * math.log(10000))
    assert classify_language_model(False, 70.3, 10000) == OK  # the clipped run in studies 004
    assert classify_language_model(False, 8.7e4, 10000) == COLLAPSED  # the unclipped one
    assert classify_language_model(False, 6309.0, 10000) == OK
    assert classify_language_model(False, 6310.0, 10000) == COLLAPSED
    assert classify_language_model(False, math.inf, 10000) == COLLAPSED
    assert classify_language_model(False, math.nan, 10000) == OK
    assert classify_language_model(False, None, 10000) == OK
    # A tiny test vocabulary: 50 words -> limit 50 ** 0.95 = 41.13.
    assert classify_language_model(False, 41.0, 50) == OK
    assert classify_language_model(False, 41.2, 50) == COLLAPSED
    assert "vocab_size 50" in why_lm_collapsed(41.2, 50)
