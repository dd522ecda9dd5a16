"""Weight penalties: `penalty(variables, cfg.regularizer)` -> scalar added to the data loss.

l2 = strength * sum(tf.nn.l2_loss(v)) = strength * sum(v**2) / 2, as in seed 003;
l1 = strength * sum(|v|). Biases (1-D variables) count only with `include_biases`.
"""
import tensorflow as tf


def _penalised(variables, cfg):
    return [v for v in variables if cfg.include_biases or len(v.shape) > 1]


def _l2(variables, cfg):
    return cfg.strength * tf.add_n([tf.nn.l2_loss(v) for v in variables])


def _l1(variables, cfg):
    return cfg.strength * tf.add_n([tf.reduce_sum(tf.abs(v)) for v in variables])


PENALTIES = {
    "none": lambda variables, cfg: tf.constant(0.0),
    "l2": _l2,
    "l1": _l1,
}


def penalty(variables, cfg):
    chosen = _penalised(variables, cfg)
    if not chosen:
        return tf.constant(0.0)
    return PENALTIES[cfg.name](chosen, cfg)
