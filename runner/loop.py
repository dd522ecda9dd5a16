"""The training engine: one compiled multi-step loop for every task.

A task (image classification, language model) hands the engine a *variant* — a Keras model
with its optimizer, lr schedule, clipping and penalty, a batch source and an objective — and
gets back `train_steps(k)`: one `tf.function` call that runs up to k updates and returns the
per-step series. Per step:

    batch -> objective + penalty -> gradients -> clip -> guard -> apply -> series

The guard applies an update only when the loss *and every gradient* are finite; a refused
update ends the call, and the task marks the run `diverged` at that step. Several jobs of a
sweep that share their shapes train as one network instead (runner/stacked.py), which returns
the same `Interval`s.
"""
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf

from runner import clipping, regularizers

# Per-step series that come out of the compiled loop (one value per update).
SERIES = ("train_loss", "penalty", "lr", "grad_norm", "grad_norm_clipped", "clip_fraction")


def seed_everything(seed: int) -> None:
    """Python, NumPy, TF and Keras' initialisers: same seed, same weights and batches."""
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


def configure_threads(train_cfg) -> None:
    """`train.threads` for this process's TensorFlow runtime, before it runs any op.

    The runtime fixes its thread pools when it starts: a later job in the same process (the
    basic launcher runs them one after another) keeps the first job's setting.
    """
    if train_cfg.threads is None:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(train_cfg.threads)
        tf.config.threading.set_inter_op_parallelism_threads(train_cfg.threads)
    except RuntimeError:  # the runtime is already up
        pass


@dataclass
class Variant:
    """One model the loop trains, with everything that may differ between sweep jobs.

    `batches` draws the next batch on the graph (`batches.next()`); variants that share a batch
    source get the same batches. `objective(model, batch)` returns (objective to minimise,
    loss to report per example, commit) where `commit()` applies the step's side effects
    (e.g. carried LSTM state) and runs only when the update is applied.
    """
    model: keras.Model
    optimizer: Any
    lr_at: Callable  # step -> lr tensor
    clipping: Any  # the job's cfg.clipping
    regularizer: Any  # the job's cfg.regularizer
    batches: Any
    objective: Callable

    @property
    def variable_names(self) -> List[str]:
        return [v.path for v in self.model.trainable_variables]


@dataclass
class Interval:
    """What one variant did in one call of `train_steps`."""
    applied: int  # updates applied in this call
    diverged: bool  # its last attempted update had a NaN/Inf loss or gradient (not applied)
    series: Dict[str, np.ndarray]  # SERIES name -> [applied] per-step values
    var_norms: np.ndarray  # [applied, variables] gradient norm per variable, before clipping
    var_norms_clipped: np.ndarray  # ... after clipping


def _all_finite(total, stats):
    """Loss, gradients and clipped gradients all finite, read off their global norms.

    A norm is finite exactly when every element is, except that a norm overflowing float32
    (elements beyond ~1e19) counts as non-finite too: tf.clip_by_global_norm would turn such
    gradients into NaN, so refusing them is what keeps NaN out of the weights.
    """
    return tf.reduce_all(tf.stack([tf.math.is_finite(total),
                                   tf.math.is_finite(stats["grad_norm"]),
                                   tf.math.is_finite(stats["grad_norm_clipped"])]))


# Plain Python around TF ops (its one branch on a tensor is an explicit tf.cond), traced as
# written: AutoGraph converting it and everything it calls cost most of the first call.
@tf.autograph.experimental.do_not_convert
def _attempt(variant: Variant, batch):
    """One update of one variant: (applied?, series values, per-variable norms before/after)."""
    variables = variant.model.trainable_variables
    lr = variant.lr_at(variant.optimizer.iterations)
    with tf.GradientTape() as tape:
        objective, reported, commit = variant.objective(variant.model, batch)
        penalty = regularizers.penalty(variables, variant.regularizer)
        total = objective + penalty
    # An embedding's gradient is IndexedSlices; clipping and the guard want dense tensors.
    grads = [tf.convert_to_tensor(g) for g in tape.gradient(total, variables)]
    clipped, stats = clipping.clip(grads, variant.clipping)
    finite = _all_finite(total, stats)

    def apply():
        variant.optimizer.apply(clipped, variables)
        commit()
        return tf.constant(True)

    # Divergence guard: an update with a NaN/Inf loss or gradient is never applied.
    applied = tf.cond(finite, apply, lambda: tf.constant(False))
    values = (reported, penalty, lr, stats["grad_norm"], stats["grad_norm_clipped"],
              stats["clip_fraction"])
    return applied, [tf.cast(v, tf.float32) for v in values], \
        stats["var_norms"], stats["var_norms_clipped"]


def make_train_steps(variant: Variant, capacity: int, jit_compile: bool = False):
    """`train_steps(k)` -> Interval: up to k (<= capacity) updates of `variant` in one call.

    `capacity` fixes the TensorArrays' size, so the function is traced once (and can be
    XLA-compiled). The call returns when k steps are done or an update was refused.
    """
    variant.optimizer.build(variant.model.trainable_variables)  # slots exist before tracing
    count = len(variant.model.trainable_variables)

    @tf.function(jit_compile=jit_compile)
    def train_steps(k):
        series = [tf.TensorArray(tf.float32, size=capacity, element_shape=()) for _ in SERIES]
        norms = [tf.TensorArray(tf.float32, size=capacity, element_shape=(count,))
                 for _ in range(2)]
        i, applied = tf.constant(0), tf.constant(True)
        while i < k and applied:
            applied, values, before, after = _attempt(variant, variant.batches.next())
            series = [ta.write(i, x) for ta, x in zip(series, values)]
            norms = [norms[0].write(i, before), norms[1].write(i, after)]
            i += 1
        done = i - tf.cast(tf.logical_not(applied), tf.int32)  # updates actually applied
        return done, applied, [ta.stack() for ta in series], [ta.stack() for ta in norms]

    def call(k: int) -> Interval:
        done, applied, series, (before, after) = train_steps(tf.constant(k))
        done = int(done)
        return Interval(applied=done, diverged=not bool(applied),
                        series={name: s.numpy()[:done] for name, s in zip(SERIES, series)},
                        var_norms=before.numpy()[:done], var_norms_clipped=after.numpy()[:done])

    return call


def record_interval(history, tracked, interval: Interval, first_step: int, log_every: int,
                    variable_names: List[str]) -> None:
    """One call's per-step series (steps first_step+1...) and the last step's per-variable
    gradient norms (seed 002's g-w1, g-b1, ...) into the history and the job's MLflow run."""
    for name, values in interval.series.items():
        steps = np.arange(first_step + 1, first_step + len(values) + 1)
        history[name].extend(zip(steps.tolist(), values.tolist()))
        keep = steps % log_every == 0
        tracked.log_series(name, steps[keep], values[keep])
    if interval.applied:
        step = first_step + interval.applied
        before = dict(zip(variable_names, interval.var_norms[-1].tolist()))
        after = dict(zip(variable_names, interval.var_norms_clipped[-1].tolist()))
        history["var_norms"].append((step, before))
        history["var_norms_clipped"].append((step, after))
        tracked.log_metrics({**{f"grad_norm/{k}": v for k, v in before.items()},
                             **{f"grad_norm_clipped/{k}": v for k, v in after.items()}}, step)


class Stopwatch:
    """Wall time per phase of a job (setup, trace, train, eval, tracking, plots), logged as
    `time/<phase>` so a sweep's per-job overhead can be read off the store."""

    def __init__(self):
        self.seconds: Dict[str, float] = {}
        self.first_call: Optional[float] = None

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def train_call(self, seconds: float, steps: int) -> None:
        """A training call; the first one also traces (what it costs beyond its steps)."""
        if self.first_call is None:
            self.first_call = (seconds, steps)
        else:
            self.add("train", seconds)
            self.seconds["_train_steps"] = self.seconds.get("_train_steps", 0) + steps

    def summary(self) -> Dict[str, float]:
        out = {k: v for k, v in self.seconds.items() if not k.startswith("_")}
        if self.first_call is not None:
            seconds, steps = self.first_call
            later_steps = self.seconds.get("_train_steps", 0)
            per_step = out.get("train", 0.0) / later_steps if later_steps else 0.0
            trace = max(0.0, seconds - steps * per_step)
            out["trace"] = trace
            out["train"] = out.get("train", 0.0) + seconds - trace
        return {f"time/{k}": v for k, v in out.items()}
