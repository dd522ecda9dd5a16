"""TensorFlow thread settings for small batches: steady ms/step per setting, side by side.

Workload: the seed-000 training loop exactly as benchmarks/bench_loop.py runs it
(`runner.train.make_train_steps`, LeNet, Adam, batch 8, clipping=none, 10 steps per call,
on the bundled 5k MNIST digits). Each setting runs in a fresh child process that calls
`tf.config.threading.set_intra_op_parallelism_threads(n)` /
`set_inter_op_parallelism_threads(m)` right after importing TensorFlow, before any op runs
(TF ignores, or refuses, a change once its runtime is up).

Settings: TF's default (0/0 = as many threads as cores), intra/inter in {1, 2} x {1, 2},
and two processes started together, each training its own model -- once with 1 intra-op
thread each (1/1), once with TF's default threads -- the shape of a 2-worker launcher.

Columns: steady = mean ms per step over every call after the first (tracing excluded);
for the 2-process rows it is the mean of the two processes. "throughput" = steady steps
per second of all processes together (their steady phases must overlap; a warning says if
they did not). "trace" = first call minus its steps at the steady rate. Ratios are to
the default row (ms/step: < 1 is faster; throughput: > 1 is more steps per second).
`--rounds N` repeats every setting N times, interleaved, and reports medians.

Usage (from the project root):
  .venv/bin/python benchmarks/bench_threads.py
  .venv/bin/python benchmarks/bench_threads.py --steps 2000 --rounds 3
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JSON_PREFIX = "BENCH_JSON "

# label -> (intra, inter, processes); None = TF's default
SETTINGS = {
    "default": (None, None, 1),
    "intra 1 / inter 1": (1, 1, 1),
    "intra 1 / inter 2": (1, 2, 1),
    "intra 2 / inter 1": (2, 1, 1),
    "intra 2 / inter 2": (2, 2, 1),
    "2 procs, intra 1 / inter 1 each": (1, 1, 2),
    "2 procs, default threads each": (None, None, 2),
}


# ---------------------------------------------------------------- child: one measurement

def child(intra, inter, steps):
    """Set threads, then train seed 000 for `steps` and print one JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if intra is not None:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter is not None:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import bench_loop  # the same config, data, model and loop as `make bench`
    from runner import data

    cfg = bench_loop.compose_cfg(steps, ["clipping=none"])
    splits = data.load(cfg.dataset, cfg.seed)
    calls, loss = bench_loop.loop_sweeplab(cfg, splits, steps)
    ended = time.time()
    result = bench_loop.summarise("threads", calls, loss)
    print(JSON_PREFIX + json.dumps({
        "steady_ms": result.steady * 1e3, "trace_s": result.trace, "total_s": result.total,
        "steady_from": ended - sum(seconds for _, seconds in calls[1:]), "steady_to": ended,
        "loss": loss,
        "threads": [tf.config.threading.get_intra_op_parallelism_threads(),
                    tf.config.threading.get_inter_op_parallelism_threads()]}), flush=True)


# ---------------------------------------------------------------- parent: settings

def start_child(intra, inter, steps):
    command = [sys.executable, os.path.abspath(__file__), "--child", "--steps", str(steps)]
    if intra is not None:
        command += ["--intra", str(intra)]
    if inter is not None:
        command += ["--inter", str(inter)]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def result_of(process):
    out, err = process.communicate(timeout=900)
    for line in out.splitlines():
        if line.startswith(JSON_PREFIX):
            return json.loads(line[len(JSON_PREFIX):])
    raise RuntimeError(f"child failed (exit {process.returncode}): {err.strip()[-800:]}")


def measure(setting, steps):
    """{steady_ms, throughput}: one run of `setting` (all its processes at once)."""
    intra, inter, processes = SETTINGS[setting]
    results = [result_of(p) for p in [start_child(intra, inter, steps)
                                      for _ in range(processes)]]
    # Steady steps per second of all processes together; valid when their steady phases
    # overlapped (they start together and do the same work), which is checked here.
    overlap = (min(r["steady_to"] for r in results) - max(r["steady_from"] for r in results))
    longest = max(r["steady_to"] - r["steady_from"] for r in results)
    if overlap < 0.8 * longest:
        print(f" (warning: steady phases overlapped only {max(overlap, 0) / longest:.0%})",
              end="", file=sys.stderr)
    return {"steady_ms": statistics.mean(r["steady_ms"] for r in results),
            "trace_s": statistics.mean(r["trace_s"] for r in results),
            "throughput": sum(1e3 / r["steady_ms"] for r in results),
            "threads": results[0]["threads"]}


def ratio(value, reference):
    return f"{value / reference:.2f}x" if reference else "-"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps per process")
    parser.add_argument("--rounds", type=int, default=2,
                        help="run every setting N times, interleaved; report medians")
    parser.add_argument("--setting", action="append", choices=list(SETTINGS),
                        help="only these settings (repeatable; 'default' is always run)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--intra", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--inter", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.intra, args.inter, args.steps)

    names = ["default", *[s for s in (args.setting or SETTINGS) if s != "default"]]
    load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs = {name: [] for name in names}
    for round_ in range(args.rounds):
        for name in names:
            print(f"  [{round_ + 1}/{args.rounds}] {name} ...", end="", flush=True,
                  file=sys.stderr)
            runs[name].append(measure(name, args.steps))
            print(f" {runs[name][-1]['steady_ms']:.2f} ms/step", file=sys.stderr, flush=True)
    median = {name: {key: statistics.median(r[key] for r in rs) for key in
                     ("steady_ms", "trace_s", "throughput")} | {"threads": rs[0]["threads"]}
              for name, rs in runs.items()}
    ref = median["default"]
    print(f"seed-000 loop (LeNet, batch 8, clipping=none, k=10), {args.steps} steps per "
          f"process, median of {args.rounds} round(s); nproc={len(os.sched_getaffinity(0))}")
    header = (f"{'setting':<34} {'TF intra/inter':>14} {'steady ms/step':>15} {'x default':>9} "
              f"{'trace s':>8} {'throughput steps/s':>19} {'x default':>9}")
    print(header)
    print("-" * len(header))
    for name in names:
        m = median[name]
        print(f"{name:<34} {'%d/%d' % tuple(m['threads']):>14} {m['steady_ms']:>15.3f} "
              f"{ratio(m['steady_ms'], ref['steady_ms']):>9} {m['trace_s']:>8.2f} "
              f"{m['throughput']:>19.0f} {ratio(m['throughput'], ref['throughput']):>9}")
    print("TF intra/inter as TF reports them in the child (0 = TF's default: one per core). "
          "2-process rows: ms/step is per process; throughput counts both.")
    print(f"load average 1/5/15 min: {load_at_start} at start, "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at end (2 cores shared with "
          f"other work: above ~1 inflates every row)")


if __name__ == "__main__":
    main()
