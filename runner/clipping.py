"""Gradient clipping: `clip(grads, cfg.clipping)` -> (clipped grads, stats).

Pure functions of the gradient list. The stats say what clipping did, for metrics and plots:
  grad_norm / grad_norm_clipped     global norm before / after
  var_norms / var_norms_clipped     each variable's gradient norm before / after, [n_vars]
  clip_fraction                     share of what was changed: elements for `value`,
                                    tensors for `norm` and `global_norm`
"""
import tensorflow as tf


def _none(grads, cfg):
    return list(grads), tf.constant(0.0)


def _value(grads, cfg):
    # Per element, exactly tf.clip_by_value; the fraction counts elements outside [min, max].
    clipped = [tf.clip_by_value(g, cfg.min, cfg.max) for g in grads]
    outside = tf.add_n([tf.reduce_sum(tf.cast((g < cfg.min) | (g > cfg.max), tf.float32))
                        for g in grads])
    total = float(sum(g.shape.num_elements() for g in grads))
    return clipped, outside / total


def _norm(grads, cfg):
    # Per tensor, exactly tf.clip_by_norm; the fraction counts tensors whose norm was cut.
    clipped = [tf.clip_by_norm(g, cfg.clip_norm) for g in grads]
    cut = tf.stack([tf.cast(tf.norm(g) > cfg.clip_norm, tf.float32) for g in grads])
    return clipped, tf.reduce_mean(cut)


def _global_norm(grads, cfg):
    # All tensors scaled by one factor, exactly tf.clip_by_global_norm: all changed or none.
    clipped, global_norm = tf.clip_by_global_norm(grads, cfg.clip_norm)
    return clipped, tf.cast(global_norm > cfg.clip_norm, tf.float32)


CLIPPERS = {
    "none": _none,
    "value": _value,
    "norm": _norm,
    "global_norm": _global_norm,
}


def _norms(grads):
    per_var = tf.stack([tf.norm(g) for g in grads])
    return per_var, tf.sqrt(tf.reduce_sum(tf.square(per_var)))


def clip(grads, cfg):
    """Clip `grads` as `cfg.name` says; return the clipped list and a dict of scalar stats."""
    clipped, fraction = CLIPPERS[cfg.name](grads, cfg)
    var_norms, grad_norm = _norms(grads)
    # Unclipped gradients need no second pass (saves ops in every step of the hot loop).
    var_norms_clipped, grad_norm_clipped = (
        (var_norms, grad_norm) if cfg.name == "none" else _norms(clipped))
    return clipped, {
        "grad_norm": grad_norm,
        "grad_norm_clipped": grad_norm_clipped,
        "clip_fraction": fraction,
        "var_norms": var_norms,
        "var_norms_clipped": var_norms_clipped,
    }
