"""A run's writes to MLflow, sent in order by a background thread so training never waits.

A `TrackedRun` queues each write (metric batch, params, tags, artifact, final status) as a
small JSON-able op. One thread per run applies the ops in order, retrying while the store is
unreachable; it also refreshes the run's heartbeat. If the store stays unreachable for
`give_up_seconds()` (default 30 s), the thread stops trying: this op and every later one are
appended to `mlflow_pending.jsonl` in the job's output folder (artifacts copied beside it, in
`mlflow_pending_files/`), and one line on stderr says where. `sweeplab sync <dir>` replays the
file with `replay` (creating the run if it never got created). What might pass later is kept:
no answer, a 5xx, a database error, even a 401/403 (see `store.is_denied`).

A write is dropped only when the store refuses the request itself (`store.is_refused`: a
param that changed value, a deleted run): sending it again cannot make it pass. Each such
write is one warning line on stderr and counted (`refused`, `values_dropped`).

Closing waits for the thread; if it is still inside one request after CLOSE_WAIT_SECONDS, the
op in flight and everything queued go to the journal at once, because the process may exit
before that request ends. The op in flight may then reach the store as well: every op can be
applied twice (a metric value already there is skipped, a param or tag or artifact written
again is the same, a run is created once per `sweeplab.run_key`).

A full disk is not waited out: a store that reports it (sqlite's "database or disk is full")
is given up on at once. If the journal cannot be written either, the run's remaining writes
are dropped, one line on stderr says so, and `lost` holds why: the thread never dies, and
the run's owner (TrackedRun) fails the job.

Ops: {"op": "create_run", "experiment_name", "artifact_location", "run_name", "tags",
"start_time"} · {"op": "log_batch", "metrics": [[key, value, ms, step]], "params": [[k, v]],
"tags": [[k, v]]} · {"op": "log_artifact", "path", "artifact_path"} · {"op": "set_terminated",
"status", "end_time"}. The file's first line is a header: tracking_uri, experiment_name,
artifact_location, run_name, run_id (null if the run was never created).
"""
import json
import os
import queue
import shutil
import sys
import threading
import time
from typing import TYPE_CHECKING, Optional, Tuple

from runner import store, tags

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

JOURNAL_STEM = "mlflow_pending"  # <stem>.jsonl, or <stem>-2.jsonl, ... if taken
OPS = ("create_run", "log_batch", "log_artifact", "set_terminated")  # what a journal line holds
MAX_QUEUED = 200  # op batches waiting in memory (each <= 1000 metrics); then put() waits
CLOSE_WAIT_SECONDS = 120.0  # closing waits this long for the thread (it gives up sooner)
TAKE_OVER_WAIT_SECONDS = 5.0  # then, for a thread that took an op just as closing took over
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
    return store.redact(f"{type(err).__name__}: {text}" if text else type(err).__name__)


def apply(client: "MlflowClient", run_id: Optional[str], op: dict,
          base_dir: Optional[str] = None) -> Optional[str]:
    """Carry out one op on the store; returns the run id (a create_run op makes it).

    `base_dir` resolves the relative artifact paths of a journal.
    """
    # Lazy: the CLI imports this module, and `sweeplab --help` must not load MLflow.
    from mlflow.entities import Param, RunTag

    from runner import bulk_metrics

    kind = op["op"]
    if kind == "create_run":
        exp_id = store.ensure_experiment(client, op["experiment_name"], op["artifact_location"])
        if tags.RUN_KEY in op["tags"]:  # journals written before the key have none
            run = store.create_run_once(client, exp_id, op["tags"], op["run_name"],
                                        start_time=op["start_time"])
        else:
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
        raise ValueError(f"unknown op {kind!r}; one of {', '.join(OPS)}")
    return run_id


def describe(op: dict) -> str:
    """An op for a warning line: `log_batch (1000 metric values)`."""
    counts = [f"{len(op[k])} {name if len(op[k]) > 1 else name[:-1]}" for k, name in
              (("metrics", "metric values"), ("params", "params"), ("tags", "tags"))
              if op.get(k)]
    detail = counts or ([op["artifact_path"] or "."] if op["op"] == "log_artifact" else [])
    return op["op"] + (f" ({', '.join(detail)})" if detail else "")


class WritesLost(OSError):
    """A run's writes reached neither its store nor its journal (e.g. a full disk)."""


class Outbox:
    """Sends one run's ops in order from a background thread; journals them on giving up."""

    def __init__(self, client: "MlflowClient", run_id: Optional[str], journal_dir: str,
                 header: dict, offline_because: Optional[BaseException] = None):
        self.client, self.run_id = client, run_id
        self.journal_dir, self.header = journal_dir, header
        self.journal_path: Optional[str] = None
        self.lost: Optional[BaseException] = None  # why writes were dropped (nowhere to go)
        self.dropped = 0  # ops that reached neither the store nor the journal
        self.refused = 0  # ops the store refused (a bad request): dropped, each said on stderr
        self.values_dropped = 0  # metric values in the dropped and refused ops
        self.sending: Optional[dict] = None  # the op the thread is applying now
        self.taken_over = False  # close() stopped waiting: the journal holds the rest
        self.queue: "queue.Queue" = queue.Queue(maxsize=MAX_QUEUED)
        # The journal, `sending` and `taken_over`: the thread, or close() if the thread hangs.
        self.lock = threading.RLock()
        if offline_because is not None:
            self._give_up_safely(offline_because)
        self.thread = threading.Thread(target=self._send_all, daemon=True,
                                       name=f"sweeplab-outbox-{header.get('run_name', '')}")
        self.thread.start()

    def put(self, op: dict) -> None:
        self.queue.put(op)

    def close(self) -> Optional[str]:
        """Send (or journal) everything queued; returns the journal's path if one was written."""
        self.queue.put(_CLOSE)
        self.thread.join(CLOSE_WAIT_SECONDS)
        if self.thread.is_alive():
            self._take_over()
            self.thread.join(TAKE_OVER_WAIT_SECONDS)  # it journals an op it had just taken
        return self.journal_path

    def _take_over(self) -> None:
        """The thread is still inside a request: journal the op it is sending and everything
        queued now, since this process may exit before that request ends."""
        with self.lock:
            self.taken_over = True
            self._give_up_safely(TimeoutError(f"no answer within {CLOSE_WAIT_SECONDS:.0f} s"))
            pending = [self.sending] if self.sending is not None else []
            while True:
                try:
                    op = self.queue.get_nowait()
                except queue.Empty:
                    break
                if op is not _CLOSE:
                    pending.append(op)
            for op in pending:
                self._journal_or_drop(op)

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
                with self.lock:
                    if self.taken_over:  # close() journaled what it found; not this one
                        self._journal_or_drop(op)
                        return
                    self.sending = op
                done = self.lost is None and self.journal_path is None and self._send(op)
                with self.lock:
                    self.sending = None
                    if self.taken_over:  # close() journaled it while it was in flight
                        return
                    if not done:
                        self._journal_or_drop(op)
            if time.monotonic() >= next_beat:
                self._beat()
                next_beat = time.monotonic() + store.heartbeat_seconds()

    def _send(self, op: dict) -> bool:
        """Apply `op`, retrying; True once it is done with (sent, or refused and dropped);
        False once the store has failed for give_up_seconds(), or close() took over."""
        first_failure, pause = None, 0.5
        while True:
            try:
                self.run_id = apply(self.client, self.run_id, op)
                return True
            except Exception as err:
                if store.is_disk_full(err):  # waiting will not make room: journal it now
                    self._give_up_safely(err)
                    return False
                if store.is_refused(err):
                    self._refuse(op, err)
                    return True
                now = time.monotonic()
                first_failure = first_failure or now
                if self.taken_over:
                    return False
                if now - first_failure >= give_up_seconds():
                    self._give_up_safely(err)
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 5.0)

    def _refuse(self, op: dict, err: BaseException) -> None:
        """The store refused `op` itself: drop it, count it, say so."""
        self.refused += 1
        self.values_dropped += len(op.get("metrics") or ())
        print(f"sweeplab: warning: run {self.header.get('run_name')}: MLflow refused "
              f"{describe(op)}: {one_line(err)}; dropped (sent again it would be refused again)",
              file=sys.stderr, flush=True)

    def _beat(self) -> None:
        if self.journal_path is None and self.lost is None and self.run_id is not None:
            try:
                store.beat(self.client, self.run_id)
            except Exception:  # the next op finds out whether the store is really gone
                pass

    # ------------------------------------------------------------ the journal

    def _give_up_safely(self, err: BaseException) -> None:
        """Switch to the journal; if it cannot be opened, drop what follows (see `_drop`)."""
        try:
            self._give_up(err)
        except OSError as journal_err:
            self._drop(err, journal_err)

    def _journal_or_drop(self, op: dict) -> None:
        if self.lost is None and self.journal_path is not None:
            try:
                self._journal(op)
                return
            except OSError as err:
                self._drop(None, err)
        self.dropped += 1
        self.values_dropped += len(op.get("metrics") or ())

    def _drop(self, store_err: Optional[BaseException], journal_err: OSError) -> None:
        """Neither the store nor the journal takes writes: say so once, drop the rest."""
        if self.lost is not None:
            return
        self.lost = journal_err
        where = self.journal_path or os.path.join(self.journal_dir, f"{JOURNAL_STEM}.jsonl")
        shown = store.redact(self.header["tracking_uri"])
        store_part = (f"mlflow.tracking_uri {shown}: {one_line(store_err)}"
                      f"; " if store_err is not None else "")
        print(f"sweeplab: error: run {self.header.get('run_name')}: {store_part}cannot save its "
              f"writes in {where} either ({one_line(journal_err)}): they are lost; free space "
              f"(or point hydra.sweep.dir elsewhere) and run the job again", file=sys.stderr,
              flush=True)

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
            try:
                with os.fdopen(fd, "w") as f:
                    header = {**self.header, "run_id": self.run_id,
                              "tracking_uri": store.redact(self.header["tracking_uri"])}
                    f.write(json.dumps(header) + "\n")
            except OSError:
                os.remove(path)  # a journal without its header could not be replayed
                raise
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
    """(header, ops). A line that is not an op (a last line cut short by a killed process, or
    garbage) is left out, with one warning line naming the file and the line number."""
    with open(path) as f:
        lines = f.read().splitlines()
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    header, ops = json.loads(numbered[0][1]), []
    for number, line in numbered[1:]:
        try:
            op = json.loads(line)
        except json.JSONDecodeError:
            op = None
        if isinstance(op, dict) and op.get("op") in OPS:
            ops.append(op)
            continue
        why = ("cut short: its process died while writing it" if number == numbered[-1][0]
               and op is None else "not a write sweeplab saves")
        print(f"sweeplab: warning: {path} line {number}: {why}; left out, the other lines are "
              f"uploaded", file=sys.stderr, flush=True)
    return header, ops


def journal_uri(uri: str) -> str:
    """The store a journal names: saved with its password redacted, so it is replayed with the
    password taken from MLflow's variables (a server) or PGPASSWORD / ~/.pgpass (PostgreSQL)."""
    return store.without_password(uri) if store.REDACTED in uri else uri


def replay(path: str, uri: Optional[str] = None) -> Tuple[str, int]:
    """Apply a journal to its store (or to `uri`); returns (run id, ops done now).

    Progress is kept in `<path>.progress` after every op, so an interrupted replay goes on
    where it stopped instead of creating the run twice. An op the store refuses itself
    (`store.is_refused`) is left out with one warning line, as the outbox drops it; any
    other failure stops the replay, to go on from that op next time.
    """
    header, ops = read_journal(path)
    progress_path = path + ".progress"
    progress = {"done": 0, "run_id": header.get("run_id")}
    if os.path.exists(progress_path):
        with open(progress_path) as f:
            progress = json.load(f)
    client = store.open_client(uri or journal_uri(header["tracking_uri"]))
    run_id, start = progress["run_id"], progress["done"]
    base_dir = os.path.dirname(os.path.abspath(path))
    for index in range(start, len(ops)):
        try:
            run_id = apply(client, run_id, ops[index], base_dir)
        except Exception as err:
            if not store.is_refused(err):
                raise
            print(f"sweeplab: warning: {path}: MLflow refused {describe(ops[index])}: "
                  f"{one_line(err)}; left out (sent again it would be refused again)",
                  file=sys.stderr, flush=True)
        with open(progress_path, "w") as f:
            json.dump({"done": index + 1, "run_id": run_id}, f)
    if run_id is not None and any(op["op"] == "set_terminated" for op in ops):
        # The run was closed after all: a "lost" verdict from a later sweep no longer holds.
        error = client.get_run(run_id).data.tags.get(tags.ERROR, "")
        if error.startswith(tags.LOST_ERROR_PREFIX):
            client.delete_tag(run_id, tags.ERROR)
    return run_id, len(ops) - start
