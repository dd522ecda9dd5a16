"""Command line: `python -m runner` / `sweeplab`. Hydra parses overrides and sweeps.

`sweeplab report ...`, `sweeplab sync ...`, `sweeplab resume ...` and `sweeplab server ...` are
subcommands (SUBCOMMANDS); anything else is the Hydra app, whose task function runs one job
through its lifecycle (runner/jobs.py: accept, train, conclude). A single run exits with the
job's code (2 a rejected value, 1 a failure); in a sweep a job never raises into Hydra and the
sweep reports at its end (runner/sweep.py).
"""
import os
import sys

import hydra
from omegaconf import DictConfig

# runner/__init__.py has set TF_CPP_MIN_LOG_LEVEL by now. Nothing below loads MLflow,
# matplotlib or TensorFlow: `--help` prints without them (tests/test_help.py).
from runner import jobs, progress, resume as sweep_resume, signals, sweep, sync
from runner.config import register_configs
from runner.help import register_help_resolver

register_configs()
register_help_resolver()  # `--help` lists the options from conf/
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


def run_job(cfg) -> float:
    """One job, start to end; returns its objective (NaN if it did not train)."""
    multirun = sweep.in_multirun()
    job = jobs.accept(cfg, check_store=not multirun)  # a sweep checked its store already
    result = job.early if job.early is not None else jobs.train(jobs.Group([job]))[0]
    value, code = jobs.conclude(job, result, in_sweep=multirun)
    if not multirun:
        progress.reporter().close()
        if code in (1, 2):  # a signal's code comes from run_app, after it says so
            sys.exit(code)
    return value


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_app(cfg: DictConfig) -> float:
    with signals.job():
        return run_job(cfg)


def run_app() -> int:
    """The Hydra app in this process; exits 128 + signal if SIGINT/SIGTERM stopped it."""
    signals.install_launcher()
    try:
        hydra_app()
    except sweep.Abandoned as stop:  # its jobs concluded it already: one line, exit 1
        progress.reporter().close()
        not_closed = sweep.close_abandoned_sweep(str(stop))
        print(f"sweeplab: error: {stop}" + (f"; {not_closed}" if not_closed else ""),
              file=sys.stderr, flush=True)
        return 1
    finally:
        sweep.close_abandoned_sweep()
    signum = signals.received()
    if signum:
        print(f"sweeplab: stopped by {signals.name(signum)}", file=sys.stderr, flush=True)
        return signals.exit_code()
    return 0


def resume(argv) -> int:
    """sweeplab resume <sweep dir | parent run id> [overrides]: the unfinished jobs only."""
    overrides, code = sweep_resume.resume_overrides(argv)
    if overrides is None:
        return code
    sys.argv = [sys.argv[0], *overrides]
    return run_app()


def server(argv) -> int:
    from runner import server as team_server  # PostgreSQL + mlflow: only for this subcommand

    return team_server.main(argv)


def report(argv) -> int:
    from runner import report as sweep_report  # matplotlib and rich only for this subcommand

    return sweep_report.main(argv)


# `sweeplab <name> ...`: each takes the remaining arguments and returns an exit code.
SUBCOMMANDS = {"report": report, "sync": sync.main, "resume": resume, "server": server}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        sys.exit(SUBCOMMANDS[sys.argv[1]](sys.argv[2:]))
    sys.exit(run_app())
