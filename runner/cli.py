"""Command line: `python -m runner` / `sweeplab`. Hydra parses overrides and sweeps.

`sweeplab report ...`, `sweeplab sync ...`, `sweeplab resume ...` and `sweeplab server ...` are
subcommands (SUBCOMMANDS); anything else is the Hydra app. One job: validate the config once (before
TensorFlow loads), check the tracking store, pick its task, run it. A job never raises into
Hydra (Hydra's basic sweeper would abort the sweep): a failure ends its run FAILED and the
sweep goes on.
"""
import os
import sys
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

# runner/__init__.py has set TF_CPP_MIN_LOG_LEVEL by now. Nothing below loads MLflow,
# matplotlib or TensorFlow: `--help` prints without them (tests/test_help.py).
from runner import data, progress, signals, store, sweep, sync, tasks
from runner.config import ConfigError, register_configs, validate
from runner.help import register_help_resolver
from runner.outbox import one_line
from runner.tracking import (JobContext, Stopped, config_hash, record_failure, recorded_run,
                             tracking_uri)

register_configs()
register_help_resolver()  # `--help` lists the options from conf/
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


def job_context() -> JobContext:
    """This job's overrides, log file and (in a sweep) parent run, from Hydra's job config."""
    if not HydraConfig.initialized():
        return JobContext(should_stop=signals.received)
    hydra_cfg = HydraConfig.get()
    parent, common, uri = sweep.job_sweep_context()
    output_dir = hydra_cfg.runtime.output_dir
    log_file = os.path.join(output_dir, f"{hydra_cfg.job.name}.log")
    return JobContext(overrides=tuple(hydra_cfg.overrides.task), parent_run_id=parent,
                      common_overrides=tuple(common), log_file=log_file,
                      output_dir=output_dir, should_stop=signals.received, tracking_uri=uri)


def run_task(cfg, job: JobContext) -> float:
    """Hand a validated config to its task."""
    # Imported here, after validation, so that `--help` and a bad value answer in a second
    # instead of waiting for TensorFlow to load.
    data.read_ahead(cfg)  # a damaged data file: one line, before TensorFlow's start-up lines
    if tasks.spec_for(cfg.model) is tasks.LANGUAGE_MODEL:
        from runner.tasks import language_model as task
    else:
        from runner.tasks import image as task
    return task.run(cfg, job)


def reject(err: ConfigError) -> float:
    """One line naming the option and the fix; no traceback for a user's typo.

    A single run exits 2. In a sweep the other jobs still run: the job is marked rejected, and
    the sweep exits non-zero at the end. Launchers that run jobs themselves call this too.
    """
    print(f"sweeplab: error: {store.redact(str(err))}", file=sys.stderr, flush=True)
    if not sweep.in_multirun():
        sys.exit(2)
    sweep.mark_rejected(str(err))
    return float("nan")


def already_finished(cfg, job: JobContext):
    """In a resumed sweep: this config's FINISHED run under the same parent, if any."""
    if not job.parent_run_id:
        return None
    try:
        client = store.open_client(job.tracking_uri or tracking_uri(cfg.mlflow))
        return sweep.finished_run(client, job.parent_run_id, config_hash(cfg))
    except Exception as err:  # the store is down: train anyway, the run saves what it can't send
        if not store.is_transient(err):
            raise
        return None


def run_job(cfg) -> float:
    """One job, start to end; returns the task's objective (NaN if it did not train)."""
    multirun = sweep.in_multirun()
    job = job_context()
    if signals.received():
        print(f"sweeplab: skipped (stopping on {signals.name(signals.received())}): "
              f"{' '.join(job.overrides) or '(defaults)'}", file=sys.stderr, flush=True)
        return float("nan")
    try:
        validate(cfg)
        if not multirun:  # a sweep checks its store once, before the first job
            store.check_store(cfg.mlflow)
        done = finished_value(cfg, job)
        if done is not None:
            return done
        value = run_task(cfg, job)
        if not multirun:
            progress.reporter().close()
        return value
    except ConfigError as err:
        return reject(err)
    except Stopped:
        pass  # its run is closed KILLED; the sweep (or main) reports the signal
    except Exception as err:  # data error, out of memory, a bug: this job fails, not the sweep
        say_failed(job, err, run=recorded_run(err) or record_failed_job(cfg, job, err))
        if not multirun:
            sys.exit(1)
    return float("nan")


def finished_value(cfg, job: JobContext) -> Optional[float]:
    """In a resumed sweep, a job whose config already has a FINISHED run: says so and returns
    that run's objective (what the job would return); None if the job has to run."""
    done = already_finished(cfg, job)
    if done is None:
        return None
    print(f"already finished: run {done.info.run_id} ({done.info.run_name})", flush=True)
    return done.data.metrics.get(tasks.spec_of_run(done.data.tags).objective, float("nan"))


def say_failed(job: JobContext, err: BaseException, run: Optional[str] = None) -> None:
    """The one line a job that raised gets on stderr (its run holds the traceback)."""
    print(f"sweeplab: error: job {' '.join(job.overrides) or '(defaults)'} failed: "
          f"{one_line(err)}; {f'run {run}' if run else 'its run'} is FAILED, traceback in its "
          f"error.txt", file=sys.stderr, flush=True)


def record_failed_job(cfg, job: JobContext, err: Exception):
    """A FAILED run for a job that broke before its run existed (best effort)."""
    try:
        return record_failure(cfg, job, err)
    except Exception as tracking_err:
        return f"(not recorded: {one_line(tracking_err)})"


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_app(cfg: DictConfig) -> float:
    with signals.job():
        return run_job(cfg)


def run_app() -> int:
    """The Hydra app in this process; exits 128 + signal if SIGINT/SIGTERM stopped it."""
    signals.install_launcher()
    try:
        hydra_app()
    finally:
        sweep.close_abandoned_sweep()
    signum = signals.received()
    if signum:
        print(f"sweeplab: stopped by {signals.name(signum)}", file=sys.stderr, flush=True)
        return signals.exit_code()
    return 0


def resume(argv) -> int:
    """sweeplab resume <sweep dir | parent run id> [overrides]: the unfinished jobs only."""
    overrides, code = sync.resume_overrides(argv)
    if overrides is None:
        return code
    sys.argv = [sys.argv[0], *overrides]
    return run_app()


def server(argv) -> int:
    from runner import server as team_server  # PostgreSQL + mlflow server: only for this subcommand

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
