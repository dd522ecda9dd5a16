"""Weight penalties over a leading job axis: `penalty(weights, table)` -> [N] added to each
job's data loss.

Every weight is [N, ...] (a solo run is N = 1). l2 = strength * sum(v**2) / 2, i.e.
tf.nn.l2_loss as in seed 003; l1 = strength * sum(|v|). Biases (a vector per job) count only
with `include_biases`. `PenaltyTable(cfgs)` turns the N jobs' `cfg.regularizer` nodes into
per-job strengths once; a penalty no job uses costs nothing.
"""
from typing import Sequence

import numpy as np
import tensorflow as tf

from runner.clipping import rest_axes

# Each penalty's per-element term; "none" has none. Every option of config's closed set
# (tests/test_parity.py holds the two equal).
TERMS = {
    "none": None,
    "l2": lambda v: tf.square(v) / 2,
    "l1": tf.abs,
}


class PenaltyTable:
    """Per-job strength of each penalty ([N], 0 for jobs without it) and bias handling."""

    def __init__(self, cfgs: Sequence):
        unknown = {c.name for c in cfgs} - set(TERMS)
        if unknown:
            raise ValueError(f"regularizer: no rule for {sorted(unknown)}; known: {tuple(TERMS)}")
        self.n = len(cfgs)
        self.strength = {name: np.asarray([c.strength if c.name == name else 0.0 for c in cfgs],
                                          np.float32)
                         for name, term in TERMS.items() if term is not None}
        self.used = [name for name, s in self.strength.items() if np.any(s)]
        self.include_biases = tf.constant(
            np.asarray([c.include_biases for c in cfgs], np.float32))


def penalty(weights, table: PenaltyTable):
    """[N] penalties of [N, ...] weights (a weight whose per-job shape is 1-D is a bias)."""
    total = tf.zeros([table.n])
    for name in table.used:  # a penalty no job has skips its pass over every weight
        terms = []
        for weight in weights:
            summed = tf.reduce_sum(TERMS[name](weight), rest_axes(weight))
            terms.append(summed * table.include_biases if len(weight.shape) == 2 else summed)
        total += tf.constant(table.strength[name]) * tf.add_n(terms)
    return total
