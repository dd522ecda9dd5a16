"""The sweep: its MLflow parent run, what every job needs to find it, resume, and the end.

A Hydra callback creates the parent run before any job starts and ships its id with every
job through Hydra's own job config (`hydra.job.env_set`, which every launcher — basic, joblib,
Ray, submitit — composes into each job's config and applies in the process that runs it), so a
job on a remote worker finds its parent without inheriting the launcher's environment or
searching tags. The sweep dir is made absolute the same way, so a worker whose working
directory differs still writes under the sweep dir the user named.

Resume: the parent carries a key of the command line's overrides (`sweeplab.sweep_key`). A
multirun whose newest sweep with the same key (in the same experiment and store; in the same
sweep dir if `hydra.sweep.dir` is given) did not end FINISHED reopens that parent and its sweep
dir; each job whose config (`sweeplab.config_hash`) already has a FINISHED run under it is
skipped. `sweeplab resume <sweep dir | parent run id>` does the same from the saved command.

The end: the parent is FINISHED, FAILED if a job failed, KILLED if the sweep was stopped by a
signal, with a summary of what finished; the process exits 0, 1 (a job failed), 2 (a config
was rejected) or 128 + signal.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Dict, List, Optional

from hydra.core.hydra_config import HydraConfig
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import open_dict, read_write

from runner import codeversion, progress, signals, store, tags
from runner.config import ConfigError
from runner.outbox import one_line
from runner.tasks import spec_for
from runner.tracking import experiment_id, tracking_uri

if TYPE_CHECKING:  # MLflow loads when the sweep starts, not when `--help` imports this module
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# Shipped with every job of a sweep (hydra.job.env_set); read by `job_sweep_context`.
ENV_PARENT_RUN = "SWEEPLAB_PARENT_RUN_ID"
ENV_SWEEP_OVERRIDES = "SWEEPLAB_SWEEP_OVERRIDES"  # JSON list: the overrides every job shares
ENV_TRACKING_URI = "SWEEPLAB_TRACKING_URI"  # the sweep's store, absolute
# Left in a job's output folder when its config was rejected; the sweep counts them at the end.
CONFIG_ERROR_MARKER = "CONFIG_ERROR"
SWEEP_FILE = "sweeplab.json"  # in the sweep dir: what `sweeplab resume <dir>` needs
PENDING_CLOSE = "sweep_pending_close.json"  # in the sweep dir: a parent left to close by sync
# Launchers that run jobs in worker processes they spawn on this machine (see signals.py).
LOCAL_POOL_LAUNCHERS = ("JoblibLauncher", "StackedLauncher")

_open_sweep: Optional["OpenSweep"] = None  # this process's sweep, until it is closed


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


def sweep_key(task_overrides: List[str]) -> str:
    """Same command line (in any order, wherever the store is) -> same key."""
    kept = sorted(o for o in task_overrides if not o.startswith("mlflow.tracking_uri="))
    return hashlib.sha256(json.dumps(kept).encode()).hexdigest()[:16]


def given_sweep_dir(config) -> Optional[str]:
    """The sweep dir if the command line named it (hydra.sweep.dir=...), made absolute."""
    if any(o.startswith("hydra.sweep.dir=") for o in config.hydra.overrides.hydra):
        return os.path.abspath(config.hydra.sweep.dir)
    return None


def find_resumable(client: MlflowClient, exp_id: str, key: str,
                   sweep_dir: Optional[str] = None):
    """The newest sweep with this key (in `sweep_dir` if given), if it did not end FINISHED.

    RUNNING parents are skipped: lost ones were closed just before, so those left are alive
    (another launcher runs them).
    """
    query = f"tags.`{tags.ROLE}` = '{tags.ROLE_SWEEP}' and tags.`{tags.SWEEP_KEY}` = '{key}'"
    for run in client.search_runs([exp_id], query, order_by=["attributes.start_time DESC"],
                                  max_results=200):
        if run.info.status == "RUNNING":
            continue
        if sweep_dir and run.data.tags.get(tags.SWEEP_DIR) != sweep_dir:
            continue
        return None if run.info.status == "FINISHED" else run
    return None


def fail(message: str) -> None:
    """Stop the sweep before any job runs: one line, exit 2 (Hydra would turn an exception
    in a callback into a warning and run the jobs without their parent)."""
    print(f"sweeplab: error: {store.redact(message)}", file=sys.stderr, flush=True)
    sys.exit(2)


def create_parent(client: MlflowClient, exp_id: str, overrides: List[str],
                  sweep_dir: str) -> str:
    parent = client.create_run(
        exp_id, run_name=store.redact(f"sweep {' '.join(overrides) or '(defaults)'}"),
        tags={tags.SWEEP_DIR: sweep_dir, tags.ROLE: tags.ROLE_SWEEP,
              tags.SWEEP_KEY: sweep_key(overrides),
              tags.OVERRIDES: store.redact(" ".join(overrides)),
              tags.HEARTBEAT: str(int(time.time())), **codeversion.version_tags()})
    return parent.info.run_id


def reopen_parent(client: MlflowClient, parent) -> str:
    """Reopen an unfinished sweep's parent run; returns its sweep dir."""
    run_id = parent.info.run_id
    client.update_run(run_id, status="RUNNING")
    store.beat(client, run_id)
    resumes = int(parent.data.tags.get(tags.RESUMES, "0")) + 1
    client.set_tag(run_id, tags.RESUMES, str(resumes))
    sweep_dir = parent.data.tags[tags.SWEEP_DIR]
    print(f"sweeplab: resuming sweep run {run_id} ({parent.info.status}: "
          f"{parent.data.tags.get(tags.SUMMARY, 'no summary')}) in {sweep_dir}; jobs already "
          f"FINISHED there are skipped", flush=True)
    codeversion.note_resume(client, parent)
    return sweep_dir


class OpenSweep:
    """The sweep this process runs, from its parent run's creation to its closing.

    Kept out of the callback object: launchers pickle the callbacks with every job, and a
    client or a thread does not pickle.
    """

    def __init__(self, client: MlflowClient, uri: str, parent_id: str, sweep_dir: str,
                 metric: Optional[str] = None):
        self.client, self.uri, self.parent_id, self.sweep_dir = client, uri, parent_id, sweep_dir
        self.metric = metric  # what the sweep's report ranks by
        self.heartbeat = store.Heartbeat(client, parent_id).start()

    def close(self, status: Optional[str] = None) -> Dict:
        """Summarise and close the parent: KILLED if stopped, FAILED if a job failed."""
        global _open_sweep
        _open_sweep = None
        self.heartbeat.stop()
        return close_parent(self.client, self.parent_id,
                            status or ("KILLED" if signals.received() else None), self.metric)


def close_parent(client: MlflowClient, parent_id: str, status: Optional[str] = None,
                 metric: Optional[str] = None) -> Dict:
    """Report, then the parent's status: `status`, else FAILED if a job failed, else FINISHED."""
    outcome = job_outcomes(client, parent_id)
    try:
        summarise_sweep(client, parent_id, metric)
    except Exception as err:  # the summary is a convenience; closing the parent is not
        log.warning("sweep summary failed: %s", one_line(err))
    client.set_tag(parent_id, tags.SUMMARY, outcome["summary"])
    client.set_terminated(parent_id, status or ("FAILED" if outcome["failed"] else "FINISHED"))
    return outcome


class SweepCallback(Callback):
    """Creates (or reopens) the parent run before any job starts, closes it after."""

    def on_multirun_start(self, config, **kwargs) -> None:
        global _open_sweep
        if str(config.hydra.launcher.get("_target_", "")).endswith(LOCAL_POOL_LAUNCHERS):
            signals.shield_workers()
        uri = tracking_uri(config.mlflow)
        overrides = list(config.hydra.overrides.task)
        try:
            store.check_store(config.mlflow)
            client = store.open_client(uri)
            exp_id = experiment_id(client, config.mlflow, uri)
            store.mark_lost_runs(client, [exp_id])
            parent = find_resumable(client, exp_id, sweep_key(overrides), given_sweep_dir(config))
            if parent is not None:
                parent_id, sweep_dir = parent.info.run_id, reopen_parent(client, parent)
            else:
                sweep_dir = os.path.abspath(config.hydra.sweep.dir)
                parent_id = create_parent(client, exp_id, overrides, sweep_dir)
        except ConfigError as err:
            fail(str(err))
        except Exception as err:
            fail(store.permission_error(err, uri, config.mlflow.experiment_name) or
                 f"mlflow.tracking_uri: could not set up the sweep's parent run in {uri} "
                 f"({one_line(err)}); check that store, or use another one, e.g. "
                 f"mlflow.tracking_uri=sqlite:///{os.path.abspath('outputs/mlflow.db')}")
        _open_sweep = OpenSweep(client, uri, parent_id, sweep_dir,
                                config.report.metric or spec_for(config.model).ranking)
        clear_rejections(sweep_dir)
        save_sweep_file(sweep_dir, {
            # Redacted: `sweeplab resume` takes the password from the environment again.
            "parent_run_id": parent_id, "tracking_uri": store.redact(uri),
            "experiment_name": config.mlflow.experiment_name,
            "task_overrides": [store.redact(o) for o in overrides],
            "hydra_overrides": [o for o in config.hydra.overrides.hydra
                                if not o.startswith("hydra.sweep.dir=")]})
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = sweep_dir  # where the launcher creates the sweep folder
        _ship_with_every_job(config, [
            f"hydra.sweep.dir={_quoted(sweep_dir)}",
            # Absolute, so a worker in another directory (Ray, SLURM) writes to this store.
            f"++hydra.job.env_set.{ENV_TRACKING_URI}={_quoted(uri)}",
            f"++hydra.job.env_set.{ENV_PARENT_RUN}={parent_id}",
            f"++hydra.job.env_set.{ENV_SWEEP_OVERRIDES}="
            f"{_quoted(json.dumps(common_overrides(overrides)))}",
        ])
        log.info("MLflow sweep run %s in %s", parent_id, store.redact(uri))
        progress.reporter().sweep_started(count_jobs(config))

    def on_multirun_end(self, config, **kwargs) -> None:
        progress.reporter().close()
        sweep = _open_sweep
        try:
            outcome = sweep.close()
        except Exception as err:  # the store went away: `sweeplab sync` closes it later
            save_pending_close(sweep.sweep_dir, sweep.parent_id, sweep.uri, signals.received())
            print(f"sweeplab: error: mlflow.tracking_uri {store.redact(sweep.uri)}: could not "
                  f"close the "
                  f"sweep run {sweep.parent_id} ({one_line(err)}); once the store is back, "
                  f"sweeplab sync {sweep.sweep_dir} uploads what the jobs saved and closes it",
                  file=sys.stderr, flush=True)
            sys.exit(1)
        rejected = rejected_jobs(sweep.sweep_dir)
        signum = signals.received()
        if signum:
            print(f"sweeplab: stopped by {signals.name(signum)}: sweep run {sweep.parent_id} "
                  f"closed KILLED ({outcome['summary']}); resume with: sweeplab resume "
                  f"{sweep.sweep_dir}", file=sys.stderr, flush=True)
            sys.exit(signals.exit_code())
        if rejected:
            print(f"sweeplab: error: {len(rejected)} job(s) of this sweep were rejected for "
                  f"bad config values (see the lines above): {', '.join(rejected)}",
                  file=sys.stderr, flush=True)
            sys.exit(2)
        if outcome["failed"]:
            print(f"sweeplab: error: {len(outcome['failed'])} job(s) failed: "
                  f"{', '.join(outcome['failed'])} (tag {tags.ERROR}, error.txt in each run); "
                  f"run them again with: sweeplab resume {sweep.sweep_dir}",
                  file=sys.stderr, flush=True)
            sys.exit(1)


def close_abandoned_sweep() -> None:
    """A sweep whose launcher broke down (an exception escaped Hydra): its parent is closed,
    FAILED (or KILLED after a signal), never left RUNNING."""
    if _open_sweep is not None:
        _open_sweep.close("KILLED" if signals.received() else "FAILED")


# ---------------------------------------------------------------- what the jobs did

def current_children(client: MlflowClient, parent: str) -> List:
    """One run per job config under `parent`: its FINISHED run if any, else its newest.

    A resumed sweep holds earlier KILLED/FAILED attempts of a config too; they are history.
    """
    exp_id = client.get_run(parent).info.experiment_id
    children = client.search_runs([exp_id], f"tags.`{tags.PARENT_RUN}` = '{parent}'",
                                  order_by=["attributes.start_time ASC"], max_results=5000)
    chosen = {}
    for child in children:  # oldest first: a later attempt replaces an unfinished one
        key = child.data.tags.get(tags.CONFIG_HASH, child.info.run_id)
        if chosen.get(key) is None or chosen[key].info.status != "FINISHED":
            chosen[key] = child
    return list(chosen.values())


def job_outcomes(client: MlflowClient, parent: str) -> Dict:
    """{'summary': '3 finished, 1 failed', 'failed': [names]} over the sweep's job configs."""
    children = current_children(client, parent)
    counts = Counter(child.info.status.lower() for child in children)
    failed = [child.info.run_name for child in children if child.info.status == "FAILED"]
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no jobs ran"
    return {"summary": summary, "failed": failed}


def finished_run(client: MlflowClient, parent: str, config_hash: str):
    """The FINISHED run of this job config under `parent`, if an earlier attempt made one."""
    exp_id = client.get_run(parent).info.experiment_id
    found = client.search_runs(
        [exp_id], f"tags.`{tags.PARENT_RUN}` = '{parent}' and tags.`{tags.CONFIG_HASH}` = "
                  f"'{config_hash}' and attributes.status = 'FINISHED'", max_results=1)
    return found[0] if found else None


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
    """(parent run id, the sweep's shared overrides, its store's URI) for the running job;
    (None, [], None) for a single run."""
    if not HydraConfig.initialized():
        return None, [], None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode is None or hydra_cfg.mode.name != "MULTIRUN":
        return None, [], None
    shipped = hydra_cfg.job.env_set
    parent = shipped.get(ENV_PARENT_RUN) or os.environ.get(ENV_PARENT_RUN)
    common = json.loads(shipped.get(ENV_SWEEP_OVERRIDES) or "[]")
    return parent, common, shipped.get(ENV_TRACKING_URI)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN"


# ---------------------------------------------------------------- the sweep dir

def mark_rejected(message: str) -> None:
    """Leave the config-error marker in this job's folder (the sweep reports it at the end)."""
    path = os.path.join(HydraConfig.get().runtime.output_dir, CONFIG_ERROR_MARKER)
    with open(path, "w") as f:
        f.write(f"{message}\n")


def rejected_jobs(sweep_dir: str) -> List[str]:
    """Job folders where the CLI left a config-error marker."""
    if not os.path.isdir(sweep_dir):
        return []
    return sorted(name for name in os.listdir(sweep_dir)
                  if os.path.isfile(os.path.join(sweep_dir, name, CONFIG_ERROR_MARKER)))


def clear_rejections(sweep_dir: str) -> None:
    """Markers a previous sweep in this dir left: this sweep judges its jobs afresh."""
    for name in rejected_jobs(sweep_dir):
        os.remove(os.path.join(sweep_dir, name, CONFIG_ERROR_MARKER))


def save_sweep_file(sweep_dir: str, values: dict) -> None:
    os.makedirs(sweep_dir, exist_ok=True)
    with open(os.path.join(sweep_dir, SWEEP_FILE), "w") as f:
        json.dump(values, f, indent=2)


def save_pending_close(sweep_dir: str, parent_id: str, uri: str, signum: Optional[int]) -> None:
    """The parent could not be closed (store unreachable): `sweeplab sync` does it later."""
    with open(os.path.join(sweep_dir, PENDING_CLOSE), "w") as f:
        json.dump({"parent_run_id": parent_id, "tracking_uri": uri,
                   "status": "KILLED" if signum else None}, f)


def load_sweep_file(sweep_dir: str) -> Optional[dict]:
    path = os.path.join(sweep_dir, SWEEP_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------- the summary

def summarise_sweep(client: MlflowClient, parent: str, metric: Optional[str] = None) -> None:
    """The sweep's report on its parent run: the map, the curves, the table (runner.report).

    `metric`: what the report ranks by; None = the jobs' task's objective.
    """
    from runner import report  # matplotlib and the report load only when a report is made

    try:
        location = report.log_report(client, parent, metric)
    except ValueError as err:  # no job finished: nothing to compare
        log.warning("no sweep report: %s", err)
        return
    client.set_tag(parent, tags.JOBS, str(len(current_children(client, parent))))
    log.info("sweep report: %s", location.artifact_uri)
