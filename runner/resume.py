"""Resume: find a sweep again, reopen it, skip the jobs it already finished.

- A sweep is found by its key (the command line's overrides, hashed) and, when the command
  names it, its sweep dir; `sweeplab resume <sweep dir | parent run id>` finds it from the
  sweep file (`sweeplab.json`) its sweep dir holds, and reruns the saved command line there.
- A job is skipped when its resolved config (`sweeplab.config_hash`) already has a FINISHED
  run under the sweep's parent: a finished job is never run twice into the same sweep dir.
- A run whose process is gone is not RUNNING: every sweeplab run records the process that
  writes it (host, pid and the process's start time, `sweeplab.process`); a RUNNING run whose
  process on this host no longer exists is closed FAILED (`outcome=lost`) at once, so a sweep
  whose launcher was SIGKILLed resumes without waiting for its heartbeat to go stale.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Tuple

from runner import codeversion, procfs, store, tags
from runner.outbox import journal_uri, one_line
from runner.tasks import spec_of_run
from runner.tracking import JobContext, config_hash, tracking_uri

if TYPE_CHECKING:  # MLflow loads when a store is opened, not when `--help` imports this module
    from mlflow.tracking import MlflowClient

SWEEP_FILE = "sweeplab.json"  # in the sweep dir: what `sweeplab resume <dir>` needs


# ---------------------------------------------------------------- whose process is gone

def _start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (tells a reused pid apart); None
    where there is no /proc or no such process."""
    fields = procfs.stat(pid)
    return fields[procfs.START_TIME] if fields and len(fields) > procfs.START_TIME else None


def this_process() -> str:
    """This process as a `sweeplab.process` tag value."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid()) or ''}"


def process_gone(value: str) -> bool:
    """True when the process a `sweeplab.process` tag names ran on this host and no longer
    exists; False when it lives, or ran elsewhere (only its heartbeat can tell then)."""
    host, pid, start = (value.rsplit(":", 2) + ["", ""])[:3]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process under that pid: ours is gone
        return True
    # Alive: the same process unless its start time differs (the pid was reused).
    return bool(start) and _start_time(int(pid)) != start


def close_dead_runs(client: MlflowClient, experiment_ids: Iterable[str]) -> List[str]:
    """Close RUNNING runs whose process on this host is gone (see `process_gone`)."""
    closed = []
    for run in client.search_runs(list(experiment_ids), "attributes.status = 'RUNNING'",
                                  max_results=5000):
        value = run.data.tags.get(tags.PROCESS)
        if value and process_gone(value):
            pid = value.split(":")[1]
            store.close_lost(client, run.info.run_id,
                      f"lost: its process {pid} on {socket.gethostname()} ended without "
                      f"closing the run (SIGKILL, out of memory)")
            closed.append(run.info.run_id)
    return closed


# ---------------------------------------------------------------- finding the sweep

def newest_sweep(client: MlflowClient, exp_id: str, key: str,
                 sweep_dir: Optional[str] = None):
    """The newest sweep with this key (in `sweep_dir` if given) that is not running, if any.

    RUNNING parents are skipped: dead ones were closed just before (`close_dead_runs`,
    `store.mark_lost_runs`), so those left are alive (another launcher runs them).
    """
    query = (f"tags.`{tags.ROLE}` = '{tags.ROLE_SWEEP}' and "
             f"tags.`{tags.SWEEP_KEY}` = '{key}'")
    for run in client.search_runs([exp_id], query, order_by=["attributes.start_time DESC"],
                                  max_results=200):
        if run.info.status == "RUNNING":
            continue
        if sweep_dir and run.data.tags.get(tags.SWEEP_DIR) != sweep_dir:
            continue
        return run
    return None


def reopen_parent(client: MlflowClient, parent) -> str:
    """Reopen an unfinished sweep's parent run in this process; returns its sweep dir."""
    run_id = parent.info.run_id
    client.update_run(run_id, status="RUNNING")
    store.beat(client, run_id)
    client.set_tag(run_id, tags.PROCESS, this_process())
    client.set_tag(run_id, tags.RESUMES, str(int(parent.data.tags.get(tags.RESUMES, "0")) + 1))
    sweep_dir = parent.data.tags[tags.SWEEP_DIR]
    print(f"sweeplab: resuming sweep run {run_id} ({parent.info.status}: "
          f"{parent.data.tags.get(tags.SUMMARY, 'no summary')}) in {sweep_dir}; jobs already "
          f"FINISHED there are skipped", flush=True)
    codeversion.note_resume(client, parent)
    return sweep_dir


# ---------------------------------------------------------------- the jobs it finished

_parent_experiments: Dict[Tuple[str, str], str] = {}  # (store URI, sweep run) -> experiment


def _experiment_of(client: MlflowClient, parent: str) -> str:
    """The experiment of sweep run `parent`, asked once per process (a run never moves)."""
    key = (client.tracking_uri, parent)
    if key not in _parent_experiments:
        _parent_experiments[key] = client.get_run(parent).info.experiment_id
    return _parent_experiments[key]


def finished_run(client: MlflowClient, parent: str, config_hash_: str):
    """The FINISHED run of this job config under `parent`, if an earlier attempt made one."""
    exp_id = _experiment_of(client, parent)
    found = client.search_runs(
        [exp_id], f"tags.`{tags.PARENT_RUN}` = '{parent}' and tags.`{tags.CONFIG_HASH}` = "
                  f"'{config_hash_}' and attributes.status = 'FINISHED'", max_results=1)
    return found[0] if found else None


def finished_value(cfg, job: JobContext) -> Optional[float]:
    """In a sweep, a job whose config already has a FINISHED run: says so and returns that
    run's objective (what the job would return); None if the job has to run."""
    if not job.parent_run_id:
        return None
    try:
        client = store.open_client(job.tracking_uri or tracking_uri(cfg.mlflow))
        done = finished_run(client, job.parent_run_id, config_hash(cfg))
    except Exception as err:  # the store is down: train anyway, the run saves what it can't send
        if store.is_refused(err):  # a login refused is the run's to say (it asks again)
            raise
        return None
    if done is None:
        return None
    print(f"already finished: run {done.info.run_id} ({done.info.run_name})", flush=True)
    return done.data.metrics.get(spec_of_run(done.data.tags).objective, float("nan"))


def finished_count(client: MlflowClient, parent: str) -> int:
    """How many job configs have a FINISHED run under `parent`."""
    exp_id = client.get_run(parent).info.experiment_id
    runs = client.search_runs([exp_id], f"tags.`{tags.PARENT_RUN}` = '{parent}' and "
                                        f"attributes.status = 'FINISHED'", max_results=5000)
    return len({run.data.tags.get(tags.CONFIG_HASH, run.info.run_id) for run in runs})


# ---------------------------------------------------------------- the sweep file

def save_sweep_file(sweep_dir: str, values: dict) -> None:
    os.makedirs(sweep_dir, exist_ok=True)
    with open(os.path.join(sweep_dir, SWEEP_FILE), "w") as f:
        json.dump(values, f, indent=2)


def load_sweep_file(sweep_dir: str) -> Optional[dict]:
    path = os.path.join(sweep_dir, SWEEP_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------- `sweeplab resume`

def _find_sweep(target: str, uri: str) -> Tuple[str, dict]:
    """(sweep dir, its saved sweep file) from a sweep dir or a parent run id."""
    if os.path.isdir(target):
        sweep_dir = os.path.abspath(target)
    else:
        run = store.open_client(uri).get_run(target)
        sweep_dir = run.data.tags.get(tags.SWEEP_DIR, "")
    saved = load_sweep_file(sweep_dir) if sweep_dir else None
    if saved is None:
        raise ValueError(f"{target}: no sweep found (a sweep dir holds {SWEEP_FILE}; a parent "
                         f"run id is looked up in {uri})")
    return sweep_dir, saved


def resume_overrides(argv: List[str]) -> Tuple[Optional[List[str]], int]:
    """The Hydra arguments that resume a sweep; (None, exit code) when there is nothing to do."""
    parser = argparse.ArgumentParser(
        prog="sweeplab resume", description="Run the jobs of a sweep that have no FINISHED "
        "run yet, under the same parent run, in the same sweep dir.")
    parser.add_argument("sweep", help="the sweep dir, or its parent run id")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides, e.g. "
                        "hydra/launcher=basic (a parent run id is looked up in the store "
                        "given by mlflow.tracking_uri=..., else $MLFLOW_TRACKING_URI, else "
                        "outputs/mlflow.db)")
    args = parser.parse_args(argv)
    given = [o.split("=", 1)[1] for o in args.overrides if o.startswith("mlflow.tracking_uri=")]
    uri = store.resolve(given[-1] if given else None)[0]
    try:
        sweep_dir, saved = _find_sweep(args.sweep, uri)
        uri = journal_uri(saved["tracking_uri"])
        client = store.open_client(uri)
        parent = client.get_run(saved["parent_run_id"])
        close_dead_runs(client, [parent.info.experiment_id])
        store.mark_lost_runs(client, [parent.info.experiment_id])
        parent = client.get_run(saved["parent_run_id"])
    except Exception as err:
        print(f"sweeplab: error: resume: {one_line(err)}", file=sys.stderr)
        return None, 2
    status = parent.info.status
    if status == "FINISHED":
        print(f"sweeplab resume: sweep run {parent.info.run_id} in {sweep_dir} finished: "
              f"nothing to resume")
        return None, 0
    if status == "RUNNING":
        beat = parent.data.tags.get(tags.HEARTBEAT, "0")
        print(f"sweeplab: error: resume: sweep run {parent.info.run_id} is still running "
              f"(process {parent.data.tags.get(tags.PROCESS, '?')}, heartbeat "
              f"{time.time() - float(beat):.0f} s ago); stop it first", file=sys.stderr)
        return None, 2
    task = [o for o in saved["task_overrides"] if not o.startswith("mlflow.tracking_uri=")]
    return ["-m", *task, f"mlflow.tracking_uri={uri}", *saved["hydra_overrides"],
            f"hydra.sweep.dir={sweep_dir}",
            *[o for o in args.overrides if not o.startswith("mlflow.tracking_uri=")]], 0
