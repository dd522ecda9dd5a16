"""The training engine: ONE gradient path for every task, over a leading job axis.

A task (image classification, language model) hands the engine a network seen as N jobs
(runner/nets.py: one Keras model is N = 1, a stacked network N > 1), the jobs' `Update`
(optimizer, lr schedules, clipping, penalties: per-job vectors from their configs), a batch
source and an objective, and gets back `train_steps(k)`: one `tf.function` call that runs up
to k updates and returns each job's per-step series. Per step, for all N jobs at once:

    batch -> objective + penalty -> gradients -> clip -> guard -> update -> series

The guard applies a job's update only when its loss *and every gradient* are finite; a refused
job is `diverged` at that step and trains no further, while the others go on exactly as they
would without it. Solo and stacked runs share every line of this: what may differ between two
jobs of one graph is declared in runner.tasks.STACKS.
"""
import logging
import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from runner import clipping, optim, regularizers


class OneTracePerGraph(logging.Filter):
    """Drops TensorFlow's "N out of the last M calls ... triggered tf.function retracing".

    Every graph of a sweep traces its own training loop and evaluation once, by design; a
    process that trains several graphs one after another (a worker, or the launching process)
    makes TensorFlow count those first traces together, as if one function kept retracing,
    and print a 7-line warning about misuse into the sweep's output. Each job's `time/trace`
    metric shows what tracing costs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


logging.getLogger("tensorflow").addFilter(OneTracePerGraph())

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
class Interval:
    """What one job did in one call of `train_steps`."""
    applied: int  # updates applied in this call
    diverged: bool  # its last attempted update had a NaN/Inf loss or gradient (not applied)
    series: Dict[str, np.ndarray]  # SERIES name -> [applied] per-step values
    var_norms: np.ndarray  # [applied, variables] gradient norm per variable, before clipping
    var_norms_clipped: np.ndarray  # ... after clipping


@dataclass
class Update:
    """What turns the jobs' gradients into new weights: their optimizer, lr schedules,
    clipping and penalties, each job's options as per-job vectors (from its config nodes)."""
    optimizer: optim.Optimizer
    schedules: List[Callable]  # job j's step -> lr
    clipping: clipping.ClipTable
    penalties: regularizers.PenaltyTable


def make_update(net, cfgs: Sequence, steps_per_epoch: int, steps: int) -> Update:
    """The jobs' Update from their configs (jobs of one graph share the data's epoch length
    and the step budget: their lr schedules' clock)."""
    schedules = [optim.schedule(cfg.lr_schedule, cfg.optimizer.lr, steps_per_epoch, steps)
                 for cfg in cfgs]
    return Update(optimizer=optim.Optimizer([c.optimizer for c in cfgs], net.variables,
                                            net.view, net.write),
                  schedules=schedules,
                  clipping=clipping.ClipTable([c.clipping for c in cfgs]),
                  penalties=regularizers.PenaltyTable([c.regularizer for c in cfgs]))


def make_train_steps(net, update: Update, batches, objective: Callable, capacity: int,
                     jit_compile: bool = False):
    """`train_steps(k)` -> [Interval per job]: up to k (<= capacity) updates in one call.

    `batches.next()` draws the next batch on the graph. `objective(net, batch)` returns
    ([N] objective to minimise, [N] loss to report per example, commit) where `commit(mask)`
    applies the step's side effects (e.g. carried LSTM state) for the jobs whose update was
    applied. `capacity` fixes the TensorArrays' size, so the function is traced once (and can
    be XLA-compiled). The call returns when k steps are done or every job has diverged.
    """
    n, n_vars = net.n, len(net.variables)
    alive = tf.Variable(tf.ones([n], tf.bool), trainable=False, name="alive")

    # Plain Python around TF ops, traced as written: AutoGraph converting the step and
    # everything it calls was ~70% of the first call's time.
    def step():
        batch = batches.next()
        lr = optim.job_rates(update.schedules, update.optimizer.iterations)
        with tf.GradientTape() as tape:
            loss, reported, commit = objective(net, batch)
            penalty = regularizers.penalty([net.view(v) for v in net.variables],
                                           update.penalties)
            total = loss + penalty
            # Jobs are independent: the gradient of the sum is each job's own gradient.
            summed = tf.reduce_sum(total)
        grads = [net.view(g) for g in tape.gradient(summed, net.variables)]
        clipped, stats = clipping.clip(grads, update.clipping)
        # The divergence guard: an update with a NaN/Inf loss or gradient is never applied.
        # A norm that overflows float32 counts as non-finite too: clip_by_global_norm would
        # turn such gradients into NaN.
        finite = (tf.math.is_finite(total) & tf.math.is_finite(stats["grad_norm"])
                  & tf.math.is_finite(stats["grad_norm_clipped"]))
        applied = alive & finite
        update.optimizer.apply(clipped, lr, applied)
        commit(applied)
        alive.assign(applied)
        values = (reported, penalty, lr, stats["grad_norm"], stats["grad_norm_clipped"],
                  stats["clip_fraction"])
        return applied, values, stats["var_norms"], stats["var_norms_clipped"]

    # An explicit while_loop and no AutoGraph: converting the loop (and what it calls) cost
    # ~1 s of every graph's first call.
    @tf.function(jit_compile=jit_compile, autograph=False)
    def train_steps(k):
        def more(i, applied, series, norms):
            return (i < k) & tf.reduce_any(alive)

        def body(i, applied, series, norms):
            now, values, before, after = step()
            series = [ta.write(i, tf.cast(v, tf.float32)) for ta, v in zip(series, values)]
            norms = [norms[0].write(i, before), norms[1].write(i, after)]
            return i + 1, applied + tf.cast(now, tf.int32), series, norms

        series = [tf.TensorArray(tf.float32, size=capacity, element_shape=(n,)) for _ in SERIES]
        norms = [tf.TensorArray(tf.float32, size=capacity, element_shape=(n, n_vars))
                 for _ in range(2)]
        _, applied, series, norms = tf.while_loop(
            more, body, (tf.constant(0), tf.zeros([n], tf.int32), series, norms))
        return applied, alive.read_value(), [ta.stack() for ta in series], \
            [ta.stack() for ta in norms]

    def call(k: int) -> List[Interval]:
        was_alive = alive.numpy()
        applied, now_alive, series, norms = train_steps(tf.constant(k))
        applied, now_alive = applied.numpy(), now_alive.numpy()
        series = [s.numpy() for s in series]
        before, after = (x.numpy() for x in norms)
        return [Interval(applied=int(applied[j]), diverged=bool(was_alive[j] and not now_alive[j]),
                         series={name: s[:applied[j], j] for name, s in zip(SERIES, series)},
                         var_norms=before[:applied[j], j], var_norms_clipped=after[:applied[j], j])
                for j in range(n)]

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
