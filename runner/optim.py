"""Learning-rate schedules and optimizer update rules, over a leading job axis.

`schedule(cfg.lr_schedule, base_lr, steps_per_epoch, total_steps)` returns a pure function
step -> lr (a float32 tensor). `RULES` holds one update rule per optimizer name, Keras 3's own
formula (tests/test_optim.py pins each to keras.optimizers over several steps); `Optimizer`
applies one rule to N jobs at once, each with its own constants, lr and step count. A solo
run is N = 1: there is one update rule per optimizer, not a stacked and a solo dialect.
"""
import math
from dataclasses import dataclass
from typing import Callable, Sequence, Tuple

import numpy as np
import tensorflow as tf

from runner import clipping


def _constant(cfg, base_lr, steps_per_epoch, total_steps):
    return lambda step: tf.constant(base_lr, tf.float32)


def _piecewise(cfg, base_lr, steps_per_epoch, total_steps):
    # From boundary b on (b in steps or epochs), the next multiplier applies.
    per_unit = steps_per_epoch if cfg.unit == "epoch" else 1
    boundaries = tf.constant([b * per_unit for b in cfg.boundaries] or [math.inf], tf.float32)
    factors = list(cfg.multipliers) or [1.0]
    multipliers = tf.constant(factors, tf.float32)

    def lr(step):
        passed = tf.reduce_sum(tf.cast(tf.cast(step, tf.float32) >= boundaries, tf.int32))
        return base_lr * tf.gather(multipliers, tf.minimum(passed, len(factors) - 1))
    return lr


def _exponential(cfg, base_lr, steps_per_epoch, total_steps):
    # Zaremba et al.: lr_decay = decay ** max(epoch + 1 - max_epoch, 0), epoch counted from 0.
    def lr(step):
        epoch = tf.floor(tf.cast(step, tf.float32) / steps_per_epoch)
        return base_lr * tf.pow(cfg.decay, tf.maximum(epoch + 1.0 - cfg.after_epochs, 0.0))
    return lr


def _cosine(cfg, base_lr, steps_per_epoch, total_steps):
    warmup = float(cfg.warmup_steps)
    decay_steps = max(1.0, total_steps - warmup)

    def lr(step):
        step = tf.cast(step, tf.float32)
        progress = tf.clip_by_value((step - warmup) / decay_steps, 0.0, 1.0)
        cosine = cfg.min_fraction + (1 - cfg.min_fraction) * 0.5 * (1 + tf.cos(math.pi * progress))
        ramp = tf.minimum(1.0, (step + 1.0) / warmup) if warmup > 0 else 1.0
        return base_lr * tf.where(step < warmup, ramp, cosine)
    return lr


SCHEDULES = {
    "constant": _constant,
    "piecewise": _piecewise,
    "exponential": _exponential,
    "cosine": _cosine,
}


def schedule(cfg, base_lr: float, steps_per_epoch: int, total_steps: int):
    return SCHEDULES[cfg.name](cfg, float(base_lr), max(1, steps_per_epoch), total_steps)


# ---------------------------------------------------------------- update rules

def _floats(values) -> tf.Tensor:
    return tf.constant(np.asarray(values, dtype=np.float32))


@dataclass(frozen=True)
class Rule:
    """One optimizer's update over a leading job axis, Keras 3's formula for each job.

    `slots`: the state it keeps per variable ([N, ...] each, zero at the start).
    `constants(cfgs)`: the jobs' option values as [N] tensors (Python-float arithmetic first,
    then float32, as Keras' update_step does). `update(c, variable, g, lr, step, slots)`
    returns the new variable and the new slots; `lr` and `step` (1-based) are per job and
    already shaped to broadcast.
    """
    slots: Tuple[str, ...]
    constants: Callable
    update: Callable


def _sgd(c, variable, g, lr, step, slots):
    return variable - g * lr, {}


def _momentum(c, variable, g, lr, step, slots):
    velocity = slots["velocity"] * c["momentum"] - g * lr
    if c["any_nesterov"]:
        new = tf.where(c["nesterov"], variable + (velocity * c["momentum"] - g * lr),
                       variable + velocity)
    else:
        new = variable + velocity
    return new, {"velocity": velocity}


def _adam(c, variable, g, lr, step, slots):
    alpha = lr * tf.sqrt(1 - tf.pow(c["beta2"], step)) / (1 - tf.pow(c["beta1"], step))
    m = slots["m"] + (g - slots["m"]) * c["one_minus_beta1"]
    v = slots["v"] + (tf.square(g) - slots["v"]) * c["one_minus_beta2"]
    return variable - (m * alpha) / (tf.sqrt(v) + c["epsilon"]), {"m": m, "v": v}


def _rmsprop(c, variable, g, lr, step, slots):
    velocity = c["rho"] * slots["velocity"] + c["one_minus_rho"] * tf.square(g)
    return variable - lr * g / tf.sqrt(velocity + c["epsilon"]), {"velocity": velocity}


RULES = {
    "sgd": Rule((), lambda cfgs: {}, _sgd),
    "momentum": Rule(("velocity",), lambda cfgs: {
        "momentum": _floats([o.momentum for o in cfgs]),
        "nesterov": tf.constant([bool(o.nesterov) for o in cfgs]),
        "any_nesterov": any(o.nesterov for o in cfgs)}, _momentum),
    "adam": Rule(("m", "v"), lambda cfgs: {
        "beta1": _floats([o.beta1 for o in cfgs]), "beta2": _floats([o.beta2 for o in cfgs]),
        "one_minus_beta1": _floats([1 - o.beta1 for o in cfgs]),
        "one_minus_beta2": _floats([1 - o.beta2 for o in cfgs]),
        "epsilon": _floats([o.epsilon for o in cfgs])}, _adam),
    "rmsprop": Rule(("velocity",), lambda cfgs: {
        "rho": _floats([o.rho for o in cfgs]), "one_minus_rho": _floats([1 - o.rho for o in cfgs]),
        "epsilon": _floats([o.epsilon for o in cfgs])}, _rmsprop),
}


class Optimizer:
    """The N jobs' optimizer over [N, ...] views of their variables: one rule (one optimizer
    name per graph), per-job constants, learning rates and step counts.

    `view(v)` / `write(v, value)` turn a stored variable into its [N, ...] view and back (a
    solo Keras model stores [...], a stacked network [N, ...]). A job outside the update mask
    is left exactly as it was, weights and slots.
    """

    def __init__(self, cfgs: Sequence, variables, view, write):
        names = {o.name for o in cfgs}
        if len(names) != 1 or not names <= set(RULES):
            raise ValueError(f"optimizer: one rule per graph, from {tuple(RULES)}; got {names}")
        self.rule = RULES[names.pop()]
        self.constants = self.rule.constants(list(cfgs))
        self.variables, self.view, self.write = list(variables), view, write
        self.iterations = tf.Variable(tf.zeros([len(cfgs)], tf.int64), trainable=False,
                                      name="iterations")
        self.slots = [{name: tf.Variable(tf.zeros_like(view(v)), trainable=False,
                                         name=f"{name}_{i}")
                       for name in self.rule.slots} for i, v in enumerate(self.variables)]

    def apply(self, grads, lr, mask) -> None:
        """One update of the jobs in `mask` ([N] bool) with learning rates `lr` ([N])."""
        step = tf.cast(self.iterations + 1, tf.float32)
        olds, news = [], []  # per variable: (weight, *slots), old and new values
        for variable, g, slots in zip(self.variables, grads, self.slots):
            constants = {k: clipping.per_job(c, g) if isinstance(c, tf.Tensor) else c
                         for k, c in self.constants.items()}
            old = self.view(variable)
            current = {name: slot.read_value() for name, slot in slots.items()}
            new, new_slots = self.rule.update(
                constants, old, g, clipping.per_job(lr, g), clipping.per_job(step, g), current)
            olds.append((old, *(current[name] for name in slots)))
            news.append((new, *(new_slots[name] for name in slots)))

        def masked():
            # A job outside the mask keeps its old values; the others take exactly their new
            # ones (a select does no arithmetic), so a masked job changes nothing for them.
            return [tuple(tf.where(clipping.per_job(mask, n), n, o) for n, o in zip(new, old))
                    for new, old in zip(news, olds)]

        # Every job applied (nearly every step): no select at all (Adam: three per variable,
        # on the weight and both slots); the values are the same either way.
        values = tf.cond(tf.reduce_all(mask), lambda: news, masked)
        for variable, slots, (new, *new_slots) in zip(self.variables, self.slots, values):
            for slot, value in zip(slots.values(), new_slots):
                slot.assign(value)
            self.write(variable, new)
        self.iterations.assign_add(tf.cast(mask, tf.int64))


def job_rates(schedules: Sequence[Callable], iterations) -> tf.Tensor:
    """[N] learning rates: job j's schedule at job j's own step count."""
    return tf.stack([tf.cast(fn(iterations[j]), tf.float32) for j, fn in enumerate(schedules)])
