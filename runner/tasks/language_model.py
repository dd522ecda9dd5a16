"""Language model (seed 004, Zaremba et al. on PTB), top to bottom.

plan -> PTB ids -> LSTM LM -> the engine (runner/engine.py: the image task's gradient path,
N = 1) -> epochs of engine calls over consecutive [batch, num_steps] windows, the LSTM state
carried between windows and reset each epoch -> valid perplexity per epoch -> test perplexity -> MLflow. The task supplies the window
source, the carried state and perplexity; the engine does the rest, as for images.

Objective, as the write-up's `cost = reduce_sum(loss) / batch_size`: cross-entropy summed over
the num_steps words of each row, averaged over the batch (`train.loss_reduction=sum`); the lr
of 1.0 and clip norm of 5 are tuned for that scale (the gradient is num_steps times the
per-word mean's). `train.loss_reduction=mean` averages over all words instead. Whatever the
objective, `train_loss` is reported per word, so perplexity = exp(train_loss).
"""
import logging
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

import models
from models.lstm_lm import state_shapes
from runner import engine, plots, progress, ptb, tags
from runner.engine import Stopwatch, configure_threads, seed_everything
from runner.nets import KerasNet
from runner.outcome import classify_language_model
from runner.tasks import LANGUAGE_MODEL
from runner.tasks.common import advance, close_job, open_jobs
from runner.tracking import JobContext

log = logging.getLogger(__name__)

PROGRESS_LINES = 10  # per epoch, like the reference's verbose run_epoch


@dataclass(frozen=True)
class Plan:
    """Numbers derived once from the config and the corpus (the config stays read-only)."""
    steps: int
    epoch_size: int  # windows per epoch


class Windows:
    """The epoch's [batch, num_steps] windows in order; `reset()` starts the epoch over."""

    def __init__(self, inputs: np.ndarray, targets: np.ndarray):
        self.x, self.y = tf.constant(inputs), tf.constant(targets)
        self.cursor = tf.Variable(0, trainable=False)

    def next(self):
        window = self.cursor.read_value()
        self.cursor.assign_add(1)
        return self.x[window], self.y[window]

    def reset(self) -> None:
        self.cursor.assign(0)


class CarriedState:
    """The LSTM state between windows: each window starts from the previous one's final state."""

    def __init__(self, model_cfg, batch: int):
        self.variables = [tf.Variable(tf.zeros((batch, *shape)), trainable=False)
                          for shape in state_shapes(model_cfg)]

    def reset(self) -> None:
        for state in self.variables:
            state.assign(tf.zeros_like(state))


def objective(train_cfg, state: CarriedState, num_steps: int):
    """(net, window) -> ([1] objective, [1] loss per word, commit: carry the new state
    forward if the update was applied)."""
    def fn(net, batch):
        x, y = batch
        logits, *new_states = net([x, *[tf.convert_to_tensor(s) for s in state.variables]],
                                  training=True)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        # Zaremba: per-row sum over the window, mean over the batch; else the mean per word.
        rows = tf.cast(tf.shape(x)[0], tf.float32)
        scale = 1.0 / rows if train_cfg.loss_reduction == "sum" else 1.0 / (rows * num_steps)

        def commit(applied):
            for variable, new in zip(state.variables, new_states):
                variable.assign(tf.where(applied[0], new, variable))
        return (tf.reduce_sum(losses) * scale)[None], tf.reduce_mean(losses)[None], commit
    return fn


def make_mean_loss(model, cfg, ids, streams):
    """() -> mean loss per word (log perplexity) of `ids` read as `streams` parallel rows,
    state carried, no dropout.

    Every word but each row's first is scored (see ptb.eval_batches), in one compiled call.
    """
    streams = min(streams, max(1, len(ids) // 2))
    x, y, w = (tf.constant(a) for a in ptb.eval_batches(ids, streams, cfg.num_steps))

    @tf.function
    def loss_sum():
        states = [tf.zeros((streams, *shape)) for shape in state_shapes(cfg)]
        total = tf.constant(0.0)
        for i in tf.range(tf.shape(x)[0]):
            logits, *states = model([x[i], *states], training=False)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y[i], logits=logits)
            total += tf.reduce_sum(losses * w[i])
        return total

    count = float(tf.reduce_sum(w))
    return lambda: float(loss_sum()) / count


def perplexity(mean_loss: float) -> float:
    return math.exp(mean_loss) if mean_loss < 700 else float("inf")


def plan(cfg, epoch_size: int) -> Plan:
    return Plan(steps=cfg.train.epochs * epoch_size if cfg.train.epochs else cfg.train.steps,
                epoch_size=epoch_size)


def run(cfg, job: JobContext) -> float:
    """Train, evaluate and track one LM configuration; return the last valid perplexity."""
    return run_group([cfg], [job])[0]


def run_group(cfgs, contexts):
    """The language model trains one job per graph (runner.tasks.supports says why)."""
    return [_run_one(cfg, context) for cfg, context in zip(cfgs, contexts)]


def _run_one(cfg, context: JobContext) -> float:
    """plan -> build -> fit (epochs of engine calls) -> test -> finish, for one job."""
    watch, started = Stopwatch(), time.perf_counter()
    configure_threads(cfg.train)
    corpus = ptb.load(cfg.dataset, cfg.model.vocab_size)
    batch, num_steps = cfg.train.batch_size, cfg.model.num_steps
    windows = Windows(*ptb.batches(corpus.train, batch, num_steps))
    plan_ = plan(cfg, int(windows.x.shape[0]))
    seed_everything(cfg.seed)
    model = models.build(cfg.model, corpus.info)
    state = CarriedState(cfg.model, batch)
    net = KerasNet(model)
    update = engine.make_update(net, [cfg], steps_per_epoch=plan_.epoch_size, steps=plan_.steps)
    train_steps = engine.make_train_steps(net, update, windows,
                                          objective(cfg.train, state, num_steps),
                                          capacity=cfg.train.eval_every,
                                          jit_compile=cfg.train.jit_compile)
    # Valid as the reference's mvalid (the training batch); test with train.eval_batch_size
    # streams (the reference: 1, one unbroken pass over the test text).
    valid = make_mean_loss(model, cfg.model, corpus.valid, batch)
    test = make_mean_loss(model, cfg.model, corpus.test, cfg.train.eval_batch_size)
    log.info("%s on %s: %d / %d / %d words, vocab %d, %s params, %d steps of [%d x %d] "
             "(%d per epoch)", model.name, corpus.info.source, len(corpus.train),
             len(corpus.valid), len(corpus.test), corpus.info.vocab_size,
             f"{model.count_params():,}", plan_.steps, batch, num_steps, plan_.epoch_size)
    task_tags = {tags.DATASET_SOURCE: corpus.info.source, tags.TASK: LANGUAGE_MODEL.name}
    with ExitStack() as stack:
        (job,) = open_jobs(stack, [cfg], [context], [model], net.names, task_tags,
                           {"steps": plan_.steps, "steps_per_epoch": plan_.epoch_size})
        watch.add("setup", time.perf_counter() - started)
        fit(cfg, plan_, train_steps, (windows, state), valid, job, watch)
        finish(job, test, corpus.info.vocab_size, watch)
    valid_ppl = job.history["valid_perplexity"]
    return float("inf") if not job.alive or not valid_ppl else valid_ppl[-1][1]


def finish(job, test, vocab_size: int, watch) -> None:
    """Test perplexity (if it did not diverge), outcome, figures: what ends the run."""
    final = {}
    started = time.perf_counter()
    if job.alive:
        final["test_perplexity"] = perplexity(test())
        log.info("test perplexity %.2f", final["test_perplexity"])
    else:
        final["diverged_at_step"] = job.diverged_at
    watch.add("eval", time.perf_counter() - started)
    valid_ppl = job.history["valid_perplexity"]
    outcome = classify_language_model(not job.alive, valid_ppl[-1][1] if valid_ppl else None,
                                      vocab_size)
    summary = (f"test perplexity {final['test_perplexity']:.2f}" if job.alive
               else f"diverged at step {job.diverged_at}")
    close_job(job, final, outcome, lambda j: log_figures(j.history, final, j.tracked), watch,
              share=1, summary=summary)


def log_figures(history, final, tracked) -> None:
    tracked.log_figure(plots.perplexity_curves(history, final.get("test_perplexity")),
                       "perplexity.png", plots.PNG)
    tracked.log_figure(plots.grad_norms(history), "grad_norms.png", plots.PNG)
    if history["var_norms"]:
        tracked.log_figure(plots.grad_norms_per_variable(history), "grad_norms_per_variable.png",
                           plots.PNG)


def fit(cfg, plan: Plan, train_steps, resettable, valid, job, watch) -> None:
    """Epochs of engine calls, a validation pass after each; stop at the first NaN/Inf step.

    History: per-step series by step, train/valid perplexity and words_per_second by epoch
    (1-based).
    """
    history = job.history
    batch_words = cfg.train.batch_size * cfg.model.num_steps
    step, epoch = 0, 0
    epochs = -(-plan.steps // plan.epoch_size)
    while step < plan.steps and job.alive:
        epoch += 1
        for part in resettable:  # the reference starts every epoch from the zero state
            part.reset()
        in_epoch, done_in_epoch, epoch_seconds, losses = (min(plan.epoch_size, plan.steps - step),
                                                          0, 0.0, [])
        report_every = max(1, plan.epoch_size // PROGRESS_LINES)
        next_report = report_every
        while done_in_epoch < in_epoch:
            k = min(cfg.train.eval_every, in_epoch - done_in_epoch)
            started = time.perf_counter()
            (interval,) = train_steps(k)
            seconds = time.perf_counter() - started
            epoch_seconds += seconds
            watch.train_call(seconds, k)
            advance(job, interval, cfg.train.log_every)
            losses.extend(interval.series["train_loss"].tolist())
            step, done_in_epoch = step + interval.applied, done_in_epoch + interval.applied
            if not job.alive:
                break
            if next_report <= done_in_epoch < in_epoch:
                next_report = (done_in_epoch // report_every + 1) * report_every
                job.log.info("epoch %d  %.2f  train ppl %.2f  %.0f wps", epoch,
                             done_in_epoch / plan.epoch_size, perplexity(float(np.mean(losses))),
                             done_in_epoch * batch_words / max(epoch_seconds, 1e-9))
        if not job.alive:
            break
        started = time.perf_counter()
        valid_loss = valid()
        # valid_loss (log perplexity) is what the report ranks and tests: perplexities of
        # several seeds are skewed (exp of a roughly normal loss), their logs are not.
        metrics = {"train_perplexity": perplexity(float(np.mean(losses))),
                   "valid_perplexity": perplexity(valid_loss), "valid_loss": valid_loss,
                   "words_per_second": done_in_epoch * batch_words / max(epoch_seconds, 1e-9)}
        watch.add("eval", time.perf_counter() - started)
        for name, value in metrics.items():
            history[name].append((epoch, value))
        job.tracked.log_metrics(metrics, epoch)
        progress.reporter().job_step(id(job.tracked), step, float(np.mean(losses)),
                                     float("nan"))
        job.log.info("epoch %*d/%d  train ppl %.2f  valid ppl %.2f  lr %.4g  %.0f wps",
                     len(str(epochs)), epoch, epochs, metrics["train_perplexity"],
                     metrics["valid_perplexity"], interval.series["lr"][-1],
                     metrics["words_per_second"])
    job.tracked.flush()
