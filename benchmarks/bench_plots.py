"""Per-run plot cost: the old rendering next to the new one, side by side in one run.

What a job draws at its end (runner.train.log_figures), from histories shaped like the real
ones (synthetic values, real lengths and names):
  seed 000  LeNet, 1000 steps, an evaluation every 10 (101 points), per-variable gradient
            norms of its 10 variables per interval, its 5 kernels as images:
            curves, grad_norms, grad_norms_per_variable, weights.
  seed 003  784-1500-1000-500-10 MLP, 30000 steps, an evaluation every 100, curves also
            without the first 20 evaluations, its 4 weight matrices (784x1500 ...) as images:
            curves, curves_skip20, grad_norms, grad_norms_per_variable, weights.
Each figure is built and written as PNG with `figure.savefig(path, **savefig_kwargs)`, the
call MLflow's `log_figure(..., save_kwargs=rendering.savefig_kwargs)` makes (`--mlflow` goes
through a real `MlflowClient.log_figure` into a sqlite store in a temporary folder instead).
Renderings: `old` = runner.plots.DETAILED (every point, 100 dpi, constrained layout,
matplotlib's own ticks, zlib level 6), `new` = runner.plots.CHEAP (the default).

Timed: CPU seconds of this process (time.process_time) per figure, median over --repeats,
old and new interleaved. "fresh process" rows: a job draws its figures once, in a process
that has never drawn text (font and mathtext set-up), so the seed-000 set is also drawn once
in a new child process per rendering.

Usage (from the project root):
  .venv/bin/python benchmarks/bench_plots.py
  .venv/bin/python benchmarks/bench_plots.py --repeats 9 --mlflow
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from runner import plots  # noqa: E402

RENDERINGS = {"old": plots.DETAILED, "new": plots.CHEAP}
LENET_KERNELS = {"conv1/kernel": (5, 5, 1, 6), "conv2/kernel": (5, 5, 6, 16),
                 "fc1/kernel": (400, 120), "fc2/kernel": (120, 84), "logits/kernel": (84, 10)}
LENET_VARIABLES = [v for k in LENET_KERNELS for v in (k, k.replace("kernel", "bias"))]
MLP_KERNELS = {f"dense_{i}/kernel": shape for i, shape in
               enumerate([(784, 1500), (1500, 1000), (1000, 500), (500, 10)])}
MLP_VARIABLES = [v for k in MLP_KERNELS for v in (k, k.replace("kernel", "bias"))]
JSON_PREFIX = "BENCH_JSON "


# ---------------------------------------------------------------- workloads

def history(steps, eval_every, variables, seed=0):
    """A run's history as runner.train.fit builds it: noisy decaying loss, spiky norms."""
    rng = np.random.default_rng(seed)
    s = np.arange(1, steps + 1)
    decay = np.exp(-s / (steps / 5))
    grad_norm = np.exp(rng.normal(0, 0.6, steps)) * (3 * decay + 0.5)
    per_step = {
        "train_loss": 2.3 * decay + 0.1 + rng.gamma(2, 0.15, steps),
        "penalty": np.zeros(steps), "lr": np.full(steps, 0.01),
        "grad_norm": grad_norm, "grad_norm_clipped": np.minimum(grad_norm, 0.02),
        "clip_fraction": rng.uniform(0.6, 1, steps)}
    h = {name: list(zip(s.tolist(), v.tolist())) for name, v in per_step.items()}
    evals = np.arange(0, steps + 1, eval_every)
    val_decay = np.exp(-evals / (steps / 5))
    h["val_loss"] = list(zip(evals.tolist(),
                             (2.3 * val_decay + 0.2 + rng.normal(0, 0.05, len(evals))).tolist()))
    h["val_acc"] = list(zip(evals.tolist(),
                            (1 - 0.9 * val_decay - rng.uniform(0, 0.05, len(evals))).tolist()))
    scale = {v: np.exp(rng.normal(0, 1.5)) for v in variables}
    for key, factor in (("var_norms", 1.0), ("var_norms_clipped", 0.01)):
        h[key] = [(int(e), {v: float(scale[v] * factor * np.exp(rng.normal(0, 0.5)))
                            for v in variables}) for e in evals[1:]]
    return h


def weights(shapes, seed=1):
    rng = np.random.default_rng(seed)
    return {name: rng.normal(0, 0.1, shape).astype(np.float32) for name, shape in shapes.items()}


def workloads():
    """name -> [(figure file, rendering -> Figure)], as runner.train.log_figures draws them."""
    h0, w0 = history(1000, 10, LENET_VARIABLES), weights(LENET_KERNELS)
    h3, w3 = history(30000, 100, MLP_VARIABLES), weights(MLP_KERNELS)
    return {
        "seed000": [
            ("curves.png", lambda r: plots.curves(h0, rendering=r)),
            ("grad_norms.png", lambda r: plots.grad_norms(h0, rendering=r)),
            ("grad_norms_per_variable.png", lambda r: plots.grad_norms_per_variable(h0, r)),
            ("weights.png", lambda r: plots.weight_images(w0, r))],
        "seed003": [
            ("curves.png", lambda r: plots.curves(h3, rendering=r)),
            ("curves_skip20.png", lambda r: plots.curves(h3, skip_first=20, rendering=r)),
            ("grad_norms.png", lambda r: plots.grad_norms(h3, rendering=r)),
            ("grad_norms_per_variable.png", lambda r: plots.grad_norms_per_variable(h3, r)),
            ("weights.png", lambda r: plots.weight_images(w3, r))],
    }


# ---------------------------------------------------------------- measuring

def png_writer(folder, use_mlflow):
    """(figure, name, rendering) -> path of the PNG written, the way the job writes it."""
    if not use_mlflow:
        def write(figure, name, rendering):
            path = os.path.join(folder, name)
            figure.savefig(path, **rendering.savefig_kwargs)  # what log_figure does
            return path
        return write
    from mlflow.tracking import MlflowClient  # only with --mlflow: importing it takes seconds

    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    exp = client.create_experiment("bench_plots", artifact_location=f"{folder}/artifacts")
    run_id = client.create_run(exp).info.run_id

    def write(figure, name, rendering):
        client.log_figure(run_id, figure, f"plots/{name}", save_kwargs=rendering.savefig_kwargs)
        return os.path.join(folder, "artifacts", run_id, "artifacts", "plots", name)
    return write


def cpu_seconds(make, rendering, write, name):
    """CPU seconds to build one figure and write its PNG; also its pixel size and bytes."""
    started = time.process_time()
    path = write(make(rendering), name, rendering)
    seconds = time.process_time() - started
    with Image.open(path) as image:
        size = image.size
    return seconds, size, os.path.getsize(path)


def measure_warm(repeats, use_mlflow):
    """{(workload, figure, rendering): (median seconds, (w, h) px, bytes)}; one warm-up pass."""
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        write = png_writer(folder, use_mlflow)
        for workload, figures in workloads().items():
            for name, make in figures:
                for rendering in RENDERINGS.values():
                    cpu_seconds(make, rendering, write, name)  # warm-up, untimed
                runs = {label: [] for label in RENDERINGS}
                for _ in range(repeats):  # interleaved, so load changes hit both alike
                    for label, rendering in RENDERINGS.items():
                        runs[label].append(cpu_seconds(make, rendering, write, name))
                for label, rs in runs.items():
                    results[(workload, name, label)] = (
                        statistics.median(r[0] for r in rs), rs[-1][1], rs[-1][2])
    return results


def measure_fresh(label, use_mlflow):
    """Seed 000's figures drawn once in a new process: {figure: seconds}, plus 'total'."""
    command = [sys.executable, os.path.abspath(__file__), "--child-fresh", label]
    if use_mlflow:
        command.append("--mlflow")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    for line in done.stdout.splitlines():
        if line.startswith(JSON_PREFIX):
            return json.loads(line[len(JSON_PREFIX):])
    raise RuntimeError(f"fresh-process child failed: {done.stderr.strip()[-500:]}")


def child_fresh(label, use_mlflow):
    with tempfile.TemporaryDirectory() as folder:
        write = png_writer(folder, use_mlflow)
        figures = workloads()["seed000"]
        started = time.process_time()
        seconds = {name: cpu_seconds(make, RENDERINGS[label], write, name)[0]
                   for name, make in figures}
        seconds["total"] = time.process_time() - started
    print(JSON_PREFIX + json.dumps(seconds), flush=True)


# ---------------------------------------------------------------- report

def ratio(old, new):
    return f"{old / new:.1f}x" if new > 0 else "-"


def report(warm, fresh, repeats):
    header = (f"{'workload / figure':<38} {'old ms':>8} {'new ms':>8} {'old/new':>8}  "
              f"{'old px':>10} {'new px':>9} {'old KB':>7} {'new KB':>7}")
    lines = [header, "-" * len(header)]
    for workload, figures in workloads().items():
        totals = {"old": 0.0, "new": 0.0}
        for name, _ in figures:
            (old, old_px, old_b), (new, new_px, new_b) = (
                warm[(workload, name, label)] for label in ("old", "new"))
            totals["old"] += old
            totals["new"] += new
            lines.append(f"{workload + ' ' + name:<38} {old * 1e3:>8.0f} {new * 1e3:>8.0f} "
                         f"{ratio(old, new):>8}  {'%dx%d' % old_px:>10} {'%dx%d' % new_px:>9} "
                         f"{old_b / 1024:>7.0f} {new_b / 1024:>7.0f}")
        lines.append(f"{workload + ' all figures':<38} {totals['old'] * 1e3:>8.0f} "
                     f"{totals['new'] * 1e3:>8.0f} {ratio(totals['old'], totals['new']):>8}")
    if fresh:
        old, new = fresh["old"]["total"], fresh["new"]["total"]
        lines.append(f"{'seed000 all, fresh process (one job)':<38} {old * 1e3:>8.0f} "
                     f"{new * 1e3:>8.0f} {ratio(old, new):>8}")
    lines.append(f"CPU ms per figure (build + PNG), median of {repeats} warm repeats; "
                 f"fresh process: one pass, includes font/mathtext set-up.")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=5, help="warm repeats per figure")
    parser.add_argument("--mlflow", action="store_true",
                        help="write PNGs through MlflowClient.log_figure (sqlite in a tmp dir)")
    parser.add_argument("--no-fresh", action="store_true",
                        help="skip the fresh-process rows (two child processes)")
    parser.add_argument("--child-fresh", choices=list(RENDERINGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_fresh:
        return child_fresh(args.child_fresh, args.mlflow)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    fresh = None if args.no_fresh else {label: measure_fresh(label, args.mlflow)
                                        for label in RENDERINGS}
    warm = measure_warm(args.repeats, args.mlflow)
    import matplotlib  # noqa: E402  (already imported by runner.plots)

    print(f"matplotlib {matplotlib.__version__}, PNG via "
          f"{'MlflowClient.log_figure' if args.mlflow else 'Figure.savefig'}; "
          f"old = {plots.DETAILED}")
    print(f"new = {plots.CHEAP}")
    print("\n".join(report(warm, fresh, args.repeats)))
    print(f"load average 1/5/15 min: {load} at start, "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at end (2 cores: above ~1 means "
          f"other processes shared them and CPU times are inflated)")


if __name__ == "__main__":
    main()
