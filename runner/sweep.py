"""The sweep: its MLflow parent run, what every job needs to find it, and the sweep summary.

A Hydra callback creates the parent run before any job starts and ships its id with every
job through Hydra's own job config (`hydra.job.env_set`, which every launcher — basic, joblib,
Ray, submitit — composes into each job's config and applies in the process that runs it), so a
job on a remote worker finds its parent without inheriting the launcher's environment or
searching tags. The sweep dir is made absolute the same way, so a worker whose working
directory differs still writes under the sweep dir the user named.
"""
import json
import logging
import os
import sys
from typing import List, Optional

from hydra.core.hydra_config import HydraConfig
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import open_dict, read_write

from runner import progress, report, tracking
from runner.report import TAG_ROLE, TAG_SWEEP_DIR
from runner.tasks import spec_for

log = logging.getLogger(__name__)

# Shipped with every job of a sweep (hydra.job.env_set); read by `job_sweep_context`.
ENV_PARENT_RUN = "SWEEPLAB_PARENT_RUN_ID"
ENV_SWEEP_OVERRIDES = "SWEEPLAB_SWEEP_OVERRIDES"  # JSON list: the overrides every job shares
# Left in a job's output folder when its config was rejected; the sweep counts them at the end.
CONFIG_ERROR_MARKER = "CONFIG_ERROR"


def _quoted(value: str) -> str:
    """A Hydra override value that survives the override grammar (spaces, commas, quotes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ship_with_every_job(config, overrides: List[str]) -> None:
    """Add hydra overrides that the launcher applies when it composes each job's config."""
    with read_write(config.hydra.overrides):
        config.hydra.overrides.hydra.extend(overrides)


def common_overrides(task_overrides: List[str]) -> List[str]:
    """The command line's overrides that do not sweep (no `a,b` list, no range/choice)."""
    parsed = OverridesParser.create().parse_overrides(task_overrides)
    return [o.input_line for o in parsed if not o.is_sweep_override()]


class SweepCallback(Callback):
    """Creates the experiment and the parent run before any job starts, closes it after."""

    def on_multirun_start(self, config, **kwargs) -> None:
        uri = tracking.tracking_uri(config.mlflow)
        client = MlflowClient(tracking_uri=uri)
        exp_id = tracking.experiment_id(client, config.mlflow, uri)
        sweep_dir = os.path.abspath(config.hydra.sweep.dir)
        overrides = list(config.hydra.overrides.task)
        parent = client.create_run(exp_id, run_name=f"sweep {' '.join(overrides) or '(defaults)'}",
                                   tags={TAG_SWEEP_DIR: sweep_dir, TAG_ROLE: "sweep",
                                         "sweeplab.overrides": " ".join(overrides)})
        parent_id = parent.info.run_id
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = sweep_dir  # where the launcher creates the sweep folder
        _ship_with_every_job(config, [
            f"hydra.sweep.dir={_quoted(sweep_dir)}",
            # Absolute, so a worker in another directory (Ray, SLURM) writes to this store.
            f"mlflow.tracking_uri={_quoted(uri)}",
            f"++hydra.job.env_set.{ENV_PARENT_RUN}={parent_id}",
            f"++hydra.job.env_set.{ENV_SWEEP_OVERRIDES}="
            f"{_quoted(json.dumps(common_overrides(overrides)))}",
        ])
        self.parent_id = parent_id
        log.info("MLflow sweep run %s in %s", parent_id, uri)
        progress.reporter().sweep_started(count_jobs(config))

    def on_multirun_end(self, config, **kwargs) -> None:
        progress.reporter().close()
        client = MlflowClient(tracking_uri=tracking.tracking_uri(config.mlflow))
        parent = getattr(self, "parent_id", None)
        if parent is not None:
            try:
                summarise_sweep(client, parent, config.report.metric
                                or spec_for(config.model).report_metric)
            finally:
                client.set_terminated(parent, "FINISHED")
        rejected = rejected_jobs(os.path.abspath(config.hydra.sweep.dir))
        if rejected:
            print(f"sweeplab: error: {len(rejected)} job(s) of this sweep were rejected for "
                  f"bad config values (see the lines above): {', '.join(rejected)}",
                  file=sys.stderr, flush=True)
            sys.exit(2)


def count_jobs(config) -> Optional[int]:
    """How many jobs the basic sweeper will make of the preset's sweep and the command line."""
    params = {str(k): str(v) for k, v in (config.hydra.sweeper.get("params") or {}).items()}
    for line in config.hydra.overrides.task:  # the command line wins over the preset
        key, _, value = line.partition("=")
        params[key] = value
    try:
        parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
        return len(BasicSweeper.split_arguments(parsed, None)[0])
    except Exception:  # a launcher or sweeper of its own: no total, the bars still work
        return None


def job_sweep_context() -> tuple:
    """(parent run id, the sweep's shared overrides) for the running job; (None, []) alone."""
    if not HydraConfig.initialized():
        return None, []
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode is None or hydra_cfg.mode.name != "MULTIRUN":
        return None, []
    shipped = hydra_cfg.job.env_set
    parent = shipped.get(ENV_PARENT_RUN) or os.environ.get(ENV_PARENT_RUN)
    common = json.loads(shipped.get(ENV_SWEEP_OVERRIDES) or "[]")
    return parent, common


def mark_rejected(message: str) -> None:
    """Leave the config-error marker in this job's folder (the sweep reports it at the end)."""
    path = os.path.join(HydraConfig.get().runtime.output_dir, CONFIG_ERROR_MARKER)
    with open(path, "w") as f:
        f.write(f"{message}\n")


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN"


def rejected_jobs(sweep_dir: str) -> List[str]:
    """Job folders where the CLI left a config-error marker."""
    if not os.path.isdir(sweep_dir):
        return []
    return sorted(name for name in os.listdir(sweep_dir)
                  if os.path.isfile(os.path.join(sweep_dir, name, CONFIG_ERROR_MARKER)))


def summarise_sweep(client: MlflowClient, parent: str, metric: Optional[str]) -> None:
    """The sweep's report on its parent run: the map, the curves, the table (runner.report)."""
    try:
        location = report.log_report(client, parent, metric)
    except ValueError as err:  # no job finished: nothing to compare
        log.warning("no sweep report: %s", err)
        return
    log.info("sweep report: %s", location.artifact_uri)
