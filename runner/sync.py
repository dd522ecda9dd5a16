"""`sweeplab sync` uploads what runs could not send.

A run whose tracking store stayed unreachable saved its writes in
`mlflow_pending.jsonl` (plus `mlflow_pending_files/`) in its job folder (runner/outbox.py).
`sweeplab sync DIR` replays every such file under DIR into the store the file names (or
`--tracking-uri`), creating the run if it never got created, and renames it `*.synced`; then it
closes the parent run of a sweep that could not close it itself (`sweep_pending_close.json`).
"""
import argparse
import fnmatch
import json
import os
import sys
from typing import List, Optional

from runner import outbox, store
from runner.outbox import one_line
from runner.sweep import PENDING_CLOSE, close_parent

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
        client = store.open_client(uri or outbox.journal_uri(pending["tracking_uri"]))
        outcome = close_parent(client, pending["parent_run_id"], pending["status"])
    except Exception as err:
        print(f"sweeplab: error: sync {sweep_dir}: closing sweep run {pending['parent_run_id']}:"
              f" {one_line(err)}", file=sys.stderr)
        return False
    os.remove(path)
    print(f"closed sweep run {pending['parent_run_id']} ({outcome['summary']})")
    return True
