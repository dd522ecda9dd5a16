"""Learning-rate schedules and optimizers.

`schedule(cfg.lr_schedule, base_lr, steps_per_epoch, total_steps)` returns a pure function
step -> lr (a float32 tensor); `optimizer(cfg.optimizer, lr_fn)` wraps it in a Keras optimizer
that asks it for the lr at every update.
"""
import math

import keras
import tensorflow as tf


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


class _Scheduled(keras.optimizers.schedules.LearningRateSchedule):
    """Adapter so a Keras optimizer calls our pure step -> lr function."""

    def __init__(self, lr_fn):
        self.lr_fn = lr_fn

    def __call__(self, step):
        return self.lr_fn(step)

    def get_config(self):
        return {}


OPTIMIZERS = {
    "sgd": lambda cfg, lr: keras.optimizers.SGD(learning_rate=lr),
    "momentum": lambda cfg, lr: keras.optimizers.SGD(learning_rate=lr, momentum=cfg.momentum,
                                                     nesterov=cfg.nesterov),
    "adam": lambda cfg, lr: keras.optimizers.Adam(learning_rate=lr, beta_1=cfg.beta1,
                                                  beta_2=cfg.beta2, epsilon=cfg.epsilon),
    "rmsprop": lambda cfg, lr: keras.optimizers.RMSprop(learning_rate=lr, rho=cfg.rho,
                                                        momentum=0.0, epsilon=cfg.epsilon),
}


def optimizer(cfg, lr_fn) -> keras.optimizers.Optimizer:
    return OPTIMIZERS[cfg.name](cfg, _Scheduled(lr_fn))
