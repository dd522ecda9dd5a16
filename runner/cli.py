"""Command line: `python -m runner` / `sweeplab`. Hydra parses overrides and sweeps.

One job: validate the config once (before TensorFlow loads), pick its task, run it.
`sweeplab report ...` (and the other SUBCOMMANDS) are plain argparse programs; anything else
is the Hydra app.
"""
import os
import sys

# Quiet TensorFlow's C++ start-up chatter before it is imported anywhere.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from runner import progress, sweep, tasks  # noqa: E402
from runner.config import ConfigError, register_configs, validate  # noqa: E402
from runner.tracking import JobContext  # noqa: E402

register_configs()
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


def job_context() -> JobContext:
    """This job's overrides, log file and (in a sweep) parent run, from Hydra's job config."""
    if not HydraConfig.initialized():
        return JobContext()
    hydra_cfg = HydraConfig.get()
    parent, common = sweep.job_sweep_context()
    log_file = os.path.join(hydra_cfg.runtime.output_dir, f"{hydra_cfg.job.name}.log")
    return JobContext(overrides=tuple(hydra_cfg.overrides.task), parent_run_id=parent,
                      common_overrides=tuple(common), log_file=log_file)


def run_task(cfg, job: JobContext) -> float:
    """Hand a validated config to its task."""
    # Imported here, after validation, so that `--help` and a bad value answer in a second
    # instead of waiting for TensorFlow to load.
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
    print(f"sweeplab: error: {err}", file=sys.stderr, flush=True)
    if not sweep.in_multirun():
        sys.exit(2)
    sweep.mark_rejected(str(err))
    return float("nan")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_app(cfg: DictConfig) -> float:
    try:
        validate(cfg)
        value = run_task(cfg, job_context())
        if not sweep.in_multirun():
            progress.reporter().close()
        return value
    except ConfigError as err:
        return reject(err)


def _report(argv) -> int:
    from runner import report  # matplotlib and rich load only for this subcommand

    return report.main(argv)


# `sweeplab NAME ARGS...` -> NAME's main(ARGS) -> exit code.
SUBCOMMANDS = {"report": _report}


def main() -> None:
    """`sweeplab` / `python -m runner`: a subcommand, or the Hydra app with overrides."""
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        sys.exit(SUBCOMMANDS[sys.argv[1]](sys.argv[2:]))
    hydra_app()
