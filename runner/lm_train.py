"""One language-model run (seed 004, Zaremba et al. on PTB), top to bottom.

config -> PTB ids -> LSTM LM -> schedule (per epoch) / optimizer -> epochs of [compiled
multi-step train fn over consecutive [batch, num_steps] windows, LSTM state carried between
windows and reset each epoch] -> valid perplexity per epoch -> test perplexity -> MLflow.

Objective, as the write-up's `cost = reduce_sum(loss) / batch_size`: cross-entropy summed over
the num_steps words of each row, averaged over the batch (`train.loss_reduction=sum`); the lr
of 1.0 and clip norm of 5 are tuned for that scale (the gradient is num_steps times the
per-word mean's). `train.loss_reduction=mean` averages over all words instead. Whatever the
objective, `train_loss` is reported per word, so perplexity = exp(train_loss).
"""
import logging
import math
import time
from collections import defaultdict

import numpy as np
import tensorflow as tf

import models
from models.lstm_lm import state_shapes
from runner import clipping, optim, plots, ptb, regularizers, tracking
from runner.config import ConfigError, validate
from runner.train import record_series, seed_everything

log = logging.getLogger(__name__)

# Per-step series out of the compiled loop (one value per update).
SERIES = ("train_loss", "lr", "grad_norm", "grad_norm_clipped", "clip_fraction")
PROGRESS_LINES = 10  # per epoch, like the reference's verbose run_epoch


def run_language_model(cfg) -> float:
    """Train, evaluate and track one LM configuration; return the last valid perplexity."""
    validate(cfg)
    if cfg.dataset.name != "ptb":
        raise ConfigError(f"dataset.name: the lstm_lm model reads word sequences, got "
                          f"{cfg.dataset.name!r}; use dataset=ptb (or experiment=ptb_lstm)")
    if cfg.train.loss != "cross_entropy":
        raise ConfigError(f"train.loss: the language model trains on cross_entropy, got "
                          f"{cfg.train.loss!r}; use train.loss=cross_entropy")
    seed_everything(cfg.seed)
    corpus = ptb.load(cfg.dataset, cfg.model.vocab_size)
    batch, num_steps = cfg.train.batch_size, cfg.model.num_steps
    train_x, train_y = ptb.batches(corpus.train, batch, num_steps)
    epoch_size = len(train_x)
    if cfg.train.epochs:
        cfg.train.steps = cfg.train.epochs * epoch_size
    model = models.build(cfg.model, corpus.info)
    lr_at = optim.schedule(cfg.lr_schedule, cfg.optimizer.lr, epoch_size, cfg.train.steps)
    opt = optim.optimizer(cfg.optimizer, lr_at)
    train_steps = make_train_steps(cfg, model, opt, lr_at, train_x, train_y)
    # Valid as the reference's mvalid (the training batch); test with train.eval_batch_size
    # streams (the reference: 1, one unbroken pass over the test text).
    valid = make_perplexity(model, cfg.model, corpus.valid, batch)
    test = make_perplexity(model, cfg.model, corpus.test, cfg.train.eval_batch_size)
    log.info("%s on %s: %d / %d / %d words, vocab %d, %s params, %d steps of [%d x %d] "
             "(%d per epoch)", model.name, corpus.info.source, len(corpus.train),
             len(corpus.valid), len(corpus.test), corpus.info.vocab_size,
             f"{model.count_params():,}", cfg.train.steps, batch, num_steps, epoch_size)

    with tracking.TrackedRun(cfg, corpus.info) as tracked:
        history, diverged_at, seconds = fit(cfg, train_steps, epoch_size, valid, tracked)
        final = {"train_seconds": seconds}
        if diverged_at is None:
            final["test_perplexity"] = test()
            log.info("test perplexity %.2f", final["test_perplexity"])
        else:
            final["diverged_at_step"] = diverged_at
            log.warning("diverged at step %d (loss is NaN/Inf): run stopped, marked diverged",
                        diverged_at)
        tracked.finish(final, outcome="ok" if diverged_at is None else "diverged")
        tracked.log_figure(plots.perplexity_curves(history, final.get("test_perplexity")),
                           "perplexity.png")
        tracked.log_figure(plots.grad_norms(history), "grad_norms.png")
    valid_ppl = history["valid_perplexity"]
    return float("inf") if diverged_at is not None or not valid_ppl else valid_ppl[-1][1]


def make_train_steps(cfg, model, opt, lr_at, train_x, train_y):
    """A compiled function running windows start..start+k-1 of the epoch in one call.

    The LSTM state lives in variables: each window starts from the previous one's final state
    (`reset()` zeroes it at an epoch's start). Stops early, before applying it, on a NaN/Inf
    loss. Returns (updates applied, {series name: per-step values}).
    """
    x, y = tf.constant(train_x), tf.constant(train_y)
    batch, num_steps = train_x.shape[1], train_x.shape[2]
    states = [tf.Variable(tf.zeros((batch, *shape)), trainable=False)
              for shape in state_shapes(cfg.model)]
    variables = model.trainable_variables
    # Zaremba: per-row sum over the window, mean over the batch; else the mean per word.
    scale = 1.0 / batch if cfg.train.loss_reduction == "sum" else 1.0 / (batch * num_steps)
    capacity = cfg.train.eval_every  # static TensorArray size: one trace

    @tf.function(jit_compile=cfg.train.jit_compile)
    def train_steps(start, k):
        series = [tf.TensorArray(tf.float32, size=capacity, element_shape=()) for _ in SERIES]
        i, finite = tf.constant(0), tf.constant(True)
        while i < k and finite:
            lr = lr_at(opt.iterations)
            with tf.GradientTape() as tape:
                logits, *new_states = model([x[start + i], *[tf.convert_to_tensor(s) for s in
                                                              states]], training=True)
                losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=y[start + i], logits=logits)
                total = tf.reduce_sum(losses) * scale + regularizers.penalty(variables,
                                                                             cfg.regularizer)
            # The embedding's gradient is IndexedSlices; clip functions want dense tensors.
            grads = [tf.convert_to_tensor(g) for g in tape.gradient(total, variables)]
            grads, stats = clipping.clip(grads, cfg.clipping)
            finite = tf.math.is_finite(total)
            if finite:  # divergence guard: never apply a NaN/Inf update
                opt.apply(grads, variables)
                for state, new in zip(states, new_states):
                    state.assign(new)
            values = (tf.reduce_mean(losses), lr, stats["grad_norm"],
                      stats["grad_norm_clipped"], stats["clip_fraction"])
            series = [ta.write(i, tf.cast(v, tf.float32)) for ta, v in zip(series, values)]
            i += 1
        done = i - tf.cast(tf.logical_not(finite), tf.int32)
        return done, [ta.stack() for ta in series]

    def call(start: int, k: int):
        done, series = train_steps(tf.constant(start), tf.constant(k))
        done = int(done)
        return done, {name: s.numpy()[:done] for name, s in zip(SERIES, series)}

    def reset():
        for state in states:
            state.assign(tf.zeros_like(state))

    call.reset = reset
    return call


def make_perplexity(model, cfg, ids, streams):
    """() -> perplexity of `ids` read as `streams` parallel rows, state carried, no dropout.

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
    return lambda: _perplexity(float(loss_sum()) / count)


def _perplexity(mean_loss: float) -> float:
    return math.exp(mean_loss) if mean_loss < 700 else float("inf")


def fit(cfg, train_steps, epoch_size, valid, tracked):
    """Epochs of compiled training calls, a validation pass after each; stop on NaN/Inf.

    Returns (history, diverged_at or None, seconds in training calls). History: per-step
    series by step, train/valid perplexity and words_per_second by epoch (1-based).
    """
    history = defaultdict(list)
    total, batch_words = cfg.train.steps, cfg.train.batch_size * cfg.model.num_steps
    step, epoch, seconds, diverged_at = 0, 0, 0.0, None
    epochs = -(-total // epoch_size)
    while step < total and diverged_at is None:
        epoch += 1
        train_steps.reset()  # the reference starts every epoch from the zero state
        in_epoch, done_in_epoch, epoch_seconds, losses = min(epoch_size, total - step), 0, 0.0, []
        report_every = max(1, epoch_size // PROGRESS_LINES)
        next_report = report_every
        while done_in_epoch < in_epoch:
            k = min(cfg.train.eval_every, in_epoch - done_in_epoch)
            started = time.perf_counter()
            done, series = train_steps(done_in_epoch, k)
            epoch_seconds += time.perf_counter() - started
            record_series(history, tracked, series, step, cfg.train.log_every)
            losses.extend(series["train_loss"].tolist())
            step, done_in_epoch = step + done, done_in_epoch + done
            if done < k:
                diverged_at = step + 1
                break
            if next_report <= done_in_epoch < in_epoch:
                next_report = (done_in_epoch // report_every + 1) * report_every
                log.info("epoch %d  %.2f  train ppl %.2f  %.0f wps", epoch,
                         done_in_epoch / epoch_size, _perplexity(float(np.mean(losses))),
                         done_in_epoch * batch_words / max(epoch_seconds, 1e-9))
        seconds += epoch_seconds
        if diverged_at is not None:
            break
        metrics = {"train_perplexity": _perplexity(float(np.mean(losses))),
                   "valid_perplexity": valid(),
                   "words_per_second": done_in_epoch * batch_words / max(epoch_seconds, 1e-9)}
        for name, value in metrics.items():
            history[name].append((epoch, value))
        tracked.log_metrics(metrics, epoch)
        log.info("epoch %*d/%d  train ppl %.2f  valid ppl %.2f  lr %.4g  %.0f wps",
                 len(str(epochs)), epoch, epochs, metrics["train_perplexity"],
                 metrics["valid_perplexity"], series["lr"][-1], metrics["words_per_second"])
        if not math.isfinite(metrics["valid_perplexity"]):
            diverged_at = step
    tracked.flush()
    return history, diverged_at, seconds
