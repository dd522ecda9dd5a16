"""Training-loop speed: sweeplab's fused loop next to simpler loops, side by side in one run.

Workload (seed 000): LeNet (61,706 params), Adam lr 0.01, batch 8, `--steps` updates
(default 1000) on the bundled MNIST 5k digits (`dataset=mnist_5k`, 3,600 training images).
The config is composed from the real Hydra tree (`experiment=lenet_clip dataset=mnist_5k`),
the data comes from `runner.data.load`, the model from `models.build`, the optimizer and its
lr schedule from `runner.optim`, exactly as `runner.tasks.image` builds them. Every variant
starts from a fresh model and optimizer after `seed_everything(cfg.seed)`.

Variants (all do the same number of Adam updates on batches of 8):
  eager             Python for-loop, tf.GradientTape + optimizer.apply per step, the batch
                    sliced out of numpy arrays in Python each step (epoch-wise shuffles).
  tf.function/step  the same step body compiled once with tf.function and called `steps`
                    times from Python; batches are still sliced in numpy and fed in.
  fused minimal     one tf.function runs 10 steps per call (tf.range loop, batch indices
                    drawn on the graph); no statistics, returns only the last loss.
  sweeplab k=...    the engine, `runner.engine.make_train_steps` as
                    `runner.tasks.image.build` assembles it, called like
                    `runner.tasks.image.fit` calls it:
                    k = train.eval_every steps per call. On top of the minimal fused loop it
                    computes per-variable and global gradient norms, clips (clipping=none
                    or clipping=value with [-0.001, 0.001]), guards against NaN/Inf and
                    returns six per-step series plus per-variable norms to numpy.
                    k=10 is the seed-000 setting; k=100 shows what the fusing factor buys.
  sweeplab jit      k=10 with train.jit_compile=true. Only with --jit, in a subprocess
                    killed after --jit-timeout seconds, reported as "timeout" then.
                    XLA-compiling the loop has hung for >10 minutes on a 2-core machine;
                    the trigger is the slice with a variable start and end,
                    `order[cursor:cursor + batch]`, now a gather in runner.tasks.image.ShuffledBatches.

What is timed (time.perf_counter, wall clock): only the training calls -- for the fused
variants the Python call of the compiled function including the conversion of its outputs
to numpy, for the per-step variants one loop iteration including the numpy batch slicing.
Model/optimizer construction and evaluation are not timed. Columns:
  first call   the first call: tracing/graph building (and for eager: Keras' first-call
               work and building the Adam slots) plus that call's own steps.
  trace~       first call minus its steps at the steady rate = the one-off overhead.
  steady       mean time per step over all calls after the first, in ms/step.
  total        all calls for `--steps` steps = what a run of this length pays.
  x ref        this variant's total (resp. steady) time divided by the reference row's,
               the sweeplab loop with k=10, clipping=none (marked *). 2.0 = twice as slow
               as sweeplab, 0.5 = twice as fast. "total" answers "how long does a
               1000-step run take"; "steady" answers "what does one more step cost" and is
               the one to look at for longer runs.
  loss@end     training loss of the last step, a sanity check that every variant trained
               (data order differs between the numpy-fed and the graph-fed variants).
With --repeats N every variant is run N times (interleaved) and each column is the median.
A short untimed warm-up runs first so no variant pays TensorFlow's process start-up.

Usage (from the project root; `make bench` runs the first line):
  .venv/bin/python benchmarks/bench_loop.py
  .venv/bin/python benchmarks/bench_loop.py --repeats 3 --steps 1000 --jit --jit-timeout 120
  .venv/bin/python benchmarks/bench_loop.py --variant eager --variant sweeplab-k10-none
"""
import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

import models  # noqa: E402
from runner import data, optim  # noqa: E402
from runner.config import register_configs, validate  # noqa: E402
from runner.engine import seed_everything  # noqa: E402
from runner.tasks import image  # noqa: E402

REFERENCE = "sweeplab-k10-none"
JIT = "sweeplab-k10-none-jit"
JSON_PREFIX = "BENCH_JSON "


# ---------------------------------------------------------------- setup

def compose_cfg(steps, overrides=()):
    """The seed-000 config from conf/, on the bundled 5k digits, plus `overrides`."""
    register_configs()  # the schemas conf/ extends (idempotent)
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=lenet_clip", "dataset=mnist_5k",
                                           f"train.steps={steps}", *overrides])
    validate(cfg)
    return cfg


def fresh_model_and_optimizer(cfg, splits):
    """Model, lr schedule and optimizer exactly as runner.tasks.image builds them."""
    keras.backend.clear_session()  # drop the previous variant's graphs and layer-name counters
    gc.collect()
    seed_everything(cfg.seed)
    model = models.build(cfg.model, splits.info)
    steps_per_epoch = len(splits.train.y) // cfg.train.batch_size
    lr_at = optim.schedule(cfg.lr_schedule, cfg.optimizer.lr, steps_per_epoch, cfg.train.steps)
    # The reference loops use Keras' own Adam (the engine's rule is pinned to it in tests).
    adam = keras.optimizers.Adam(learning_rate=cfg.optimizer.lr, beta_1=cfg.optimizer.beta1,
                                 beta_2=cfg.optimizer.beta2, epsilon=cfg.optimizer.epsilon)
    return model, adam, lr_at


def data_loss_for(cfg):
    """(labels, logits) -> scalar loss, the same function sweeplab's loop minimises."""
    per_example = image.PER_EXAMPLE_LOSSES[cfg.train.loss]
    reduce = tf.reduce_sum if cfg.train.loss_reduction == "sum" else tf.reduce_mean
    return lambda labels, logits: reduce(per_example(labels, logits))


class NumpyBatches:
    """Batches sliced in Python, epoch by epoch without replacement (like sweeplab's loop)."""

    def __init__(self, split, batch, seed):
        self.x, self.y, self.batch = split.x, split.y, batch
        self.rng = np.random.default_rng(seed)
        self.order, self.cursor = self.rng.permutation(len(split.y)), 0

    def next(self):
        if self.cursor + self.batch > len(self.y):
            self.order, self.cursor = self.rng.permutation(len(self.y)), 0
        idx = self.order[self.cursor:self.cursor + self.batch]
        self.cursor += self.batch
        return self.x[idx], self.y[idx]


# ---------------------------------------------------------------- the loops
# Each returns (calls, last_loss): calls = [(steps done in the call, seconds)], in order.

def loop_eager(cfg, splits, steps):
    model, opt, _ = fresh_model_and_optimizer(cfg, splits)
    variables, data_loss = model.trainable_variables, data_loss_for(cfg)
    batches = NumpyBatches(splits.train, cfg.train.batch_size, cfg.seed)
    calls, loss = [], None
    for _ in range(steps):
        started = time.perf_counter()
        xb, yb = batches.next()
        with tf.GradientTape() as tape:
            loss = data_loss(yb, model(xb, training=True))
        opt.apply(tape.gradient(loss, variables), variables)
        calls.append((1, time.perf_counter() - started))
    return calls, float(loss)


def loop_tf_function_per_step(cfg, splits, steps):
    model, opt, _ = fresh_model_and_optimizer(cfg, splits)
    variables, data_loss = model.trainable_variables, data_loss_for(cfg)
    batches = NumpyBatches(splits.train, cfg.train.batch_size, cfg.seed)

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = data_loss(yb, model(xb, training=True))
        opt.apply(tape.gradient(loss, variables), variables)
        return loss

    calls, loss = [], None
    for _ in range(steps):
        started = time.perf_counter()
        xb, yb = batches.next()
        loss = step(tf.convert_to_tensor(xb), tf.convert_to_tensor(yb))
        calls.append((1, time.perf_counter() - started))
    return calls, float(loss)


def loop_fused_minimal(cfg, splits, steps, per_call=10):
    model, opt, _ = fresh_model_and_optimizer(cfg, splits)
    variables, data_loss = model.trainable_variables, data_loss_for(cfg)
    x, y = tf.constant(splits.train.x), tf.constant(splits.train.y)
    n, batch = len(splits.train.y), cfg.train.batch_size
    rng = tf.random.Generator.from_seed(cfg.seed)  # same batch order as sweeplab's loop
    order = tf.Variable(tf.argsort(rng.uniform([n])), trainable=False)
    cursor = tf.Variable(0, trainable=False)

    @tf.function
    def run_steps(k):
        loss = tf.constant(0.0)
        for _ in tf.range(k):
            if cursor + batch > n:
                order.assign(tf.argsort(rng.uniform([n])))
                cursor.assign(0)
            idx = order[cursor:cursor + batch]
            cursor.assign_add(batch)
            with tf.GradientTape() as tape:
                loss = data_loss(tf.gather(y, idx), model(tf.gather(x, idx), training=True))
            opt.apply(tape.gradient(loss, variables), variables)
        return loss

    calls, loss, step = [], None, 0
    while step < steps:
        k = min(per_call, steps - step)
        started = time.perf_counter()
        loss = float(run_steps(tf.constant(k)))
        calls.append((k, time.perf_counter() - started))
        step += k
    return calls, loss


def loop_sweeplab(cfg, splits, steps):
    """The engine with one job built by the image task, called the way its fit calls it."""
    keras.backend.clear_session()  # drop the previous variant's graphs and layer-name counters
    gc.collect()
    train_steps = image.build([cfg]).train_steps
    calls, loss, step = [], None, 0
    while step < steps:
        k = min(cfg.train.eval_every, steps - step)
        started = time.perf_counter()
        (interval,) = train_steps(k)
        calls.append((interval.applied, time.perf_counter() - started))
        step += interval.applied
        if interval.applied:
            loss = float(interval.series["train_loss"][-1])
        if interval.diverged:  # fit would stop here too
            break
    return calls, loss


# name -> (label, loop, extra overrides)
VARIANTS = {
    "eager": ("eager, numpy batches", loop_eager, ()),
    "tf-function-step": ("tf.function per step", loop_tf_function_per_step, ()),
    "fused-minimal-k10": ("fused minimal, k=10", loop_fused_minimal, ()),
    "sweeplab-k10-none": ("sweeplab k=10 clip=none", loop_sweeplab, ("clipping=none",)),
    "sweeplab-k10-value": ("sweeplab k=10 clip=value", loop_sweeplab, ("clipping=value",)),
    "sweeplab-k100-none": ("sweeplab k=100 clip=none", loop_sweeplab,
                           ("clipping=none", "train.eval_every=100")),
    "sweeplab-k100-value": ("sweeplab k=100 clip=value", loop_sweeplab,
                            ("clipping=value", "train.eval_every=100")),
    JIT: ("sweeplab k=10 clip=none XLA", loop_sweeplab,
          ("clipping=none", "train.jit_compile=true")),
}
DEFAULT_VARIANTS = [name for name in VARIANTS if name != JIT]


# ---------------------------------------------------------------- measuring

@dataclass
class Result:
    name: str
    steps: int = 0
    per_call: int = 0  # steps in the first call
    first: float = float("nan")  # seconds
    trace: float = float("nan")  # seconds: first call minus its steps at the steady rate
    steady: float = float("nan")  # seconds per step after the first call
    total: float = float("nan")  # seconds for all steps
    loss: float = float("nan")
    status: str = "ok"  # ok | timeout | error: ...


def summarise(name, calls, loss):
    first_steps, first = calls[0]
    rest_steps = sum(n for n, _ in calls[1:])
    steady = sum(s for _, s in calls[1:]) / rest_steps if rest_steps else float("nan")
    return Result(name, steps=sum(n for n, _ in calls), per_call=first_steps, first=first,
                  trace=first - first_steps * steady, steady=steady,
                  total=sum(s for _, s in calls), loss=loss)


def median_of(runs):
    """Column-wise median over repeats of one variant."""
    out = Result(runs[0].name, steps=runs[0].steps, per_call=runs[0].per_call)
    for key in ("first", "trace", "steady", "total", "loss"):
        setattr(out, key, statistics.median(getattr(r, key) for r in runs))
    return out


def warm_up(splits):
    """Untimed: TF/oneDNN/Keras process start-up costs, so the first variant isn't penalised."""
    cfg = compose_cfg(2, ["clipping=none"])
    loop_eager(cfg, splits, 2)
    loop_fused_minimal(cfg, splits, 2, per_call=1)


def run_in_process(names, steps, repeats, splits):
    cfgs = {name: compose_cfg(steps, VARIANTS[name][2]) for name in names}
    warm_up(splits)
    runs = {name: [] for name in names}
    for repeat in range(repeats):  # interleaved, so slow drifts hit every variant alike
        for name in names:
            label, loop = VARIANTS[name][:2]
            print(f"  [{repeat + 1}/{repeats}] {label} ...", end="", flush=True, file=sys.stderr)
            result = summarise(name, *loop(cfgs[name], splits, steps))
            print(f" {result.total:.2f} s", file=sys.stderr, flush=True)
            runs[name].append(result)
    return {name: median_of(rs) for name, rs in runs.items()}


def run_jit_subprocess(steps, repeats, timeout):
    """The XLA variant in a child process (this script, --child-jit), killed after `timeout`."""
    command = [sys.executable, os.path.abspath(__file__), "--child-jit",
               "--steps", str(steps), "--repeats", str(repeats)]
    print(f"  {VARIANTS[JIT][0]} in a subprocess (timeout {timeout:g} s) ...", end="",
          flush=True, file=sys.stderr)
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:  # subprocess.run kills the child
        print(f" timeout after {time.perf_counter() - started:.0f} s", file=sys.stderr)
        return Result(JIT, status=f"timeout (>{timeout:g} s)")
    print(f" {time.perf_counter() - started:.0f} s wall", file=sys.stderr)
    for line in done.stdout.splitlines():
        if line.startswith(JSON_PREFIX):
            return Result(**json.loads(line[len(JSON_PREFIX):]))
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return Result(JIT, status=f"error (exit {done.returncode}): {tail[:80]}")


# ---------------------------------------------------------------- report

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def machine_lines():
    threads = (tf.config.threading.get_intra_op_parallelism_threads(),
               tf.config.threading.get_inter_op_parallelism_threads())
    return [
        f"machine: nproc={len(os.sched_getaffinity(0))} (os.cpu_count={os.cpu_count()}), "
        f"{cpu_model()}",
        f"software: Python {platform.python_version()}, TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}, numpy {np.__version__}; TF intra/inter-op threads "
        f"{threads[0]}/{threads[1]} (0 = TF default)",
    ]


def load_average():
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def ratio(value, ref):
    return f"{value / ref:.2f}x" if np.isfinite(value) and ref and np.isfinite(ref) else "-"


def table(results, names):
    ref = results.get(REFERENCE)
    header = (f"{'variant':<30} {'steps/call':>10} {'first call':>10} {'trace~':>8} "
              f"{'steady':>12} {'total':>9} {'total':>7} {'steady':>7} {'loss@end':>9}")
    units = (f"{'':<30} {'':>10} {'s':>10} {'s':>8} {'ms/step':>12} {'s':>9} "
             f"{'x ref':>7} {'x ref':>7} {'':>9}")
    lines = [header, units, "-" * len(header)]
    for name in names:
        r = results[name]
        label = VARIANTS[name][0] + (" *" if name == REFERENCE else "")
        if r.status != "ok":
            lines.append(f"{label:<30} {r.status}")
            continue
        lines.append(
            f"{label:<30} {r.per_call:>10d} {r.first:>10.3f} {r.trace:>8.3f} "
            f"{r.steady * 1e3:>12.3f} {r.total:>9.3f} "
            f"{ratio(r.total, ref.total if ref else None):>7} "
            f"{ratio(r.steady, ref.steady if ref else None):>7} {r.loss:>9.4f}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps per variant")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every variant N times and report medians (default 1)")
    parser.add_argument("--variant", action="append", choices=DEFAULT_VARIANTS,
                        help="run only these variants (repeatable; default: all)")
    parser.add_argument("--jit", action="store_true",
                        help="also run sweeplab with train.jit_compile=true, in a subprocess")
    parser.add_argument("--jit-timeout", type=float, default=120.0,
                        help="seconds before the --jit subprocess is killed (default 120)")
    parser.add_argument("--child-jit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 2 or args.repeats < 1:
        parser.error("--steps must be >= 2 and --repeats >= 1")

    base = compose_cfg(args.steps)
    splits = data.load(base.dataset, base.seed)

    if args.child_jit:  # inside the --jit subprocess: measure, print one JSON line, exit
        result = run_in_process([JIT], args.steps, args.repeats, splits)[JIT]
        print(JSON_PREFIX + json.dumps(asdict(result)), flush=True)
        return

    names = args.variant or DEFAULT_VARIANTS
    print("\n".join(machine_lines()))
    print(f"workload: {base.model.name}, {base.optimizer.name} lr {base.optimizer.lr:g}, "
          f"batch {base.train.batch_size}, {args.steps} steps, {base.dataset.name} "
          f"({len(splits.train.y)} train images); repeats {args.repeats} (median)")
    print("running:", file=sys.stderr)
    load_at_start = load_average()
    started = time.perf_counter()
    results = run_in_process(names, args.steps, args.repeats, splits)
    if args.jit:
        results[JIT] = run_jit_subprocess(args.steps, args.repeats, args.jit_timeout)
        names = [*names, JIT]
    print()
    print("\n".join(table(results, names)))
    print(f"* reference for the 'x ref' columns (>1 = slower than sweeplab's loop). "
          f"Benchmark wall time {time.perf_counter() - started:.0f} s.")
    print(f"load average 1/5/15 min: {load_at_start} at start, {load_average()} at end "
          f"(a start value well above 0 means other processes were using the cores)")


if __name__ == "__main__":
    main()
