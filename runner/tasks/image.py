"""Image classification (seeds 000-003), top to bottom: one job, or several that train side by side.

config -> data -> model(s) -> schedule/optimizer -> engine (compiled multi-step loop) with an
evaluation every `train.eval_every` steps -> test -> metrics, plots, MLflow. The task supplies
what is particular to images: shuffled batches drawn on the graph, the loss, the evaluation.
`run_variants` trains jobs whose configs differ only in values that keep the graph's shapes
(optimizer, clipping, regularizer, schedule numbers) in one compiled call; each job still gets
its own MLflow run with exactly what it would get alone.
"""
import logging
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf

import models
from runner import data, optim, plots, progress, stacked
from runner.config import ConfigError
from runner.outcome import classify
from runner.loop import (Stopwatch, Variant, configure_threads, make_train_steps,
                         record_interval, seed_everything)
from runner.tasks import IMAGE, TAG_TASK
from runner.tracking import JobContext, TrackedRun

log = logging.getLogger(__name__)
# Every evaluation's line: to the job's log file (conf/hydra/job_logging), not the console.
steps_log = logging.getLogger("sweeplab.steps")

# Per-example losses; `data_loss` reduces them over the batch as train.loss_reduction says.
PER_EXAMPLE_LOSSES = {
    "cross_entropy": lambda labels, logits: tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=logits),
    # Seed 002: squared error against one-hot labels, averaged over classes.
    "mse": lambda labels, logits: tf.reduce_mean(
        tf.square(tf.one_hot(labels, tf.shape(logits)[-1]) - logits), axis=-1),
    # Seed 001's hand-written loss: log(softmax) is -inf once a probability underflows, so
    # a badly initialised net yields NaN exactly as in the write-up.
    "cross_entropy_naive": lambda labels, logits: -tf.reduce_sum(
        tf.one_hot(labels, tf.shape(logits)[-1]) * tf.math.log(tf.nn.softmax(logits)), axis=-1),
}


@dataclass(frozen=True)
class Plan:
    """Numbers derived once from the config and the data (the config stays read-only)."""
    steps: int
    steps_per_epoch: int


def plan(train_cfg, n_train: int) -> Plan:
    if train_cfg.batch_size > n_train:
        raise ConfigError(f"train.batch_size: {train_cfg.batch_size} is larger than the "
                          f"{n_train} training examples; use a smaller batch")
    per_epoch = n_train // train_cfg.batch_size
    return Plan(steps=train_cfg.epochs * per_epoch if train_cfg.epochs else train_cfg.steps,
                steps_per_epoch=per_epoch)


class ShuffledBatches:
    """Batches drawn on the graph from in-memory tensors, epoch by epoch without replacement."""

    def __init__(self, split, batch_size: int, seed: int):
        self.x, self.y = tf.constant(split.x), tf.constant(split.y)
        self.n, self.batch = len(split.y), batch_size
        self.rng = tf.random.Generator.from_seed(seed)
        self.order = tf.Variable(tf.argsort(self.rng.uniform([self.n])), trainable=False)
        self.cursor = tf.Variable(0, trainable=False)

    def next(self):
        def reshuffle():  # epoch done
            self.order.assign(tf.argsort(self.rng.uniform([self.n])))
            self.cursor.assign(0)
            return tf.constant(True)
        # An explicit cond: the training step is traced without AutoGraph (runner.loop).
        tf.cond(self.cursor + self.batch > self.n, reshuffle, lambda: tf.constant(False))
        # A gather, not a variable-bounded slice: that slice hangs XLA's compiler.
        idx = tf.gather(self.order, self.cursor + tf.range(self.batch))
        self.cursor.assign_add(self.batch)
        return tf.gather(self.x, idx), tf.gather(self.y, idx)


def loss_fn(train_cfg):
    """(labels, logits) -> scalar loss for cfg.train (`loss`, `loss_reduction`)."""
    per_example = PER_EXAMPLE_LOSSES[train_cfg.loss]
    reduce = tf.reduce_sum if train_cfg.loss_reduction == "sum" else tf.reduce_mean
    return lambda labels, logits: reduce(per_example(labels, logits))


def objective(train_cfg):
    """(model, batch) -> (objective, loss per example, commit) for cfg.train's loss."""
    data_loss = loss_fn(train_cfg)
    per_example_divisor = float(train_cfg.batch_size) if train_cfg.loss_reduction == "sum" else 1.0

    def fn(model, batch):
        x, y = batch
        total = data_loss(y, model(x, training=True))
        # Reported per example whatever the reduction, like val_loss.
        return total, total / per_example_divisor, tf.no_op
    return fn


def make_evaluate(train_cfg, model):
    """(x, y) -> (mean loss, accuracy), in chunks of `eval_batch_size` to bound memory."""
    per_example = PER_EXAMPLE_LOSSES[train_cfg.loss]

    @tf.function(reduce_retracing=True)
    def chunk(x, y):
        logits = model(x, training=False)
        correct = tf.reduce_sum(tf.cast(tf.argmax(logits, -1, output_type=tf.int32) == y,
                                        tf.float32))
        return tf.reduce_sum(per_example(y, logits)), correct

    def evaluate(x, y):
        loss_sum = correct = 0.0
        for start in range(0, len(y), train_cfg.eval_batch_size):
            stop = start + train_cfg.eval_batch_size
            l, c = chunk(tf.constant(x[start:stop]), tf.constant(y[start:stop]))
            loss_sum, correct = loss_sum + float(l), correct + float(c)
        return loss_sum / len(y), correct / len(y)

    return evaluate


def eval_window(val, size, index):
    """The index-th window of `size` validation examples, wrapping (like next_batch(size))."""
    if size is None or size >= len(val.y):
        return val.x, val.y
    idx = (index * size + np.arange(size)) % len(val.y)
    return val.x[idx], val.y[idx]


@dataclass
class Job:
    """One job in the loop: its config, model, run and what it has done so far."""
    cfg: object
    model: object  # its Keras model (holds its final weights after training)
    variable_names: List[str]
    tracked: TrackedRun
    history: dict = field(default_factory=lambda: defaultdict(list))
    step: int = 0
    diverged_at: Optional[int] = None
    label: str = ""  # prefix of its progress lines when several jobs train together
    log: logging.Logger = steps_log

    @property
    def alive(self) -> bool:
        return self.diverged_at is None


def build_variant(cfg, splits, plan_: Plan, batches) -> Variant:
    """A job's model (its seed's initial weights, as when it runs alone) and its optimizer."""
    seed_everything(cfg.seed)
    model = models.build(cfg.model, splits.info)
    lr_at = optim.schedule(cfg.lr_schedule, cfg.optimizer.lr, plan_.steps_per_epoch, plan_.steps)
    return Variant(model=model, optimizer=optim.optimizer(cfg.optimizer, lr_at), lr_at=lr_at,
                   clipping=cfg.clipping, regularizer=cfg.regularizer, batches=batches,
                   objective=objective(cfg.train))


def run(cfg, job: JobContext) -> float:
    """Train, evaluate and track one configuration; return the last validation loss."""
    return run_variants([cfg], [job])[0]


def run_group(cfgs: Sequence, contexts: Sequence[JobContext]) -> List[float]:
    return run_variants(cfgs, contexts)


def run_variants(cfgs: Sequence, contexts: Sequence[JobContext]) -> List[float]:
    """Train jobs that share dataset, seed, model and train settings side by side.

    One job trains its Keras model in runner.loop's engine; several train as one stacked
    network (runner.stacked). Returns each job's last validation loss (inf if it diverged).
    """
    watch = Stopwatch()
    started = time.perf_counter()
    first = cfgs[0]
    configure_threads(first.train)
    splits = data.load(first.dataset, first.seed)
    plan_ = plan(first.train, len(splits.train.y))
    batches = ShuffledBatches(splits.train, first.train.batch_size, first.seed)
    variants = [build_variant(cfg, splits, plan_, batches) for cfg in cfgs]
    train_steps, evaluate, names = engine(cfgs, variants, batches)
    log.info("%s on %s (%d train / %d val / %d test), %s params, %d steps of batch %d%s",
             first.model.name, splits.info.source, len(splits.train.y), len(splits.val.y),
             len(splits.test.y), f"{variants[0].model.count_params():,}", plan_.steps,
             first.train.batch_size, f", {len(cfgs)} jobs stacked" if len(cfgs) > 1 else "")
    tags = {"dataset.source": splits.info.source, TAG_TASK: IMAGE.name}
    with ExitStack() as stack:
        jobs = []
        for cfg, context, variant in zip(cfgs, contexts, variants):
            tracked = stack.enter_context(TrackedRun(cfg, context, tags))
            tracked.log_derived({"steps": plan_.steps, "steps_per_epoch": plan_.steps_per_epoch})
            jobs.append(Job(cfg, variant.model, names, tracked,
                            label=f"[{tracked.name}] " if len(cfgs) > 1 else "",
                            log=logging.getLogger(context.logger_name or steps_log.name)))
            progress.reporter().job_started(id(tracked), tracked.name, plan_.steps)
        watch.add("setup", time.perf_counter() - started)
        fit(first.train, plan_, train_steps, evaluate, jobs, splits.val, watch)
        train_steps.finish()
        started = time.perf_counter()
        tests = evaluate(splits.test.x, splits.test.y)
        watch.add("eval", time.perf_counter() - started)
        for job, test in zip(jobs, tests):
            finish(job, test, splits.info, watch, share=len(jobs))
    return [float("inf") if not job.alive or not job.history["val_loss"]
            else job.history["val_loss"][-1][1] for job in jobs]


def engine(cfgs, variants: List[Variant], batches):
    """(train_steps, evaluate(x, y) -> [(loss, acc) per job], variable names) for the jobs.

    `train_steps.finish()` leaves each job's trained weights in its own Keras model.
    """
    train_cfg = cfgs[0].train
    if len(variants) == 1:
        (variant,) = variants
        one = make_train_steps(variant, capacity=train_cfg.eval_every,
                               jit_compile=train_cfg.jit_compile)

        def train_steps(k):
            return [one(k)]
        train_steps.finish = lambda: None  # the Keras model trained in place
        single = make_evaluate(train_cfg, variant.model)
        return train_steps, lambda x, y: [single(x, y)], variant.variable_names
    net = stacked.StackedNet([v.model for v in variants])
    per_example = PER_EXAMPLE_LOSSES[train_cfg.loss]
    train_steps = stacked.make_train_steps(net, cfgs, [v.lr_at for v in variants], batches,
                                           per_example, capacity=train_cfg.eval_every,
                                           jit_compile=train_cfg.jit_compile)
    train_steps.finish = net.write_back
    return train_steps, stacked.make_evaluate(net, train_cfg, per_example), net.names


def fit(train_cfg, plan_: Plan, train_steps, evaluate, jobs: List[Job], val,
        watch: Stopwatch) -> None:
    """Alternate compiled training intervals and evaluations until done or every job diverged.

    A job's `diverged_at` is the first step whose loss or gradients were NaN/Inf; that update
    was not applied, and the job trains no further while the others go on.
    """
    evals, step = 0, 0

    def evaluate_all():
        started = time.perf_counter()
        results = evaluate(*eval_window(val, train_cfg.eval_size, evals))
        for job, (val_loss, val_acc) in zip(jobs, results):
            if job.alive:
                job.history["val_loss"].append((job.step, val_loss))
                job.history["val_acc"].append((job.step, val_acc))
                job.tracked.log_metrics({"val_loss": val_loss, "val_acc": val_acc}, job.step)
        watch.add("eval", time.perf_counter() - started)

    evaluate_all()  # step 0: where every curve starts
    while step < plan_.steps and any(job.alive for job in jobs):
        k = min(train_cfg.eval_every, plan_.steps - step)
        started = time.perf_counter()
        intervals = train_steps(k)
        watch.train_call(time.perf_counter() - started, k)
        for job, interval in zip(jobs, intervals):
            if not job.alive:
                continue
            record_interval(job.history, job.tracked, interval, job.step, train_cfg.log_every,
                            job.variable_names)
            job.step += interval.applied
            if interval.diverged:
                job.diverged_at = job.step + 1
                log.warning("%sdiverged at step %d (loss or gradient NaN/Inf): update not "
                            "applied, run stopped, marked diverged", job.label, job.diverged_at)
        step += k
        evals += 1
        evaluate_all()
        for job, interval in zip(jobs, intervals):
            if job.alive:
                train_loss = float(np.mean(interval.series["train_loss"]))
                progress.reporter().job_step(id(job.tracked), job.step, train_loss,
                                             job.history["val_acc"][-1][1])
                job.log.info("%sstep %*d/%d  train_loss %.4f  val_loss %.4f  val_acc %.4f  lr %.3g",
                         job.label, len(str(plan_.steps)), job.step, plan_.steps, train_loss,
                         job.history["val_loss"][-1][1], job.history["val_acc"][-1][1],
                         interval.series["lr"][-1])


# The report ranks configs by the mean of the last TAIL_EVALS validation losses
# (`val_loss_tail`): ten 100-example windows are 1000 digits, one window alone is too noisy.
TAIL_EVALS = 10


def tail_summary(val_loss):
    """`val_loss_tail`: the mean of the last TAIL_EVALS evaluations' val_loss."""
    if not val_loss:
        return {}
    return {"val_loss_tail": float(np.mean([value for _, value in val_loss[-TAIL_EVALS:]]))}


def accuracy_summary(val_acc):
    """Best validation accuracy, its step and final - best: shows 'peaked, then fell'."""
    if not val_acc:
        return {}
    best_step, best = max(val_acc, key=lambda point: point[1])
    return {"best_val_acc": best, "best_val_acc_step": best_step,
            "final_minus_best_val_acc": val_acc[-1][1] - best}


def kernels(model):
    """Weight matrices and conv kernels by variable path (biases and norm scales left out)."""
    return {v.path: v.numpy() for v in model.trainable_variables if len(v.shape) > 1}


def weight_summary(weights):
    """Per weight matrix: mean |w| and the share of |w| < 1e-3 (does L2 sparsify?)."""
    summary = {}
    for name, w in weights.items():
        magnitude = np.abs(w)
        summary[f"weights/{name}/mean_abs"] = float(magnitude.mean())
        summary[f"weights/{name}/small_share"] = float((magnitude < 1e-3).mean())
    return summary


def finish(job: Job, test, info, watch: Stopwatch, share: int) -> None:
    """Final metrics, outcome, plots: what ends one job's run. `test`: its (loss, accuracy)."""
    weights = kernels(job.model)
    final = {**accuracy_summary(job.history["val_acc"]), **weight_summary(weights)}
    if job.alive:
        final.update(tail_summary(job.history["val_loss"]))
        final["test_loss"], final["test_acc"] = test
        job.log.info("%stest loss %.4f, test acc %.4f", job.label, *test)
    else:
        final["diverged_at_step"] = job.diverged_at
    timings = watch.summary()
    # Jobs trained side by side share every training call: each is charged its share of the
    # time, and its steps per second are those of the shared calls.
    train_seconds = timings.get("time/train", 0.0) + timings.get("time/trace", 0.0)
    final["train_seconds"] = train_seconds / share
    final["steps_per_second"] = job.step / max(train_seconds, 1e-9)
    val_loss = job.history["val_loss"]
    outcome = classify(not job.alive, first_val_loss=val_loss[0][1] if val_loss else None,
                       final_val_loss=val_loss[-1][1] if val_loss else None,
                       test_acc=final.get("test_acc"), num_classes=info.num_classes)
    started = time.perf_counter()
    job.tracked.finish(final, outcome=outcome)
    tracking_seconds = time.perf_counter() - started
    started = time.perf_counter()
    log_figures(job.cfg.plots, job.history, weights, job.tracked)
    plot_seconds = time.perf_counter() - started
    shared = {k: v / share for k, v in timings.items()}
    job.tracked.log_metrics({**shared, "time/tracking": tracking_seconds,
                             "time/plots": plot_seconds}, step=0)
    job.tracked.flush()
    summary = (f"val_loss {val_loss[-1][1]:.4f}, test_acc {final['test_acc']:.4f}"
               if job.alive else f"diverged at step {job.diverged_at}")
    progress.reporter().job_finished(id(job.tracked), outcome, summary)


def log_figures(cfg, history, weights, tracked):
    """The run's PNGs: curves (also without the first evaluations), gradient norms, weights."""
    tracked.log_figure(plots.curves(history), "curves.png", plots.PNG)
    if cfg.skip_first > 0:
        tracked.log_figure(plots.curves(history, skip_first=cfg.skip_first),
                           f"curves_skip{cfg.skip_first}.png", plots.PNG)
    tracked.log_figure(plots.grad_norms(history), "grad_norms.png", plots.PNG)
    if history["var_norms"]:
        tracked.log_figure(plots.grad_norms_per_variable(history), "grad_norms_per_variable.png",
                           plots.PNG)
    tracked.log_figure(plots.weight_images(weights), "weights.png", plots.PNG)
