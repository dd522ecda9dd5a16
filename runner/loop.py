"""The training engine: one compiled multi-step loop for every task, for one model or several.

A task (image classification, language model) hands the engine a list of *variants* — a
model with its optimizer, lr schedule, clipping and penalty, a batch source and an objective —
and gets back `train_steps(k)`: one `tf.function` call that runs up to k updates of every
variant and returns each variant's per-step series. Per step and variant:

    batch -> objective + penalty -> gradients -> guard -> clip -> apply -> series

The guard applies an update only when the loss *and every gradient* are finite; a variant whose
update is refused stops there (`diverged`) while the others go on. Variants live side by side in
one graph (the loop body is unrolled over them), so a sweep's jobs that share their shapes train
in one call; a single run is one variant.
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


def make_train_steps(variants: List[Variant], capacity: int, jit_compile: bool = False):
    """`train_steps(k)` -> [Interval per variant]: up to k (<= capacity) updates in one call.

    `capacity` fixes the TensorArrays' size, so the function is traced once (and can be
    XLA-compiled). The call returns when k steps are done or every variant has diverged.
    """
    sources = list({id(v.batches): v.batches for v in variants}.values())
    source_of = [sources.index(v.batches) for v in variants]
    counts = [len(v.model.trainable_variables) for v in variants]
    for variant in variants:  # slots exist before tracing: no variable is created in the loop
        variant.optimizer.build(variant.model.trainable_variables)

    def skipped(v):
        zeros = tf.zeros((counts[v],))
        return tf.constant(False), [tf.constant(0.0)] * len(SERIES), zeros, zeros

    @tf.function(jit_compile=jit_compile)
    def train_steps(k):
        n = len(variants)
        series = [[tf.TensorArray(tf.float32, size=capacity, element_shape=())
                   for _ in SERIES] for _ in range(n)]
        norms = [[tf.TensorArray(tf.float32, size=capacity, element_shape=(counts[v],))
                  for _ in range(2)] for v in range(n)]
        alive = [tf.constant(True)] * n
        applied = [tf.constant(0)] * n
        i = tf.constant(0)
        while i < k and tf.reduce_any(tf.stack(alive)):
            batches = [source.next() for source in sources]
            new_alive, new_applied, new_series, new_norms = [], [], [], []
            for v, variant in enumerate(variants):
                ok, values, before, after = tf.cond(
                    alive[v], lambda variant=variant, v=v: _attempt(variant, batches[source_of[v]]),
                    lambda v=v: skipped(v))
                new_alive.append(ok)
                new_applied.append(applied[v] + tf.cast(ok, tf.int32))
                new_series.append([ta.write(i, x) for ta, x in zip(series[v], values)])
                new_norms.append([norms[v][0].write(i, before), norms[v][1].write(i, after)])
            alive, applied, series, norms = new_alive, new_applied, new_series, new_norms
            i += 1
        return (tf.stack(applied), tf.stack(alive),
                [[ta.stack() for ta in s] for s in series],
                [[ta.stack() for ta in n] for n in norms])

    def call(k: int) -> List[Interval]:
        applied, alive, series, norms = train_steps(tf.constant(k))
        applied, alive = applied.numpy(), alive.numpy()
        intervals = []
        for v in range(len(variants)):
            done = int(applied[v])
            intervals.append(Interval(
                applied=done, diverged=not bool(alive[v]),
                series={name: s.numpy()[:done] for name, s in zip(SERIES, series[v])},
                var_norms=norms[v][0].numpy()[:done], var_norms_clipped=norms[v][1].numpy()[:done]))
        return intervals

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
