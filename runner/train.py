"""One training run, top to bottom.

config -> data -> model -> schedule/optimizer -> [compiled multi-step train fn, eval every N]
-> divergence guard -> test -> metrics, plots, MLflow. Only this module sees every piece.
"""
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

import models
from runner import clipping, data, optim, plots, regularizers, tracking
from runner.config import ConfigError, validate

log = logging.getLogger(__name__)

# Per-step series that come out of the compiled loop (one value per update).
SERIES = ("train_loss", "penalty", "lr", "grad_norm", "grad_norm_clipped", "clip_fraction")

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


def loss_fn(cfg):
    """(labels, logits) -> scalar loss for cfg.train (`loss`, `loss_reduction`)."""
    per_example = PER_EXAMPLE_LOSSES[cfg.loss]
    reduce = tf.reduce_sum if cfg.loss_reduction == "sum" else tf.reduce_mean
    return lambda labels, logits: reduce(per_example(labels, logits))


def run(cfg) -> float:
    """Train, evaluate and track one configuration; return the last validation loss."""
    validate(cfg)
    if cfg.model.name == "lstm_lm":  # seed 004: word sequences, carried state, perplexity
        from runner.lm_train import run_language_model  # it imports from here: no cycle

        return run_language_model(cfg)
    seed_everything(cfg.seed)
    splits = data.load(cfg.dataset, cfg.seed)
    if cfg.train.batch_size > len(splits.train.y):
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is larger than the "
                          f"{len(splits.train.y)} training examples; use a smaller batch")
    model = models.build(cfg.model, splits.info)
    steps_per_epoch = len(splits.train.y) // cfg.train.batch_size
    if cfg.train.epochs:
        cfg.train.steps = cfg.train.epochs * steps_per_epoch
    lr_at = optim.schedule(cfg.lr_schedule, cfg.optimizer.lr, steps_per_epoch, cfg.train.steps)
    opt = optim.optimizer(cfg.optimizer, lr_at)
    train_steps = make_train_steps(cfg, model, opt, lr_at, splits.train)
    evaluate = make_evaluate(cfg.train, model)
    log.info("%s on %s (%d train / %d val / %d test), %s params, %d steps of batch %d",
             cfg.model.name, splits.info.source, len(splits.train.y), len(splits.val.y),
             len(splits.test.y), f"{model.count_params():,}", cfg.train.steps,
             cfg.train.batch_size)

    with tracking.TrackedRun(cfg, splits.info) as tracked:
        result = fit(cfg.train, train_steps, evaluate, splits.val, tracked)
        history, diverged_at, weights = result.history, result.diverged_at, kernels(model)
        final = {"train_seconds": result.seconds,
                 "steps_per_second": result.steps / max(result.seconds, 1e-9),
                 **accuracy_summary(history["val_acc"]), **weight_summary(weights)}
        if diverged_at is None:
            final["test_loss"], final["test_acc"] = evaluate(splits.test.x, splits.test.y)
            log.info("test loss %.4f, test acc %.4f", final["test_loss"], final["test_acc"])
        else:
            final["diverged_at_step"] = diverged_at
            log.warning("diverged at step %d (loss is NaN/Inf): run stopped, marked diverged",
                        diverged_at)
        tracked.finish(final, outcome="ok" if diverged_at is None else "diverged")
        log_figures(cfg.plots, history, weights, tracked)
    val_losses = history["val_loss"]
    return float("inf") if diverged_at is not None or not val_losses else val_losses[-1][1]


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


def log_figures(cfg, history, weights, tracked):
    """The run's PNGs: curves (also without the first evaluations), gradient norms, weights."""
    tracked.log_figure(plots.curves(history), "curves.png")
    if cfg.skip_first > 0:
        tracked.log_figure(plots.curves(history, skip_first=cfg.skip_first),
                           f"curves_skip{cfg.skip_first}.png")
    tracked.log_figure(plots.grad_norms(history), "grad_norms.png")
    if history["var_norms"]:
        tracked.log_figure(plots.grad_norms_per_variable(history), "grad_norms_per_variable.png")
    tracked.log_figure(plots.weight_images(weights), "weights.png")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)  # also seeds TF and Keras' initialisers


def make_train_steps(cfg, model, opt, lr_at, train_split):
    """A compiled function running up to k updates in one call; stops early on NaN/Inf loss.

    Batches are drawn on the graph from in-memory tensors, epoch by epoch without replacement,
    so no Python runs between two evaluations.
    """
    x, y = tf.constant(train_split.x), tf.constant(train_split.y)
    n, batch = len(train_split.y), cfg.train.batch_size
    rng = tf.random.Generator.from_seed(cfg.seed)
    order = tf.Variable(tf.argsort(rng.uniform([n])), trainable=False)
    cursor = tf.Variable(0, trainable=False)
    variables = model.trainable_variables
    data_loss = loss_fn(cfg.train)
    per_example_divisor = float(batch) if cfg.train.loss_reduction == "sum" else 1.0

    def next_batch():
        if cursor + batch > n:  # epoch done: reshuffle
            order.assign(tf.argsort(rng.uniform([n])))
            cursor.assign(0)
        idx = tf.gather(order, cursor + tf.range(batch))  # a variable-bounded slice hangs XLA
        cursor.assign_add(batch)
        return tf.gather(x, idx), tf.gather(y, idx)

    capacity = cfg.train.eval_every  # static TensorArray size: one trace, and XLA-compilable

    @tf.function(jit_compile=cfg.train.jit_compile)
    def train_steps(k):
        series = [tf.TensorArray(tf.float32, size=capacity, element_shape=()) for _ in SERIES]
        norms = [tf.TensorArray(tf.float32, size=capacity, element_shape=(len(variables),))
                 for _ in range(2)]
        i, finite = tf.constant(0), tf.constant(True)
        while i < k and finite:
            xb, yb = next_batch()
            lr = lr_at(opt.iterations)
            with tf.GradientTape() as tape:
                objective = data_loss(yb, model(xb, training=True))
                penalty = regularizers.penalty(variables, cfg.regularizer)
                total = objective + penalty
            loss = objective / per_example_divisor  # reported per example, like val_loss
            grads, stats = clipping.clip(tape.gradient(total, variables), cfg.clipping)
            finite = tf.math.is_finite(total)
            if finite:  # divergence guard: never apply a NaN/Inf update
                opt.apply(grads, variables)
            values = (loss, penalty, lr, stats["grad_norm"], stats["grad_norm_clipped"],
                      stats["clip_fraction"])
            series = [ta.write(i, tf.cast(v, tf.float32)) for ta, v in zip(series, values)]
            norms = [norms[0].write(i, stats["var_norms"]),
                     norms[1].write(i, stats["var_norms_clipped"])]
            i += 1
        done = i - tf.cast(tf.logical_not(finite), tf.int32)  # updates actually applied
        return done, [ta.stack() for ta in series], [ta.stack() for ta in norms]

    def call(k: int):
        done, series, norms = train_steps(tf.constant(k))
        done = int(done)
        return done, {name: s.numpy()[:done] for name, s in zip(SERIES, series)}, \
            [n.numpy()[:done] for n in norms]

    call.variable_names = [v.path for v in variables]
    return call


def make_evaluate(cfg, model):
    """(x, y) -> (mean loss, accuracy), in chunks of `eval_batch_size` to bound memory."""
    per_example = PER_EXAMPLE_LOSSES[cfg.loss]
    # Reported per example whatever the training reduction, so runs stay comparable.

    @tf.function(reduce_retracing=True)
    def chunk(x, y):
        logits = model(x, training=False)
        correct = tf.reduce_sum(tf.cast(tf.argmax(logits, -1, output_type=tf.int32) == y,
                                        tf.float32))
        return tf.reduce_sum(per_example(y, logits)), correct

    def evaluate(x, y):
        loss_sum = correct = 0.0
        for start in range(0, len(y), cfg.eval_batch_size):
            stop = start + cfg.eval_batch_size
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


def record_series(history, tracked, series, first_step, log_every):
    """Per-step values of one compiled call (steps first_step+1...) into history and MLflow."""
    for name, values in series.items():
        steps = np.arange(first_step + 1, first_step + len(values) + 1)
        history[name].extend(zip(steps.tolist(), values.tolist()))
        keep = steps % log_every == 0
        tracked.log_series(name, steps[keep], values[keep])


@dataclass
class FitResult:
    history: dict  # metric name -> [(step, value)]; var_norms* -> [(step, {variable: norm})]
    steps: int  # updates applied
    diverged_at: Optional[int]  # step whose loss was NaN/Inf, None if the run stayed finite
    seconds: float  # wall time inside the compiled training calls


def fit(cfg, train_steps, evaluate, val, tracked) -> FitResult:
    """Alternate compiled training intervals and evaluations until done or diverged."""
    history = defaultdict(list)
    step, evals, seconds, diverged_at = 0, 0, 0.0, None

    def evaluate_now():
        nonlocal evals
        val_loss, val_acc = evaluate(*eval_window(val, cfg.eval_size, evals))
        evals += 1
        history["val_loss"].append((step, val_loss))
        history["val_acc"].append((step, val_acc))
        tracked.log_metrics({"val_loss": val_loss, "val_acc": val_acc}, step)
        return val_loss, val_acc

    evaluate_now()  # step 0: where every curve starts
    while step < cfg.steps:
        k = min(cfg.eval_every, cfg.steps - step)
        started = time.perf_counter()
        done, series, (var_norms, var_norms_clipped) = train_steps(k)
        seconds += time.perf_counter() - started
        record_series(history, tracked, series, step, cfg.log_every)
        step += done
        if done:  # per-variable norms of the interval's last step (seed 002's g-w1, g-b1, ...)
            names = train_steps.variable_names
            before = dict(zip(names, var_norms[-1].tolist()))
            after = dict(zip(names, var_norms_clipped[-1].tolist()))
            history["var_norms"].append((step, before))
            history["var_norms_clipped"].append((step, after))
            tracked.log_metrics({**{f"grad_norm/{k}": v for k, v in before.items()},
                                 **{f"grad_norm_clipped/{k}": v for k, v in after.items()}}, step)
        if done < k:
            diverged_at = step + 1
            break
        val_loss, val_acc = evaluate_now()
        if not np.isfinite(val_loss):
            diverged_at = step
            break
        train_loss = float(np.mean(series["train_loss"]))
        log.info("step %*d/%d  train_loss %.4f  val_loss %.4f  val_acc %.4f  lr %.3g",
                 len(str(cfg.steps)), step, cfg.steps, train_loss, val_loss, val_acc,
                 series["lr"][-1])
    tracked.flush()
    return FitResult(history, step, diverged_at, seconds)
