"""`sweeplab sync` uploads what runs could not send; `sweeplab resume` finds a sweep again.

sync: a run whose tracking store stayed unreachable saved its writes in
`mlflow_pending.jsonl` (plus `mlflow_pending_files/`) in its job folder (runner/outbox.py).
`sweeplab sync DIR` replays every such file under DIR into the store the file names (or
`--tracking-uri`), creating the run if it never got created, and renames it `*.synced`; then it
closes the parent run of a sweep that could not close it itself (`sweep_pending_close.json`).

resume: `sweeplab resume <sweep dir | parent run id>` reruns the sweep's saved command line in
its own sweep dir; the sweep callback reopens the parent and skips jobs already FINISHED
(runner/sweep.py). Extra arguments are passed on to Hydra (e.g. `hydra.launcher.n_jobs=4`).
"""
import argparse
import fnmatch
import json
import os
import sys
import time
from typing import List, Optional, Tuple

from runner import outbox, store, tags
from runner.outbox import one_line
from runner.sweep import PENDING_CLOSE, close_parent, load_sweep_file

JOURNAL_PATTERN = outbox.JOURNAL_STEM + "*.jsonl"


def journals_under(path: str) -> List[str]:
    """Every journal file in `path` (a file, or a folder searched recursively)."""
    if os.path.isfile(path):
        return [path]
    found = []
    for folder, _, names in os.walk(path):
        found.extend(os.path.join(folder, n) for n in fnmatch.filter(names, JOURNAL_PATTERN))
    return sorted(found)


def main(argv: List[str]) -> int:
    """sweeplab sync DIR... [--tracking-uri URI]"""
    parser = argparse.ArgumentParser(
        prog="sweeplab sync", description="Upload what runs saved while the MLflow tracking "
        "store was unreachable (mlflow_pending*.jsonl under each DIR).")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="a job or sweep folder")
    parser.add_argument("--tracking-uri", help="upload there instead of to the store each "
                        "file names")
    args = parser.parse_args(argv)
    missing = [d for d in args.dirs if not os.path.exists(d)]
    if missing:
        print(f"sweeplab: error: sync: {missing[0]} does not exist; give a job or sweep folder "
              f"that holds {JOURNAL_PATTERN} files, e.g. outputs/sweeps/<date>/<time>",
              file=sys.stderr, flush=True)
        return 2
    journals = [path for d in args.dirs for path in journals_under(d)]
    pending = [d for d in args.dirs if os.path.isfile(os.path.join(d, PENDING_CLOSE))]
    if not journals and not pending:
        print(f"sweeplab sync: nothing to upload under {', '.join(args.dirs)}")
        return 0
    failures = 0
    for path in journals:
        try:
            run_id, count = outbox.replay(path, args.tracking_uri)
        except Exception as err:
            failures += 1
            print(f"sweeplab: error: sync {path}: {one_line(err)}; make the store reachable "
                  f"and run sweeplab sync again (it goes on where it stopped)", file=sys.stderr)
            continue
        os.replace(path, path + ".synced")
        if os.path.exists(path + ".progress"):
            os.remove(path + ".progress")
        print(f"synced {count} writes to run {run_id} from {path}")
    for folder in pending:
        failures += not close_pending_sweep(folder, args.tracking_uri)
    return 1 if failures else 0


def close_pending_sweep(sweep_dir: str, uri: Optional[str] = None) -> bool:
    """Close the parent run a sweep could not close itself (its store was gone), now that
    its jobs' writes are in; False if that failed."""
    path = os.path.join(sweep_dir, PENDING_CLOSE)
    if not os.path.isfile(path):
        return True
    with open(path) as f:
        pending = json.load(f)
    try:
        client = store.open_client(uri or pending["tracking_uri"])
        outcome = close_parent(client, pending["parent_run_id"], pending["status"])
    except Exception as err:
        print(f"sweeplab: error: sync {sweep_dir}: closing sweep run {pending['parent_run_id']}:"
              f" {one_line(err)}", file=sys.stderr)
        return False
    os.remove(path)
    print(f"closed sweep run {pending['parent_run_id']} ({outcome['summary']})")
    return True


def _find_sweep(target: str, uri: str) -> Tuple[str, dict]:
    """(sweep dir, its saved sweep file) from a sweep dir or a parent run id."""
    if os.path.isdir(target):
        sweep_dir = os.path.abspath(target)
    else:
        run = store.open_client(uri).get_run(target)
        sweep_dir = run.data.tags.get(tags.SWEEP_DIR, "")
    saved = load_sweep_file(sweep_dir) if sweep_dir else None
    if saved is None:
        raise ValueError(f"{target}: no sweep found (a sweep dir holds sweeplab.json; a parent "
                         f"run id is looked up in {uri})")
    return sweep_dir, saved


def resume_overrides(argv: List[str]) -> Tuple[Optional[List[str]], int]:
    """The Hydra arguments that resume a sweep; (None, exit code) when there is nothing to do."""
    parser = argparse.ArgumentParser(
        prog="sweeplab resume", description="Run the jobs of a sweep that have no FINISHED "
        "run yet, under the same parent run, in the same sweep dir.")
    parser.add_argument("sweep", help="the sweep dir, or its parent run id")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides, e.g. "
                        "hydra.launcher.n_jobs=4 (a parent run id is looked up in the store "
                        "given by mlflow.tracking_uri=..., else $MLFLOW_TRACKING_URI, else "
                        "outputs/mlflow.db)")
    args = parser.parse_args(argv)
    given = [o.split("=", 1)[1] for o in args.overrides if o.startswith("mlflow.tracking_uri=")]
    uri = store.resolve(given[-1] if given else None)[0]
    try:
        sweep_dir, saved = _find_sweep(args.sweep, uri)
        uri = outbox.journal_uri(saved["tracking_uri"])
        client = store.open_client(uri)
        parent = client.get_run(saved["parent_run_id"])
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
              f"(heartbeat {time.time() - float(beat):.0f} s ago); stop it first",
              file=sys.stderr)
        return None, 2
    task = [o for o in saved["task_overrides"] if not o.startswith("mlflow.tracking_uri=")]
    return ["-m", *task, f"mlflow.tracking_uri={uri}", *saved["hydra_overrides"],
            f"hydra.sweep.dir={sweep_dir}",
            *[o for o in args.overrides if not o.startswith("mlflow.tracking_uri=")]], 0
