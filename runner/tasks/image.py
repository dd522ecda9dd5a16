"""Image classification (seeds 000-003), top to bottom: one job, or several in one graph.

plan -> data (each job's seed: its split and batch order) -> models (each job's seed: its
initial weights) -> the engine (runner/engine.py: one compiled multi-step loop, the same for
one job or N) with an evaluation every `train.eval_every` steps -> test -> metrics, plots,
MLflow. The task supplies what is particular to images: shuffled batches drawn on the graph,
the loss and the evaluation, each written once over the jobs' leading axis.

Jobs that differ only in what runner.tasks.STACKS declares (optimizer values, clipping,
regularizer, lr schedule, seed) train in one graph when their model can stack
(runner.nets.stack_reason); otherwise each trains in its own graph, one after another, and
the log says why. Each job gets its own MLflow run with exactly what it would get alone.
"""
import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import List, Sequence

import numpy as np
import tensorflow as tf

import models
from runner import data, engine, plots, progress, tags
from runner.config import ConfigError
from runner.engine import Stopwatch, configure_threads, seed_everything
from runner.nets import KerasNet, StackedNet, stack_reason
from runner.outcome import classify
from runner.tasks import IMAGE
from runner.tasks.common import Job, advance, close_job, open_jobs
from runner.tracking import JobContext

log = logging.getLogger(__name__)

# Per-example losses over [N, B] labels and [N, B, classes] logits; the objective reduces
# them over the batch as train.loss_reduction says.
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
        # An explicit cond: the training step is traced without AutoGraph (runner.engine).
        tf.cond(self.cursor + self.batch > self.n, reshuffle, lambda: tf.constant(False))
        # A gather, not a variable-bounded slice: that slice hangs XLA's compiler.
        idx = tf.gather(self.order, self.cursor + tf.range(self.batch))
        self.cursor.assign_add(self.batch)
        return tf.gather(self.x, idx), tf.gather(self.y, idx)


class JobBatches:
    """One batch per job, [N, B, ...], each from its own split in its own seed's order (jobs
    of one graph whose seeds differ)."""

    def __init__(self, sources: Sequence[ShuffledBatches]):
        self.sources = list(sources)

    def next(self):
        xs, ys = zip(*(source.next() for source in self.sources))
        return tf.stack(xs), tf.stack(ys)


def same_data(cfgs) -> bool:
    """Every job draws the same split and batches (one seed): inputs are shared, not per job."""
    return len({cfg.seed for cfg in cfgs}) == 1


def batch_source(cfgs, splits):
    """The jobs' batches: shared [B, ...] when they have one seed, else [N, B, ...]."""
    batch = cfgs[0].train.batch_size
    if same_data(cfgs):
        return ShuffledBatches(splits[0].train, batch, cfgs[0].seed)
    return JobBatches([ShuffledBatches(s.train, batch, cfg.seed) for cfg, s in zip(cfgs, splits)])


def _labels_like(y, logits):
    """[B] labels shared by every job -> [N, B]; per-job [N, B] labels as they are."""
    return y if y.shape.rank == 2 else tf.broadcast_to(y, tf.shape(logits)[:2])


def objective(train_cfg):
    """(net, batch) -> ([N] objective, [N] loss per example, commit) for cfg.train's loss."""
    per_example = PER_EXAMPLE_LOSSES[train_cfg.loss]
    reduce = tf.reduce_sum if train_cfg.loss_reduction == "sum" else tf.reduce_mean
    per_example_divisor = float(train_cfg.batch_size) if train_cfg.loss_reduction == "sum" else 1.0

    def fn(net, batch):
        x, y = batch
        logits = net(x, training=True)
        total = reduce(per_example(_labels_like(y, logits), logits), axis=1)
        # Reported per example whatever the reduction, like val_loss.
        return total, total / per_example_divisor, lambda applied: None
    return fn


def make_evaluate(train_cfg, net):
    """(x, y) -> [(mean loss, accuracy) per job], in chunks of `eval_batch_size` to bound
    memory. x, y are shared ([E, ...], [E]) or per job ([N, E, ...], [N, E])."""
    per_example = PER_EXAMPLE_LOSSES[train_cfg.loss]

    # No AutoGraph: the network is plain Python over static shapes; converting it was ~1.8 s
    # of every graph's first evaluation.
    @tf.function(reduce_retracing=True, autograph=False)
    def chunk(x, y):
        logits = net(x, training=False)
        labels = _labels_like(y, logits)
        correct = tf.reduce_sum(tf.cast(tf.argmax(logits, -1, output_type=tf.int32) == labels,
                                        tf.float32), 1)
        return tf.reduce_sum(per_example(labels, logits), 1), correct

    def evaluate(x, y):
        count = y.shape[-1]
        loss_sum, correct = np.zeros(net.n), np.zeros(net.n)
        for start in range(0, count, train_cfg.eval_batch_size):
            stop = start + train_cfg.eval_batch_size
            part = slice(start, stop)
            l, c = (chunk(tf.convert_to_tensor(x[:, part]), tf.convert_to_tensor(y[:, part]))
                    if y.ndim == 2 else
                    chunk(tf.convert_to_tensor(x[part]), tf.convert_to_tensor(y[part])))
            loss_sum, correct = loss_sum + l.numpy(), correct + c.numpy()
        return [(float(l) / count, float(c) / count) for l, c in zip(loss_sum, correct)]

    return evaluate


def eval_windows(cfgs, splits, size):
    """index -> the jobs' index-th window of `size` validation examples, wrapping (like
    next_batch(size)). The validation sets go to TensorFlow once; a window is a gather."""
    x, y = job_arrays(cfgs, [(s.val.x, s.val.y) for s in splits])
    x, y = tf.constant(x), tf.constant(y)
    count = y.shape[-1]
    axis = y.shape.rank - 1  # the example axis: 0 shared, 1 per job

    def window(index):
        if size is None or size >= count:
            return x, y
        idx = (index * size + np.arange(size)) % count
        return tf.gather(x, idx, axis=axis), tf.gather(y, idx, axis=axis)
    return window


def job_arrays(cfgs, parts):
    """The jobs' (x, y) of one split: shared arrays for one seed, else stacked per job."""
    if same_data(cfgs):
        return parts[0]
    return np.stack([x for x, _ in parts]), np.stack([y for _, y in parts])


def build_models(cfgs, info) -> list:
    """Each job's Keras model, with its seed's initial weights (as when it runs alone)."""
    built = []
    for cfg in cfgs:
        seed_everything(cfg.seed)
        built.append(models.build(cfg.model, info))
    return built


def run(cfg, job: JobContext) -> float:
    """Train, evaluate and track one configuration; return the last validation loss."""
    return run_group([cfg], [job])[0]


@dataclass
class Graph:
    """The jobs' data, models and compiled engine, ready to train."""
    splits: list  # each job's Splits (its seed's)
    plan: Plan
    models: list  # each job's Keras model
    net: object  # runner.nets.KerasNet (one job) or StackedNet
    train_steps: object  # k -> [Interval per job]
    evaluate: object  # (x, y) -> [(loss, accuracy) per job]


def prepare(cfgs):
    """Each job's data (its seed's split), the shared plan, and each job's model."""
    splits = [data.load(cfg.dataset, cfg.seed) for cfg in cfgs]
    plan_ = plan(cfgs[0].train, len(splits[0].train.y))
    return splits, plan_, build_models(cfgs, splits[0].info)


def build(cfgs) -> Graph:
    """Data, models and the engine for jobs that train in one graph (the caller checked they
    can: one job, or a model whose stack_reason is None)."""
    return assemble(cfgs, *prepare(cfgs))


def assemble(cfgs, splits, plan_: Plan, built) -> Graph:
    first = cfgs[0]
    net = KerasNet(built[0]) if len(cfgs) == 1 else StackedNet(built)
    update = engine.make_update(net, cfgs, plan_.steps_per_epoch, plan_.steps)
    train_steps = engine.make_train_steps(net, update, batch_source(cfgs, splits),
                                          objective(first.train),
                                          capacity=first.train.eval_every,
                                          jit_compile=first.train.jit_compile)
    return Graph(splits, plan_, built, net, train_steps, make_evaluate(first.train, net))


def run_group(cfgs: Sequence, contexts: Sequence[JobContext]) -> List[float]:
    """Train jobs that share dataset, model and train settings in one graph (or one job).

    Returns each job's last validation loss (inf if it diverged). If the model cannot stack,
    each job trains in its own graph, one after another, and the log says why.
    """
    watch = Stopwatch()
    started = time.perf_counter()
    first = cfgs[0]
    configure_threads(first.train)
    splits, plan_, built = prepare(cfgs)
    reason = stack_reason(built[0]) if len(cfgs) > 1 else None
    if reason is not None:
        log.info("%d jobs train one per graph: %s", len(cfgs), reason)
        alone = [replace(c, extra_tags={**(c.extra_tags or {}), tags.STACKED: "1"})
                 for c in contexts]  # the launcher planned them as one graph
        return [value for cfg, context in zip(cfgs, alone)
                for value in run_group([cfg], [context])]
    graph = assemble(cfgs, splits, plan_, built)
    log.info("%s on %s (%d train / %d val / %d test), %s params, %d steps of batch %d%s",
             first.model.name, splits[0].info.source, len(splits[0].train.y),
             len(splits[0].val.y), len(splits[0].test.y), f"{built[0].count_params():,}",
             plan_.steps, first.train.batch_size,
             f", {len(cfgs)} jobs stacked" if len(cfgs) > 1 else "")
    task_tags = {tags.DATASET_SOURCE: splits[0].info.source, tags.TASK: IMAGE.name}
    with ExitStack() as stack:
        jobs = open_jobs(stack, cfgs, contexts, built, graph.net.names, task_tags,
                         {"steps": plan_.steps, "steps_per_epoch": plan_.steps_per_epoch})
        watch.add("setup", time.perf_counter() - started)
        fit(first.train, plan_, graph.train_steps, graph.evaluate, jobs, splits, watch)
        graph.net.write_back()
        started = time.perf_counter()
        tests = graph.evaluate(*job_arrays(cfgs, [(s.test.x, s.test.y) for s in splits]))
        watch.add("eval", time.perf_counter() - started)
        for job, test in zip(jobs, tests):
            finish(job, test, splits[0].info, watch, share=len(jobs))
    return [float("inf") if not job.alive or not job.history["val_loss"]
            else job.history["val_loss"][-1][1] for job in jobs]


def fit(train_cfg, plan_: Plan, train_steps, evaluate, jobs: List[Job], splits,
        watch: Stopwatch) -> None:
    """Alternate compiled training intervals and evaluations until done or every job diverged.

    A job's `diverged_at` is the first step whose loss or gradients were NaN/Inf; that update
    was not applied, and the job trains no further while the others go on.
    """
    evals, step = 0, 0
    window = eval_windows([job.cfg for job in jobs], splits, train_cfg.eval_size)

    def evaluate_all():
        started = time.perf_counter()
        results = evaluate(*window(evals))
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
            if job.alive:
                advance(job, interval, train_cfg.log_every)
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
    val_loss = job.history["val_loss"]
    outcome = classify(not job.alive, first_val_loss=val_loss[0][1] if val_loss else None,
                       final_val_loss=val_loss[-1][1] if val_loss else None,
                       test_acc=final.get("test_acc"), num_classes=info.num_classes)
    summary = (f"val_loss {val_loss[-1][1]:.4f}, test_acc {final['test_acc']:.4f}"
               if job.alive else f"diverged at step {job.diverged_at}")
    close_job(job, final, outcome, lambda j: log_figures(j.cfg.plots, j.history, weights, j.tracked),
              watch, share, summary)


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
