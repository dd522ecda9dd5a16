"""The r140 sweep's jobs through the engine alone: the floor under `make bench-sweep`'s r140 row.

The same 140 jobs (`experiment=lr_clip dataset=mnist_5k`, the preset's 7 lr x 4 clipping, x 5
seeds), chunked as the stacked launcher chunks them (`runner.grouping.plan_chunks`, the
launcher's max_stack, one chunk per worker in turn), trained by `runner.tasks.image.build`'s compiled engine with the preset's
evaluation every 10 steps and the final test, in one process per core. Left out: everything a
sweep does around the engine (Hydra, MLflow runs and metrics, logs, plots, the launcher).

    .venv/bin/python benchmarks/engine_only.py            # prints the wall seconds
    .venv/bin/python benchmarks/engine_only.py --worker 0 --of 2   # one worker's share
"""
import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = range(5)  # bench_sweep's r140: seed=range(5)


def job_configs(steps=None):
    """Each job's composed config, in the order Hydra's sweeper lists them (seed varies
    fastest), over the lr and clipping values of the preset's own sweeper params. One
    composition per clipping mode, then lr and seed set on a copy: composing all 140 costs
    more than a worker's share of the training."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from runner.config import register_configs

    register_configs()
    base = ["experiment=lr_clip", "dataset=mnist_5k"] + ([f"train.steps={steps}"] if steps else [])
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        params = compose("config", overrides=base, return_hydra_config=True).hydra.sweeper.params
        lrs = [float(v) for v in params["optimizer.lr"].split(",")]
        modes = params["clipping"].split(",")
        by_mode = {mode: compose("config", overrides=[*base, f"clipping={mode}"])
                   for mode in modes}
    cfgs = []
    for lr in lrs:
        for mode in modes:
            for seed in SEEDS:
                cfg = OmegaConf.create(OmegaConf.to_container(by_mode[mode]))
                cfg.optimizer.lr, cfg.seed = lr, seed
                cfgs.append(cfg)
    return cfgs


def train_share(worker: int, workers: int, steps=None) -> None:
    """Train this worker's chunks (every `workers`-th chunk of the plan), as a worker does."""
    sys.path.insert(0, ROOT)
    from hydra_plugins.sweeplab_launcher.stacked_launcher import StackedLauncherConf
    from runner.grouping import plan_chunks

    cfgs = job_configs(steps)
    chunks = plan_chunks(cfgs, [{}] * len(cfgs), StackedLauncherConf.max_stack,
                         workers=workers)

    from runner.engine import configure_threads
    from runner.tasks import image

    configure_threads(cfgs[0].train)
    for chunk in chunks[worker::workers]:
        group = [cfgs[i] for i in chunk.members]
        graph = image.build(group)
        train = group[0].train
        window = image.eval_windows(group, graph.splits, train.eval_size)
        graph.evaluate(*window(0))
        done = 0
        while done < graph.plan.steps:
            k = min(train.eval_every, graph.plan.steps - done)
            graph.train_steps(k)
            done += k
            graph.evaluate(*window(done // train.eval_every))
        graph.evaluate(*image.job_arrays(group, [(s.test.x, s.test.y) for s in graph.splits]))


def run(workers: int, steps=None) -> float:
    """Wall seconds for every worker's share, the workers side by side."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    extra = ["--steps", str(steps)] if steps else []
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", str(w),
                               "--of", str(workers), *extra], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for w in range(workers)]
    errors = [p.communicate()[1] for p in procs]
    failed = [err.strip().splitlines()[-1:] for p, err in zip(procs, errors) if p.returncode]
    if failed:
        raise RuntimeError(f"engine-only worker failed: {failed}")
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--worker", type=int, help="train this worker's share only")
    parser.add_argument("--of", type=int, default=2, help="number of workers (default 2)")
    parser.add_argument("--steps", type=int, help="override train.steps (default: 1000)")
    args = parser.parse_args(argv)
    if args.worker is not None:
        train_share(args.worker, args.of, args.steps)
    else:
        print(f"{run(args.of, args.steps):.1f} s on {args.of} workers")


if __name__ == "__main__":
    main()
