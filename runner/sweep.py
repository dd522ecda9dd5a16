"""The sweep: its MLflow parent run, what every job needs to find it, and the end.

A Hydra callback creates the parent run before any job starts and ships its id with every
job through Hydra's own job config (`hydra.job.env_set`, which every launcher — stacked, basic,
joblib, Ray, submitit — composes into each job's config and applies in the process that runs
it), so a job on a remote worker finds its parent without inheriting the launcher's
environment or searching tags. The sweep dir is made absolute the same way, so a worker whose
working directory differs still writes under the sweep dir the user named; a sweep dir the
user did not name is claimed (created) by one sweep only: two sweeps started in the same
second get two folders.

Resume (runner/resume.py): a multirun whose newest sweep with the same overrides (in the same
sweep dir if `hydra.sweep.dir` is given) did not end FINISHED reopens that parent and its sweep
dir; its jobs already FINISHED are skipped. The same command in the sweep dir of a FINISHED
sweep runs nothing: every job is done there.

The end: the parent is FINISHED, FAILED if a job failed, KILLED if the sweep was stopped by a
signal, with a summary of what finished; the process exits 0, 1 (a job failed), 2 (a config
was rejected) or 128 + signal.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import sys
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Dict, List, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import open_dict, read_write

from runner import codeversion, progress, resume, signals, store, tags
from runner.config import ConfigError
from runner.outbox import one_line
from runner.tasks import spec_for
from runner.tracking import experiment_id, short_name, tracking_uri

if TYPE_CHECKING:  # MLflow loads when the sweep starts, not when `--help` imports this module
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# Shipped with every job of a sweep (hydra.job.env_set); read by `job_sweep_context`.
ENV_PARENT_RUN = "SWEEPLAB_PARENT_RUN_ID"
ENV_SWEEP_OVERRIDES = "SWEEPLAB_SWEEP_OVERRIDES"  # JSON list: the overrides every job shares
ENV_TRACKING_URI = "SWEEPLAB_TRACKING_URI"  # the sweep's store, absolute
# Left in a job's output folder when its config was rejected; the sweep counts them at the end.
CONFIG_ERROR_MARKER = "CONFIG_ERROR"
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


def claim_sweep_dir(path: str) -> str:
    """`path`, or `path-2`, `path-3`...: the first that this sweep creates itself. Two sweeps
    started in the same second would otherwise share one timestamped folder and mix their
    job logs; `mkdir` either creates the folder or fails, so only one sweep gets each."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for n in itertools.count(1):
        candidate = path if n == 1 else f"{path}-{n}"
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue


def finished_there(client: MlflowClient, parent, given: Optional[str], jobs: Optional[int]):
    """The newest sweep of this command ended FINISHED. In the sweep dir the command names, a
    finished job is not run again: with every job done, say so and exit 0 (no job folder or
    log is touched); with some new (a preset's sweep grew), reopen it for those. None: start
    a new sweep (no dir named: a new timestamped one)."""
    if not given:
        return None
    done = resume.finished_count(client, parent.info.run_id)
    if jobs is None or done >= jobs:
        print(f"sweeplab: all {done} jobs of sweep run {parent.info.run_id} in {given} are "
              f"already finished: nothing to run (another hydra.sweep.dir runs them afresh)",
              flush=True)
        sys.exit(0)
    return parent


def fail(message: str) -> None:
    """Stop the sweep before any job runs: one line, exit 2 (Hydra would turn an exception
    in a callback into a warning and run the jobs without their parent)."""
    print(f"sweeplab: error: {store.redact(message)}", file=sys.stderr, flush=True)
    sys.exit(2)


def create_parent(client: MlflowClient, exp_id: str, overrides: List[str],
                  sweep_dir: str) -> str:
    parent = store.create_run_once(
        client, exp_id,
        {tags.SWEEP_DIR: sweep_dir, tags.ROLE: tags.ROLE_SWEEP,
         tags.SWEEP_KEY: sweep_key(overrides), tags.OVERRIDES: store.redact(" ".join(overrides)),
         tags.HEARTBEAT: str(int(time.time())), tags.PROCESS: resume.this_process(),
         tags.RUN_KEY: uuid.uuid4().hex, **codeversion.version_tags()},
        short_name(store.redact(f"sweep {' '.join(overrides) or '(defaults)'}")))
    return parent.info.run_id


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
            resume.close_dead_runs(client, [exp_id])  # a launcher SIGKILLed: resumable at once
            store.mark_lost_runs(client, [exp_id])
            given = given_sweep_dir(config)
            parent = resume.newest_sweep(client, exp_id, sweep_key(overrides), given)
            if parent is not None and parent.info.status == "FINISHED":
                parent = finished_there(client, parent, given, count_jobs(config, distinct=True))
            if parent is not None:
                parent_id, sweep_dir = parent.info.run_id, resume.reopen_parent(client, parent)
            else:
                sweep_dir = given or claim_sweep_dir(os.path.abspath(config.hydra.sweep.dir))
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
        resume.save_sweep_file(sweep_dir, {
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


class Abandoned(BaseException):
    """The sweep stops before its other jobs (a job found the disk full): raised through
    Hydra's launcher (a BaseException: Hydra does not catch it), so no next job is set up;
    the CLI closes the parent and prints the message as the sweep's one line."""


def close_abandoned_sweep(why: Optional[str] = None) -> Optional[str]:
    """A sweep whose launcher broke down (an exception escaped Hydra) or was abandoned
    (`why`): its parent is closed, FAILED (or KILLED after a signal), never left RUNNING.
    Returns what went wrong if the store could not be written (`sweeplab sync` closes it)."""
    global _open_sweep
    sweep, _open_sweep = _open_sweep, None  # one attempt: a store that failed stays failed
    if sweep is None:
        return None
    try:
        if why:
            sweep.client.set_tag(sweep.parent_id, tags.ERROR, why)
        sweep.close("KILLED" if signals.received() else "FAILED")
        return None
    except Exception as err:  # e.g. a store on the full disk
        sweep.heartbeat.stop()
        try:
            save_pending_close(sweep.sweep_dir, sweep.parent_id, sweep.uri, signals.received())
        except OSError:
            pass  # the sweep dir is full too: its heartbeat stopping marks the parent lost
        return (f"sweep run {sweep.parent_id} not closed ({one_line(err)}); sweeplab sync "
                f"{sweep.sweep_dir} closes it once the store can be written")


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


def count_jobs(config, distinct: bool = False) -> Optional[int]:
    """How many jobs the basic sweeper makes of the preset's sweep and the command line (every
    combination; `distinct`: without repeats, as in lr=0.01,0.001,0.01); None for a sweep it
    cannot count (an interval, another sweeper's syntax)."""
    params = {str(k): str(v) for k, v in (config.hydra.sweeper.get("params") or {}).items()}
    for line in config.hydra.overrides.task:  # the command line wins over the preset
        key, _, value = line.partition("=")
        params[key] = value
    try:
        parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
        values = [list(o.sweep_string_iterator()) if o.is_sweep_override() else [None]
                  for o in parsed]
    except Exception:  # a launcher or sweeper of its own: no total, the bars still work
        return None
    if distinct:
        return math.prod(len(set(v)) for v in values)
    return math.prod(len(v) for v in values)


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

def mark_rejected(output_dir: str, message: str) -> None:
    """Leave the config-error marker in a job's folder (the sweep reports it at the end)."""
    with open(os.path.join(output_dir, CONFIG_ERROR_MARKER), "w") as f:
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


def save_pending_close(sweep_dir: str, parent_id: str, uri: str, signum: Optional[int]) -> None:
    """The parent could not be closed (store unreachable): `sweeplab sync` does it later."""
    with open(os.path.join(sweep_dir, PENDING_CLOSE), "w") as f:
        json.dump({"parent_run_id": parent_id, "tracking_uri": store.redact(uri),
                   "status": "KILLED" if signum else None}, f)


# ---------------------------------------------------------------- the summary

def summarise_sweep(client: MlflowClient, parent: str, metric: Optional[str] = None) -> None:
    """The sweep's report on its parent run: the map, the curves, the table (runner.report).

    `metric`: what the report ranks by; None = the jobs' task's objective.
    """
    from runner import report  # matplotlib: loaded only when a sweep ends with a report

    try:
        location = report.log_report(client, parent, metric)
    except ValueError as err:  # no job finished: nothing to compare
        log.warning("no sweep report: %s", err)
        return
    client.set_tag(parent, tags.JOBS, str(len(current_children(client, parent))))
    log.info("sweep report: %s", location.artifact_uri)
