"""runner.optim: step -> lr schedules checked at and around their boundaries, and update rules
pinned to Keras' own optimizers that apply exactly the scheduled lr, job by job."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from conftest import compose_cfg
from runner.config import LRScheduleConfig, OptimizerConfig
from runner.optim import RULES, SCHEDULES, Optimizer, job_rates, schedule

LR = 0.1


def sched_cfg(name, **fields):
    return OmegaConf.structured(LRScheduleConfig(name=name, **fields))


def opt_cfg(name, **fields):
    return OmegaConf.structured(OptimizerConfig(name=name, **fields))


def lr_at(fn, step):
    return float(fn(tf.constant(step, tf.int64)))


# ---------------------------------------------------------------- schedules

def test_constant():
    fn = schedule(sched_cfg("constant"), LR, steps_per_epoch=10, total_steps=100)
    for step in (0, 1, 9, 10, 99, 100, 10_000):
        assert lr_at(fn, step) == pytest.approx(LR)


@pytest.mark.parametrize("step,multiplier", [
    (0, 1.0), (4, 1.0),  # before the first boundary
    (5, 0.1), (6, 0.1),  # from the boundary on, the next multiplier applies
    (19, 0.1), (20, 0.01), (21, 0.01), (1000, 0.01),
])
def test_piecewise_in_steps(step, multiplier):
    node = sched_cfg("piecewise", unit="step", boundaries=[5, 20], multipliers=[1.0, 0.1, 0.01])
    fn = schedule(node, LR, steps_per_epoch=7, total_steps=100)
    assert lr_at(fn, step) == pytest.approx(LR * multiplier)


@pytest.mark.parametrize("step", range(0, 50))
def test_piecewise_in_epochs(step):
    # Boundaries at epochs 2 and 5 with 7 steps per epoch: steps 14 and 35.
    node = sched_cfg("piecewise", unit="epoch", boundaries=[2, 5], multipliers=[1.0, 0.5, 0.25])
    fn = schedule(node, LR, steps_per_epoch=7, total_steps=100)
    epoch = step // 7
    multiplier = 1.0 if epoch < 2 else 0.5 if epoch < 5 else 0.25
    assert lr_at(fn, step) == pytest.approx(LR * multiplier)


def test_piecewise_epoch_boundaries_explicitly():
    node = sched_cfg("piecewise", unit="epoch", boundaries=[2, 5], multipliers=[1.0, 0.5, 0.25])
    fn = schedule(node, LR, steps_per_epoch=7, total_steps=100)
    assert [lr_at(fn, s) for s in (13, 14, 15, 34, 35, 36)] == pytest.approx(
        [LR, LR * 0.5, LR * 0.5, LR * 0.5, LR * 0.25, LR * 0.25])


def test_piecewise_default_config_is_the_epoch_staircase():
    # conf/lr_schedule/piecewise.yaml: epochs 3, 6, 9 with multipliers 1, 0.1, 0.01, 0.001.
    node = compose_cfg("lr_schedule=piecewise").lr_schedule
    fn = schedule(node, LR, steps_per_epoch=10, total_steps=200)
    assert [lr_at(fn, s) for s in (29, 30, 59, 60, 89, 90)] == pytest.approx(
        [LR, LR * 0.1, LR * 0.1, LR * 0.01, LR * 0.01, LR * 0.001])


@pytest.mark.parametrize("step", [0, 9, 10, 19, 20, 29, 30, 31, 39, 40, 59, 60, 99])
def test_exponential_zaremba(step):
    steps_per_epoch, decay, after = 10, 0.5, 3
    fn = schedule(sched_cfg("exponential", decay=decay, after_epochs=after), LR,
                  steps_per_epoch=steps_per_epoch, total_steps=100)
    epoch = step // steps_per_epoch
    expected = LR * decay ** max(0, epoch + 1 - after)
    assert lr_at(fn, step) == pytest.approx(expected, rel=1e-6)


def test_exponential_by_hand():
    # decay 0.5 after 4 epochs (Zaremba): epochs 0-3 at lr, epoch 4 at lr/2, epoch 5 at lr/4.
    fn = schedule(sched_cfg("exponential", decay=0.5, after_epochs=4), 1.0,
                  steps_per_epoch=5, total_steps=100)
    assert [lr_at(fn, s) for s in (0, 19, 20, 24, 25, 30)] == pytest.approx(
        [1.0, 1.0, 0.5, 0.5, 0.25, 0.125])


def cosine_reference(step, total, warmup, min_fraction):
    """The schedule written out in plain Python, as the config documents it."""
    if step < warmup:
        return LR * min(1.0, (step + 1) / warmup)
    progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
    return LR * (min_fraction + (1 - min_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


@pytest.mark.parametrize("min_fraction", [0.0, 0.1])
def test_cosine_without_warmup(min_fraction):
    fn = schedule(sched_cfg("cosine", warmup_steps=0, min_fraction=min_fraction), LR,
                  steps_per_epoch=10, total_steps=100)
    assert lr_at(fn, 0) == pytest.approx(LR)  # starts at the full lr
    assert lr_at(fn, 50) == pytest.approx(LR * (1 + min_fraction) / 2)  # midpoint
    assert lr_at(fn, 100) == pytest.approx(LR * min_fraction, abs=1e-9)  # end
    assert lr_at(fn, 250) == pytest.approx(LR * min_fraction, abs=1e-9)  # stays there
    values = [lr_at(fn, s) for s in range(0, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # never increases
    for s in (1, 17, 25, 75, 99):
        expected = cosine_reference(s, 100, 0, min_fraction)
        assert lr_at(fn, s) == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_cosine_with_warmup():
    warmup, total, min_fraction = 10, 110, 0.2
    fn = schedule(sched_cfg("cosine", warmup_steps=warmup, min_fraction=min_fraction), LR,
                  steps_per_epoch=10, total_steps=total)
    # Linear ramp: step s of the warmup trains with lr * (s + 1) / warmup.
    assert lr_at(fn, 0) == pytest.approx(LR / warmup)
    assert lr_at(fn, 4) == pytest.approx(LR * 5 / warmup)
    ramp = [lr_at(fn, s) for s in range(warmup)]
    np.testing.assert_allclose(np.diff(ramp), LR / warmup, rtol=1e-5)
    assert lr_at(fn, warmup - 1) == pytest.approx(LR)  # end of warmup: full lr
    assert lr_at(fn, warmup) == pytest.approx(LR)  # cosine starts at the top
    assert lr_at(fn, warmup + (total - warmup) // 2) == pytest.approx(LR * (1 + min_fraction) / 2)
    assert lr_at(fn, total) == pytest.approx(LR * min_fraction)
    for s in (3, 11, 35, 80, 109):
        assert lr_at(fn, s) == pytest.approx(
            cosine_reference(s, total, warmup, min_fraction), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("node", [
    sched_cfg("constant"),
    sched_cfg("piecewise", unit="step", boundaries=[3, 8], multipliers=[1.0, 0.1, 0.01]),
    sched_cfg("exponential", decay=0.5, after_epochs=1),
    sched_cfg("cosine", warmup_steps=4, min_fraction=0.1),
], ids=lambda n: n.name)
def test_schedules_give_the_same_values_in_a_graph(node):
    # The train step asks for the lr inside a tf.function with opt.iterations (int64).
    fn = schedule(node, LR, steps_per_epoch=5, total_steps=20)
    graph = tf.function(fn)
    for step in range(0, 25):
        got = graph(tf.constant(step, tf.int64))
        assert got.dtype == tf.float32
        assert float(got) == pytest.approx(lr_at(fn, step))


# ---------------------------------------------------------------- update rules

class Jobs:
    """N jobs' copies of one variable as a [N, ...] tf.Variable, updated by optim.Optimizer."""

    def __init__(self, nodes, shape, schedules):
        self.var = tf.Variable(np.zeros((len(nodes), *shape), np.float32))
        self.opt = Optimizer(nodes, [self.var], view=tf.convert_to_tensor,
                             write=lambda v, value: v.assign(value))
        self.schedules = schedules

    def apply(self, grad, mask=None):
        mask = tf.ones([len(self.schedules)], tf.bool) if mask is None else tf.constant(mask)
        lr = job_rates(self.schedules, self.opt.iterations)
        self.opt.apply([tf.constant(grad, tf.float32)], lr, mask)


def apply_ones(node, fn, shape, times):
    """One job; a gradient of ones `times` times; the change of the variable at every update."""
    jobs, moves = Jobs([node], shape, [fn]), []
    for _ in range(times):
        before = jobs.var.numpy()[0].copy()
        jobs.apply(np.ones((1, *shape), np.float32))
        moves.append(before - jobs.var.numpy()[0])
    return moves


KERAS = {
    "sgd": lambda o: keras.optimizers.SGD(learning_rate=LR),
    "momentum": lambda o: keras.optimizers.SGD(learning_rate=LR, momentum=o.momentum,
                                               nesterov=o.nesterov),
    "adam": lambda o: keras.optimizers.Adam(learning_rate=LR, beta_1=o.beta1, beta_2=o.beta2,
                                            epsilon=o.epsilon),
    "rmsprop": lambda o: keras.optimizers.RMSprop(learning_rate=LR, rho=o.rho, epsilon=o.epsilon),
}
RULE_CASES = [("sgd", {}), ("momentum", {"momentum": 0.8}),
              ("momentum", {"momentum": 0.9, "nesterov": True}),
              ("adam", {"beta1": 0.85, "beta2": 0.99, "epsilon": 1e-6}),
              ("adam", {"epsilon": 1e-8}), ("rmsprop", {"rho": 0.7, "epsilon": 1e-6})]


def test_every_option_has_a_schedule_and_an_update_rule():
    assert set(SCHEDULES) == {"constant", "piecewise", "exponential", "cosine"}
    assert set(RULES) == {"sgd", "momentum", "adam", "rmsprop"}


@pytest.mark.parametrize("name, fields", RULE_CASES, ids=lambda c: str(c))
def test_each_rule_is_keras_own_update(name, fields):
    # Pinned to keras.optimizers: 8 steps of random gradients, the same variable trajectory.
    node = opt_cfg(name, **fields)
    rng = np.random.default_rng(0)
    grads = rng.normal(0, 1, (8, 3, 4)).astype(np.float32)
    reference = keras.Variable(np.zeros((3, 4), np.float32))
    keras_opt = KERAS[name](node)
    jobs = Jobs([node], (3, 4), [schedule(sched_cfg("constant"), LR, 10, 100)])
    for g in grads:
        keras_opt.apply([tf.constant(g)], [reference])
        jobs.apply(g[None])
        np.testing.assert_allclose(jobs.var.numpy()[0], reference.numpy(), rtol=1e-6, atol=1e-7)


def test_jobs_of_one_graph_keep_their_own_constants_and_masked_jobs_stay_put():
    nodes = [opt_cfg("adam", beta1=b1) for b1 in (0.9, 0.5, 0.7)]
    fn = schedule(sched_cfg("constant"), LR, 10, 100)
    together, grads = Jobs(nodes, (2,), [fn] * 3), np.ones((3, 2), np.float32)
    together.apply(grads)
    together.apply(grads, mask=[True, False, True])
    for j, node in enumerate(nodes):
        alone = Jobs([node], (2,), [fn])
        alone.apply(grads[j:j + 1])
        if j != 1:
            alone.apply(grads[j:j + 1])
        np.testing.assert_array_equal(together.var.numpy()[j], alone.var.numpy()[0])
    assert together.opt.iterations.numpy().tolist() == [2, 1, 2]


def test_sgd_moves_by_exactly_the_scheduled_lr_at_every_step():
    # Boundaries at steps 1 and 3: the updates use lr, lr/10, lr/10, lr/100, lr/100.
    node = sched_cfg("piecewise", unit="step", boundaries=[1, 3], multipliers=[1.0, 0.1, 0.01])
    fn = schedule(node, LR, steps_per_epoch=10, total_steps=100)
    moves = apply_ones(opt_cfg("sgd"), fn, (3,), 5)
    expected = [LR, LR / 10, LR / 10, LR / 100, LR / 100]
    for move, lr in zip(moves, expected):
        np.testing.assert_allclose(move, lr, rtol=1e-5)


def test_sgd_follows_the_cosine_warmup():
    warmup, total = 4, 12
    fn = schedule(sched_cfg("cosine", warmup_steps=warmup, min_fraction=0.0), LR,
                  steps_per_epoch=4, total_steps=total)
    moves = apply_ones(opt_cfg("sgd"), fn, (2, 2), total)
    for step, move in enumerate(moves):
        np.testing.assert_allclose(move, cosine_reference(step, total, warmup, 0.0), rtol=1e-5,
                                   atol=1e-7)


def test_momentum_accumulates_scheduled_steps():
    # m_t = mu * m_{t-1} - lr_t * g;  w += m_t.  With g = 1: moves lr0, mu*lr0 + lr1, ...
    mu = 0.9
    node = sched_cfg("piecewise", unit="step", boundaries=[1], multipliers=[1.0, 0.5])
    moves = apply_ones(opt_cfg("momentum", momentum=mu), schedule(node, LR, 10, 100), (2,), 3)
    lr0, lr1 = LR, LR * 0.5
    expected = [lr0, mu * lr0 + lr1, mu * (mu * lr0 + lr1) + lr1]
    for move, e in zip(moves, expected):
        np.testing.assert_allclose(move, e, rtol=1e-5)


def test_nesterov_first_step():
    # Nesterov: w += mu * m_t - lr * g, so the first move is (1 + mu) * lr.
    mu = 0.9
    moves = apply_ones(opt_cfg("momentum", momentum=mu, nesterov=True),
                       schedule(sched_cfg("constant"), LR, 10, 100), (2,), 1)
    np.testing.assert_allclose(moves[0], (1 + mu) * LR, rtol=1e-5)


def test_adam_first_step_is_the_scheduled_lr():
    # Bias-corrected first Adam step: lr * g / (|g| + eps'), i.e. ~lr for g = 1.
    warmup = 4
    fn = schedule(sched_cfg("cosine", warmup_steps=warmup), LR, 10, 100)
    np.testing.assert_allclose(apply_ones(opt_cfg("adam"), fn, (3,), 1)[0], LR / warmup,
                               rtol=1e-4)


def test_rmsprop_first_step():
    # v = (1 - rho) * g**2; w -= lr * g / sqrt(v + eps): lr / sqrt(1 - rho) for g = 1.
    rho = 0.9
    node = sched_cfg("piecewise", unit="step", boundaries=[1], multipliers=[0.5, 1.0])
    moves = apply_ones(opt_cfg("rmsprop", rho=rho), schedule(node, LR, 10, 100), (3,), 1)
    np.testing.assert_allclose(moves[0], 0.5 * LR / math.sqrt(1 - rho), rtol=1e-4)
