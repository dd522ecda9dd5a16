"""A run's writes to MLflow, sent in order by a background thread so training never waits.

A `TrackedRun` queues each write (metric batch, params, tags, artifact, final status) as a
small JSON-able op. One thread per run applies the ops in order, retrying while the store is
unreachable; it also refreshes the run's heartbeat. If the store stays unreachable for
`give_up_seconds()` (default 30 s), the thread stops trying: this op and every later one are
appended to `mlflow_pending.jsonl` in the job's output folder (artifacts copied beside it, in
`mlflow_pending_files/`), and one line on stderr says where. `sweeplab sync <dir>` replays the
file with `replay` (creating the run if it never got created).

Ops: {"op": "create_run", "experiment_name", "artifact_location", "run_name", "tags",
"start_time"} · {"op": "log_batch", "metrics": [[key, value, ms, step]], "params": [[k, v]],
"tags": [[k, v]]} · {"op": "log_artifact", "path", "artifact_path"} · {"op": "set_terminated",
"status", "end_time"}. The file's first line is a header: tracking_uri, experiment_name,
artifact_location, run_name, run_id (null if the run was never created).
"""
import json
import logging
import os
import queue
import shutil
import sys
import threading
import time
from typing import Optional, Tuple

from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient

from runner import bulk_metrics, store

log = logging.getLogger(__name__)

JOURNAL_STEM = "mlflow_pending"  # <stem>.jsonl, or <stem>-2.jsonl, ... if taken
MAX_QUEUED = 200  # op batches waiting in memory (each <= 1000 metrics); then put() waits
CLOSE_WAIT_SECONDS = 120.0  # closing waits this long for the thread (it gives up sooner)
_CLOSE = object()


def give_up_seconds() -> float:
    return store.seconds_setting("SWEEPLAB_MLFLOW_GIVE_UP_SECONDS", 30.0)


def one_line(err: BaseException) -> str:
    """`Type: message` on one line. Of a long message (TensorFlow's: a header, a stack of
    'File ...' lines, then what went wrong) it keeps the first and last unindented lines."""
    lines = [line for line in str(err).splitlines()
             if line.strip() and not line[:1].isspace()
             and not line.startswith(("File ", "Detected at node"))]
    text = " ... ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else ""
    text = " ".join(text.split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def apply(client: MlflowClient, run_id: Optional[str], op: dict,
          base_dir: Optional[str] = None) -> Optional[str]:
    """Carry out one op on the store; returns the run id (a create_run op makes it).

    `base_dir` resolves the relative artifact paths of a journal.
    """
    kind = op["op"]
    if kind == "create_run":
        exp_id = store.ensure_experiment(client, op["experiment_name"], op["artifact_location"])
        run = client.create_run(exp_id, start_time=op["start_time"], tags=op["tags"],
                                run_name=op["run_name"])
        return run.info.run_id
    if kind == "log_batch":
        if op.get("params") or op.get("tags"):
            client.log_batch(run_id, params=[Param(*p) for p in op.get("params", ())],
                             tags=[RunTag(*t) for t in op.get("tags", ())])
        bulk_metrics.log_metrics(client, run_id, op.get("metrics"))
    elif kind == "log_artifact":
        path = op["path"] if base_dir is None else os.path.join(base_dir, op["path"])
        client.log_artifact(run_id, path, op.get("artifact_path"))
    elif kind == "set_terminated":
        client.set_terminated(run_id, op["status"], end_time=op["end_time"])
    else:
        raise ValueError(f"unknown op {kind!r}")
    return run_id


class Outbox:
    """Sends one run's ops in order from a background thread; journals them on giving up."""

    def __init__(self, client: MlflowClient, run_id: Optional[str], journal_dir: str,
                 header: dict, offline_because: Optional[BaseException] = None):
        self.client, self.run_id = client, run_id
        self.journal_dir, self.header = journal_dir, header
        self.journal_path: Optional[str] = None
        self.queue: "queue.Queue" = queue.Queue(maxsize=MAX_QUEUED)
        self.lock = threading.Lock()  # journal writes: the thread, or close() if it hangs
        if offline_because is not None:
            self._give_up(offline_because)
        self.thread = threading.Thread(target=self._send_all, daemon=True,
                                       name=f"sweeplab-outbox-{header.get('run_name', '')}")
        self.thread.start()

    def put(self, op: dict) -> None:
        self.queue.put(op)

    def close(self) -> Optional[str]:
        """Send (or journal) everything queued; returns the journal's path if one was written."""
        self.queue.put(_CLOSE)
        self.thread.join(CLOSE_WAIT_SECONDS)
        if self.thread.is_alive():  # stuck inside one request: save the rest ourselves
            self._give_up(TimeoutError(f"no answer within {CLOSE_WAIT_SECONDS:.0f} s"))
            while True:
                try:
                    op = self.queue.get_nowait()
                except queue.Empty:
                    break
                if op is not _CLOSE:
                    self._journal(op)
        return self.journal_path

    # ------------------------------------------------------------ the thread

    def _send_all(self) -> None:
        next_beat = time.monotonic() + store.heartbeat_seconds()
        while True:
            try:
                op = self.queue.get(timeout=max(0.0, next_beat - time.monotonic()))
            except queue.Empty:
                op = None
            if op is _CLOSE:
                return
            if op is not None:
                if self.journal_path is not None or not self._send(op):
                    self._journal(op)
            if time.monotonic() >= next_beat:
                self._beat()
                next_beat = time.monotonic() + store.heartbeat_seconds()

    def _send(self, op: dict) -> bool:
        """Apply `op`, retrying; False once the store has failed for give_up_seconds()."""
        first_failure, pause = None, 0.5
        while True:
            try:
                self.run_id = apply(self.client, self.run_id, op)
                return True
            except Exception as err:
                if not store.is_transient(err):
                    # A refused request (e.g. a param changed value): retrying or saving it
                    # for later cannot make the store accept it.
                    log.warning("MLflow refused %s for run %s: %s", op["op"], self.run_id,
                                one_line(err))
                    return True
                now = time.monotonic()
                first_failure = first_failure or now
                if now - first_failure >= give_up_seconds():
                    self._give_up(err)
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 5.0)

    def _beat(self) -> None:
        if self.journal_path is None and self.run_id is not None:
            try:
                store.beat(self.client, self.run_id)
            except Exception:  # the next op finds out whether the store is really gone
                pass

    # ------------------------------------------------------------ the journal

    def _give_up(self, err: BaseException) -> None:
        """Open the journal (header first) and say, once, where this run's writes go."""
        with self.lock:
            if self.journal_path is not None:
                return
            os.makedirs(self.journal_dir, exist_ok=True)
            path, n = os.path.join(self.journal_dir, f"{JOURNAL_STEM}.jsonl"), 1
            while True:
                try:
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                    break
                except FileExistsError:
                    n += 1
                    path = os.path.join(self.journal_dir, f"{JOURNAL_STEM}-{n}.jsonl")
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps({**self.header, "run_id": self.run_id}) + "\n")
            self.journal_path = path
        uri = self.header["tracking_uri"]
        print(f"sweeplab: warning: mlflow.tracking_uri {uri}: {one_line(err)}; run "
              f"{self.header.get('run_name')} goes on and saves what it cannot send in {path}; "
              f"upload it later with: sweeplab sync {self.journal_dir}", file=sys.stderr,
              flush=True)

    def _journal(self, op: dict) -> None:
        with self.lock:
            if op["op"] == "log_artifact":
                files = os.path.splitext(self.journal_path)[0] + "_files"
                folder = os.path.join(files, op.get("artifact_path") or "")
                os.makedirs(folder, exist_ok=True)
                copy = shutil.copy(op["path"], folder)
                op = {**op, "path": os.path.relpath(copy, os.path.dirname(self.journal_path))}
            with open(self.journal_path, "a") as f:
                f.write(json.dumps(op) + "\n")


# ---------------------------------------------------------------- replaying a journal

def read_journal(path: str) -> Tuple[dict, list]:
    """(header, ops); a last line cut short by a killed process is left out."""
    with open(path) as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    header, ops = json.loads(lines[0]), []
    for number, line in enumerate(lines[1:], start=2):
        try:
            ops.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s line %d is incomplete (the process died while writing it): "
                        "left out", path, number)
    return header, ops


def replay(path: str, uri: Optional[str] = None) -> Tuple[str, int]:
    """Apply a journal to its store (or to `uri`); returns (run id, ops applied now).

    Progress is kept in `<path>.progress` after every op, so an interrupted replay goes on
    where it stopped instead of creating the run twice.
    """
    header, ops = read_journal(path)
    progress_path = path + ".progress"
    progress = {"done": 0, "run_id": header.get("run_id")}
    if os.path.exists(progress_path):
        with open(progress_path) as f:
            progress = json.load(f)
    client = store.open_client(uri or header["tracking_uri"])
    run_id, start = progress["run_id"], progress["done"]
    base_dir = os.path.dirname(os.path.abspath(path))
    for index in range(start, len(ops)):
        run_id = apply(client, run_id, ops[index], base_dir)
        with open(progress_path, "w") as f:
            json.dump({"done": index + 1, "run_id": run_id}, f)
    if run_id is not None and any(op["op"] == "set_terminated" for op in ops):
        # The run was closed after all: a "lost" verdict from a later sweep no longer holds.
        error = client.get_run(run_id).data.tags.get(store.ERROR_TAG, "")
        if error.startswith("lost:"):
            client.delete_tag(run_id, store.ERROR_TAG)
    return run_id, len(ops) - start
