"""The mission's sweeps end to end, one launcher after another, side by side in one run.

Workloads (`--workloads`, default s16,r140):
  s16   python -m runner -m experiment=lenet_clip dataset=mnist_5k \
            optimizer.lr=0.00005,0.0005,0.005,0.05 clipping=none,value,norm,global_norm
        (16 jobs) on every launcher
  r140  python -m runner -m experiment=lr_clip seed=range(5)
        (7 lr x 4 clipping x 5 seeds = 140 jobs, replicates stacked) on the stacked launcher;
        its per-job cost is compared with basic's per job on s16 (the same LeNet job)

Each launcher gets a fresh temporary folder (its cwd, sweep dir and sqlite MLflow store):
  basic    Hydra's basic launcher: the 16 jobs one after another in one process
  joblib   hydra/launcher=joblib hydra.launcher.n_jobs=2 (two worker processes)
  stacked  hydra/launcher=stacked, the project's own launcher; "n/a (not installed)" when
           `python -m runner hydra/launcher=stacked --cfg hydra` does not compose here
  engine   r140 only, and not a launcher: the same 140 jobs, chunked as the stacked launcher
           chunks them, through the compiled engine alone (training, every evaluation, the
           test) in one process per core, without Hydra, MLflow, logs or plots
           (benchmarks/engine_only.py). The floor under the stacked row: what the sweep would
           take if everything around the engine were free.

Timed: wall seconds from starting `python -m runner` to its exit (every job done, the parent
run closed), and the CPU seconds of that process tree. Then the store is read back: every
child run must be FINISHED with plots/curves.png, else a warning line says which are not.

Per-job breakdown, mean over the children, from MLflow metrics the runner logs at the end
of each job: time/setup, time/trace, time/train, time/eval, time/tracking, time/plots
("-" where a metric is absent). Also shown, from what every run has today: the child run's
own wall time in MLflow (create -> terminated, so not the job's process start, imports and
data loading) and `train_seconds` (inside the compiled training calls, tracing included).

Usage (from the project root; `make bench-sweep` runs the first line):
  .venv/bin/python benchmarks/bench_sweep.py
  .venv/bin/python benchmarks/bench_sweep.py --steps 100 --launchers basic,joblib
"""
import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKLOADS = {  # name -> (overrides, jobs, launchers it runs on by default)
    "s16": (["-m", "experiment=lenet_clip", "dataset=mnist_5k",
             "optimizer.lr=0.00005,0.0005,0.005,0.05", "clipping=none,value,norm,global_norm"],
            16, ("basic", "joblib", "stacked")),
    "r140": (["-m", "experiment=lr_clip", "dataset=mnist_5k", "seed=range(5)"], 140,
             ("stacked", "engine")),
}
LAUNCHERS = {
    "basic": ["hydra/launcher=basic"],  # stacked is the default for -m
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "stacked": ["hydra/launcher=stacked"],
    "engine": None,  # not a launcher: r140's jobs through the engine alone (engine_only.py)
}
TIMERS = ("setup", "trace", "train", "eval", "tracking", "plots")  # metrics time/<name>
EXPERIMENT = "sweeplab"  # conf: mlflow.experiment_name


def runner_env():
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                TF_CPP_MIN_LOG_LEVEL="2")


def installed(launcher, folder):
    """Does `hydra/launcher=<launcher>` compose in this checkout (plugin found by Hydra)?"""
    if not LAUNCHERS[launcher]:  # basic needs nothing; engine is no launcher
        return True
    probe = subprocess.run([sys.executable, "-m", "runner", *LAUNCHERS[launcher], "--cfg",
                            "hydra", "-p", "hydra.launcher"], cwd=folder, env=runner_env(),
                           capture_output=True, text=True, timeout=300)
    return probe.returncode == 0


def run_sweep(workload, launcher, folder, steps):
    """Run the sweep once in `folder`; (wall seconds, CPU seconds, exit code, stderr tail)."""
    command = [sys.executable, "-m", "runner", *WORKLOADS[workload][0], *LAUNCHERS[launcher],
               f"mlflow.tracking_uri=sqlite:///{folder}/mlflow.db",
               f"hydra.sweep.dir={folder}/sweep"]
    if steps:
        command.append(f"train.steps={steps}")
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=runner_env(), capture_output=True,
                          text=True, timeout=3600)
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return wall, cpu, done.returncode, done.stderr.strip().splitlines()[-3:]


def run_engine_only(jobs, steps):
    """The `engine` row: r140's jobs through the engine alone, one worker per core."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import engine_only

    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = engine_only.run(len(os.sched_getaffinity(0)), steps)
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    row = {"wall": wall, "cpu": cpu, "jobs": jobs, "ok": jobs, "run_wall": None,
           "train_seconds": None}
    row.update({name: None for name in TIMERS})
    return row


def read_store(folder):
    """Children of the sweep: [(run, {timer: seconds}, has curves.png)], from the store."""
    from mlflow.tracking import MlflowClient  # slow import: only once a sweep has run

    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    children = []
    for run in runs:
        if "mlflow.parentRunId" not in run.data.tags:
            continue
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        timers = {name: run.data.metrics[f"time/{name}"] for name in TIMERS
                  if f"time/{name}" in run.data.metrics}
        children.append((run, timers, "plots/curves.png" in plots))
    return children


def summarise(launcher, jobs, wall, cpu, code, stderr, children):
    """One row of numbers plus the warning lines for `launcher`."""
    warnings = []
    if code != 0:
        warnings.append(f"{launcher}: exit code {code}: {' | '.join(stderr)[-300:]}")
    if len(children) != jobs:
        warnings.append(f"{launcher}: {len(children)} child runs in the store, expected {jobs}")
    unfinished = [r.info.run_name for r, _, _ in children if r.info.status != "FINISHED"]
    if unfinished:
        warnings.append(f"{launcher}: not FINISHED: {', '.join(unfinished)}")
    no_plots = [r.info.run_name for r, _, has in children if not has]
    if no_plots:
        warnings.append(f"{launcher}: no plots/curves.png: {', '.join(no_plots)}")

    def mean(values):
        values = [v for v in values if v is not None]
        return statistics.mean(values) if values else None

    row = {"wall": wall, "cpu": cpu, "jobs": jobs,
           "ok": sum(1 for r, _, has in children if r.info.status == "FINISHED" and has),
           "run_wall": mean([(r.info.end_time - r.info.start_time) / 1e3
                             for r, _, _ in children if r.info.end_time]),
           "train_seconds": mean([r.data.metrics.get("train_seconds") for r, _, _ in children])}
    for name in TIMERS:
        row[name] = mean([timers.get(name) for _, timers, _ in children])
    return row, warnings


# ---------------------------------------------------------------- report

def cell(value, width, digits=2):
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def report(rows, skipped, steps):
    """rows: {(workload, launcher): row}. Ratios against basic's wall time per job on s16."""
    basic = rows.get(("s16", "basic"))
    lines = [f"train.steps={steps or 'preset (1000)'}; nproc={len(os.sched_getaffinity(0))}; "
             "x basic = basic's wall per job on s16 / this row's wall per job (> 1 = faster)",
             "", f"{'workload':<9} {'launcher':<9} {'jobs':>5} {'wall s':>8} {'s/job':>7} "
             f"{'x basic':>8} {'CPU s':>8} {'jobs ok':>8}"]
    for (workload, name), row in rows.items():
        per_job = row["wall"] / row["jobs"]
        speedup = f"{basic['wall'] / basic['jobs'] / per_job:.2f}x" if basic else "-"
        lines.append(f"{workload:<9} {name:<9} {row['jobs']:>5} {row['wall']:>8.1f} "
                     f"{per_job:>7.2f} {speedup:>8} {row['cpu']:>8.1f} "
                     f"{row['ok']:>4}/{row['jobs']}")
    for workload, name in skipped:
        lines.append(f"{workload:<9} {name:<9} n/a (not installed)")
    lines += ["", "per job, mean over children, seconds ('-' = metric not logged):",
              f"{'workload':<9} {'launcher':<9} " + " ".join(f"{t:>8}" for t in TIMERS)
              + f" {'mlflow run':>10} {'train_s':>8}"]
    for (workload, name), row in rows.items():
        lines.append(f"{workload:<9} {name:<9} " + " ".join(cell(row[t], 8) for t in TIMERS)
                     + f" {cell(row['run_wall'], 10)} {cell(row['train_seconds'], 8)}")
    lines.append("mlflow run: a child run's create -> terminated time. train_s: the runner's "
                 "train_seconds metric (compiled training calls incl. tracing, a stacked "
                 "job's share).")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, help="override train.steps (default: the "
                        "preset's 1000) for a quick run")
    parser.add_argument("--launchers", default=None,
                        help="comma-separated, from: " + ",".join(LAUNCHERS)
                        + " (default: each workload's own)")
    parser.add_argument("--workloads", default="s16,r140",
                        help="comma-separated, from: " + ",".join(WORKLOADS))
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folders (sweep dirs, stores) and print them")
    args = parser.parse_args(argv)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not workloads or any(w not in WORKLOADS for w in workloads):
        parser.error(f"--workloads: choose from {','.join(WORKLOADS)}")
    names = None if args.launchers is None else [
        n.strip() for n in args.launchers.split(",") if n.strip()]
    if names is not None and (not names or any(n not in LAUNCHERS for n in names)):
        parser.error(f"--launchers: choose from {','.join(LAUNCHERS)}")
    if "engine" in (names or []) and "r140" not in workloads:
        parser.error("--launchers engine: r140's jobs only (add r140 to --workloads)")
    plan = [(w, n) for w in workloads for n in (names or WORKLOADS[w][2])
            if n != "engine" or w == "r140"]

    load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows, skipped, warnings = {}, [], []
    for workload, name in plan:
        folder = tempfile.mkdtemp(prefix=f"bench_sweep_{workload}_{name}_")
        try:
            if not installed(name, folder):
                skipped.append((workload, name))
                continue
            print(f"  {workload} {name} ...", end="", flush=True, file=sys.stderr)
            if name == "engine":
                rows[(workload, name)] = run_engine_only(WORKLOADS[workload][1], args.steps)
                print(f" {rows[(workload, name)]['wall']:.1f} s", file=sys.stderr, flush=True)
                continue
            wall, cpu, code, stderr = run_sweep(workload, name, folder, args.steps)
            print(f" {wall:.1f} s", file=sys.stderr, flush=True)
            rows[(workload, name)], found = summarise(f"{workload} {name}",
                                                      WORKLOADS[workload][1], wall, cpu, code,
                                                      stderr, read_store(folder))
            warnings += found
        finally:
            if args.keep:
                print(f"  kept {folder}", file=sys.stderr)
            else:
                shutil.rmtree(folder, ignore_errors=True)
    print("\n".join(report(rows, skipped, args.steps)))
    for line in warnings:
        print(f"WARNING: {line}")
    print(f"load average 1/5/15 min: {load_at_start} at start, "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at end (2 cores: above ~1 means "
          f"other processes shared them; wall times are then inflated)")


if __name__ == "__main__":
    main()
