"""runner/outbox.py and TrackedRun on a really full disk (a small tmpfs, filled), and journals
with a damaged line. Real sqlite stores, real threads; no mocks."""
import json
import os
import subprocess
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import compose_cfg, mount_tmpfs
from runner import outbox, store, tags
from runner.tracking import JobContext, TrackedRun, WritesLost


@pytest.fixture
def full_disk(tmp_path):
    """A folder on an 8 MB tmpfs; `fill()` then takes every byte left. Needs root (mount)."""
    folder = tmp_path / "disk"
    mount_tmpfs(folder, "8m")

    def fill():
        with open(folder / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 16))
                    f.flush()
            except OSError:
                pass
        os.sync()

    yield folder, fill
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def thread_errors():
    """Exceptions that escaped any thread during the test (the outbox's must not)."""
    seen, before = [], threading.excepthook
    threading.excepthook = lambda args: seen.append(args.exc_value)
    yield seen
    threading.excepthook = before


def _run(uri):
    client = store.open_client(uri)
    exp_id = store.ensure_experiment(client, "sweeplab", None)
    return client, client.create_run(exp_id).info.run_id


def test_store_and_journal_on_a_full_disk_one_line_no_crash(full_disk, thread_errors, capsys):
    folder, fill = full_disk
    client, run_id = _run(f"sqlite:///{folder}/mlflow.db")
    fill()
    header = {"tracking_uri": f"sqlite:///{folder}/mlflow.db", "run_name": "lr=0.1"}
    started = time.monotonic()
    box = outbox.Outbox(client, run_id, str(folder / "job"), header)
    box.put({"op": "log_batch", "metrics": [["loss", float(i), 0, i] for i in range(500)]})
    box.put({"op": "log_batch", "tags": [[tags.OUTCOME, tags.OUTCOME_OK]]})
    box.put({"op": "set_terminated", "status": "FINISHED", "end_time": 0})
    assert box.close() is None  # no journal could be written
    assert time.monotonic() - started < outbox.give_up_seconds()  # a full disk is not waited out
    assert not box.thread.is_alive() and thread_errors == []
    assert box.dropped == 3 and store.is_disk_full(box.lost)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("sweeplab: error: run lr=0.1: mlflow.tracking_uri ")
    assert "No space left on device" in lines[0] and "they are lost" in lines[0]
    assert not list((folder / "job").glob("mlflow_pending*"))  # no journal without a header


def test_a_run_whose_writes_were_lost_fails_its_job(full_disk, tmp_path, thread_errors, capsys):
    folder, fill = full_disk
    cfg = compose_cfg("model=mlp", f"mlflow.tracking_uri=sqlite:///{folder}/mlflow.db")
    store.open_client(f"sqlite:///{folder}/mlflow.db")  # the store exists, then the disk fills
    fill()
    with pytest.raises(WritesLost, match=r"reached neither the store nor the journal"):
        with TrackedRun(cfg, JobContext(output_dir=str(folder / "job")), {}) as run:
            run.log_metrics({"loss": 1.0}, step=1)
            run.finish({"test_acc": 0.5}, tags.OUTCOME_OK)
    assert thread_errors == []
    errors = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith("sweeplab:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], errors


def test_a_full_output_disk_closes_the_run_failed_in_a_store_elsewhere(full_disk, tmp_path):
    """The job's folder is full, the store is not: its run is closed FAILED with the reason."""
    folder, fill = full_disk
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_cfg("model=mlp", f"mlflow.tracking_uri={uri}")
    fill()
    with pytest.raises(OSError):
        with TrackedRun(cfg, JobContext(output_dir=str(folder)), {}) as run:
            run.log_metrics({"loss": 1.0}, step=1)
            (folder / "checkpoint").write_bytes(b"\0" * (1 << 20))  # what a job writes
    client = MlflowClient(tracking_uri=uri)
    closed = client.get_run(run.run_id)
    assert closed.info.status == "FAILED"
    assert closed.data.tags[tags.OUTCOME] == tags.OUTCOME_ERROR
    assert "No space left on device" in closed.data.tags[tags.ERROR]
    assert [m.value for m in client.get_metric_history(run.run_id, "loss")] == [1.0]


# ---------------------------------------------------------------- journals

def _journal(folder, uri, lines):
    path = folder / "mlflow_pending.jsonl"
    header = {"tracking_uri": uri, "experiment_name": "sweeplab", "artifact_location": None,
              "run_name": "lr=0.1", "run_id": None}
    create = {"op": "create_run", "experiment_name": "sweeplab", "artifact_location": None,
              "run_name": "lr=0.1", "tags": {tags.OUTCOME: tags.OUTCOME_RUNNING},
              "start_time": 1000}
    path.write_text("\n".join([json.dumps(header), json.dumps(create), *lines]) + "\n")
    return path


def _metric(step):
    return json.dumps({"op": "log_batch", "metrics": [["loss", 1.0 / step, 1000, step]]})


def test_a_garbage_line_in_a_journal_is_named_and_the_rest_uploaded(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = _journal(tmp_path, uri, [_metric(1), "{not json at all", '{"op": "rm -rf"}', "42",
                                    _metric(2), json.dumps({"op": "set_terminated",
                                                            "status": "FINISHED",
                                                            "end_time": 2000})])
    run_id, applied = outbox.replay(str(path))
    assert applied == 4  # create, two metrics, close
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"sweeplab: warning: {path} line {n}: not a write sweeplab saves; left out, "
                     f"the other lines are uploaded" for n in (4, 5, 6)]
    client = MlflowClient(tracking_uri=uri)
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_last_line_cut_short_is_named_as_such(tmp_path, capsys):
    path = _journal(tmp_path, f"sqlite:///{tmp_path}/mlflow.db", [_metric(1), '{"op": "log_b'])
    header, ops = outbox.read_journal(str(path))
    assert [op["op"] for op in ops] == ["create_run", "log_batch"]
    assert capsys.readouterr().err.splitlines() == [
        f"sweeplab: warning: {path} line 4: cut short: its process died while writing it; left "
        f"out, the other lines are uploaded"]


# ---------------------------------------------------------------- refused writes

def test_a_write_the_store_refuses_is_dropped_loudly_and_counted(tmp_path, thread_errors,
                                                                 capsys):
    """Only a request the store itself refuses is dropped (here: metrics for a deleted run,
    which sqlite refuses as MLflow always does); one line says so and the counters hold it."""
    client, run_id = _run(f"sqlite:///{tmp_path}/mlflow.db")
    client.delete_run(run_id)
    box = outbox.Outbox(client, run_id, str(tmp_path / "job"),
                        {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "run_name": "lr=0.1"})
    box.put({"op": "log_batch", "metrics": [["loss", float(i), 0, i] for i in range(7)]})
    assert box.close() is None  # nothing to keep: sent again it would be refused again
    assert (box.refused, box.values_dropped, box.dropped) == (1, 7, 0)
    assert thread_errors == []
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("sweeplab: warning: run lr=0.1: MLflow refused log_batch (7 "
                               "metric values): ")
    assert lines[0].endswith("dropped (sent again it would be refused again)")


def test_sync_leaves_out_a_write_the_store_refuses_and_uploads_the_rest(tmp_path, capsys):
    """A param that changed value is refused for good: the replay says so and goes on (it
    used to stop there, at the same write on every `sweeplab sync`)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    params = [json.dumps({"op": "log_batch", "params": [["optimizer.lr", lr]]})
              for lr in ("0.1", "0.2")]
    path = _journal(tmp_path, uri, [*params, _metric(1)])
    run_id, done = outbox.replay(str(path))
    assert done == 4
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"sweeplab: warning: {path}: MLflow refused log_batch (1 param): "), lines
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run_id).data.params == {"optimizer.lr": "0.1"}
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1]


# ---------------------------------------------------------------- batching

def test_metrics_go_out_in_whole_batches_and_all_arrive(tmp_path):
    """Each batch is one request to a tracking server: only the last may be part-full."""
    from runner import tracking
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_cfg("model=mlp", f"mlflow.tracking_uri={uri}")
    sizes = []
    with TrackedRun(cfg, JobContext(output_dir=str(tmp_path)), {}) as run:
        put = run.outbox.put

        def counted(op):  # the real outbox, its batch sizes noted
            if op["op"] == "log_batch" and op.get("metrics"):
                sizes.append(len(op["metrics"]))
            put(op)
        run.outbox.put = counted
        for start in range(0, 3000, 700):  # e.g. 700 values an evaluation interval
            steps = range(start, min(start + 700, 3000))
            run.log_series("train_loss", steps, [float(s) for s in steps])
        run.flush()
    assert sizes == [tracking.MAX_METRICS_PER_BATCH] * 3  # not 1000 + 400 + 1000 + ...
    history = MlflowClient(tracking_uri=uri).get_metric_history(run.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(3000))
