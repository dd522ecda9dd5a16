"""Gradient clipping over a leading job axis: `clip(grads, table)` -> (clipped grads, stats).

Every gradient is [N, ...]: job j's gradient of one variable is `g[j]`. A solo run is N = 1.
`ClipTable(cfgs)` turns the N jobs' `cfg.clipping` nodes into per-job vectors once; `clip` is
then a pure function of the gradients. Each mode is one expression per tensor,
`clip_by_value(g * numerator / denominator, lo, hi)`, with factors that are 1 and bounds that
are +-inf for the jobs a mode does not concern, so each job gets the arithmetic of its TF op:

  value        tf.clip_by_value(g, min, max)               per element
  norm         tf.clip_by_norm: g * c / max(|g|, c)        per tensor
  global_norm  tf.clip_by_global_norm: g * c / max(G, c)   all tensors by one factor

The stats say what clipping did, per job, for metrics and plots:
  grad_norm / grad_norm_clipped     [N] global norm before / after
  var_norms / var_norms_clipped     [N, variables] each variable's gradient norm before / after
  clip_fraction                     [N] share of what was changed: elements for `value`,
                                    tensors for `norm`, all-or-nothing for `global_norm`
"""
from typing import Sequence

import numpy as np
import tensorflow as tf

# The clipping modes the engine implements: every option of config's closed set
# (tests/test_parity.py holds the two equal).
MODES = ("none", "value", "norm", "global_norm")


def per_job(vector, like):
    """[N] -> [N, 1, 1, ...] so it broadcasts against a [N, ...] tensor."""
    return tf.reshape(vector, [-1] + [1] * (len(like.shape) - 1))


def rest_axes(tensor):
    """Every axis but the job axis."""
    return list(range(1, len(tensor.shape)))


def _floats(values) -> tf.Tensor:
    return tf.constant(np.asarray(values, dtype=np.float32))


class ClipTable:
    """The N jobs' clipping options as per-job vectors, and which modes occur at all (the
    step leaves out the work of modes no job uses)."""

    def __init__(self, cfgs: Sequence):
        unknown = {c.name for c in cfgs} - set(MODES)
        if unknown:
            raise ValueError(f"clipping: no rule for {sorted(unknown)}; known: {MODES}")
        self.modes = {c.name for c in cfgs}
        self.is_mode = {mode: tf.constant([c.name == mode for c in cfgs]) for mode in MODES}
        # Bounds that leave every element alone for jobs that do not clip by value.
        self.value_min = _floats([c.min if c.name == "value" else -np.inf for c in cfgs])
        self.value_max = _floats([c.max if c.name == "value" else np.inf for c in cfgs])
        self.clip_norm = _floats([c.clip_norm for c in cfgs])


def norms(grads):
    """([N, variables] per-variable norms, [N] global norms) of [N, ...] gradients."""
    per_var = tf.stack([tf.sqrt(tf.reduce_sum(tf.square(g), rest_axes(g))) for g in grads], 1)
    return per_var, tf.sqrt(tf.reduce_sum(tf.square(per_var), 1))


def clip(grads, table: ClipTable):
    """Each job's gradients clipped its own way; see the module docstring."""
    var_norms, grad_norm = norms(grads)
    modes = table.modes
    ones = tf.ones_like(var_norms)
    numerator, denominator = ones, ones
    fraction = tf.zeros_like(grad_norm)
    if "norm" in modes:
        by_norm = table.is_mode["norm"][:, None]
        cap = table.clip_norm[:, None] * ones
        numerator = tf.where(by_norm, cap, numerator)
        denominator = tf.where(by_norm, tf.maximum(var_norms, cap), denominator)
        cut = tf.reduce_mean(tf.cast(var_norms > cap, tf.float32), 1)
        fraction = tf.where(table.is_mode["norm"], cut, fraction)
    if "global_norm" in modes:
        # c * min(1/G, 1/c), as tf.clip_by_global_norm; an infinite G gives NaN, as in TF.
        scale = table.clip_norm * tf.minimum(1.0 / grad_norm, 1.0 / table.clip_norm) \
            + (grad_norm - grad_norm)
        numerator = tf.where(table.is_mode["global_norm"][:, None], scale[:, None] * ones,
                             numerator)
        fraction = tf.where(table.is_mode["global_norm"],
                            tf.cast(grad_norm > table.clip_norm, tf.float32), fraction)
    clipped = []
    outside = tf.zeros_like(grad_norm)
    for i, g in enumerate(grads):
        if modes & {"norm", "global_norm"}:
            g = g * per_job(numerator[:, i], g) / per_job(denominator[:, i], g)
        if "value" in modes:
            low, high = per_job(table.value_min, g), per_job(table.value_max, g)
            scaled, g = g, tf.clip_by_value(g, low, high)
            # What the clip changed is what lay outside the bounds (one pass, not three).
            outside += tf.reduce_sum(tf.cast(tf.not_equal(g, scaled), tf.float32), rest_axes(g))
        clipped.append(g)
    if "value" in modes:
        elements = float(sum(int(np.prod(g.shape[1:])) for g in grads))
        fraction = tf.where(table.is_mode["value"], outside / elements, fraction)
        var_norms_clipped, grad_norm_clipped = norms(clipped)
    else:
        # Scaling a tensor scales its norm: the clipped norms need no second pass over the
        # gradients (equal to within float32 rounding; they are statistics, not the update).
        var_norms_clipped, grad_norm_clipped = var_norms, grad_norm
        if modes != {"none"}:
            var_norms_clipped = var_norms * numerator / denominator
            grad_norm_clipped = tf.sqrt(tf.reduce_sum(tf.square(var_norms_clipped), 1))
    return clipped, {"grad_norm": grad_norm, "grad_norm_clipped": grad_norm_clipped,
                     "clip_fraction": fraction, "var_norms": var_norms,
                     "var_norms_clipped": var_norms_clipped}
