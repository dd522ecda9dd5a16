"""runner/jobs.py in-process: a job's lifecycle with real TensorFlow and a real MLflow sqlite
store in a tmp dir — accept, train, conclude — and the lines and exit codes it ends in."""
import math
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import compose_cfg
from runner import jobs, resume, signals, sweep, tags
from runner.tracking import JobContext, config_hash

TINY = ("model=mlp", "model.hidden=[8]", "train.steps=10", "train.eval_every=5",
        "train.eval_size=50")


def cfg_in(store, *overrides):
    return compose_cfg(*TINY, *overrides, f"mlflow.tracking_uri={store}")


def context(tmp_path, **fields):
    return JobContext(overrides=("model=mlp",), output_dir=str(tmp_path),
                      should_stop=signals.received, **fields)


def runs(store):
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("sweeplab")
    return client, ([] if experiment is None else
                    client.search_runs([experiment.experiment_id], max_results=100))


def write_npz(folder, labels_high=9):
    """A small mnist.npz; labels above 9 are a data error found only in training."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    np.savez(folder / "mnist.npz", x_train=rng.integers(0, 255, (300, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, labels_high + 1, 300).astype(np.uint8),
             x_test=rng.integers(0, 255, (60, 28, 28), dtype=np.uint8),
             y_test=rng.integers(0, 10, 60).astype(np.uint8))
    return folder


# ---------------------------------------------------------------- accept

def test_a_bad_value_is_rejected_before_anything_else(tmp_path, store):
    job = jobs.accept(cfg_in(store, "optimizer.lr=-1"), context(tmp_path))
    assert job.early == jobs.Rejected("optimizer.lr: must be > 0, got -1.0; "
                                      "e.g. optimizer.lr=0.001")
    assert runs(store)[1] == []


def test_a_store_that_cannot_work_is_rejected_when_asked_to_check(tmp_path):
    (tmp_path / "blocked").write_text("a file where the store's folder should be")
    job = jobs.accept(cfg_in(f"sqlite:///{tmp_path}/blocked/mlflow.db"), context(tmp_path),
                      check_store=True)
    assert isinstance(job.early, jobs.Rejected)
    assert job.early.message.startswith("mlflow.tracking_uri: cannot create the folder")


def test_an_accepted_job_holds_its_resolved_config(tmp_path, store):
    cfg = cfg_in(store)
    job = jobs.accept(cfg, context(tmp_path))
    assert job.early is None and job.cfg == cfg and job.cfg is not cfg
    assert jobs.accept(cfg).context.should_stop is signals.received  # outside Hydra


def test_repeated_configs_train_once(tmp_path, store, capsys):
    batch = [jobs.Job(cfg_in(store, f"optimizer.lr={lr}"), context(tmp_path), num=i)
             for i, lr in enumerate((0.01, 0.001, 0.01, 0.01))]
    assert jobs.repeats(batch) == {2: batch[0], 3: batch[0]}
    assert "job #2 repeats the config of job #0" in capsys.readouterr().out


# ---------------------------------------------------------------- train and conclude

def test_a_job_trains_and_concludes_with_its_objective(tmp_path, store):
    job = jobs.accept(cfg_in(store), context(tmp_path))
    [value] = jobs.train(jobs.Group([job]))
    assert isinstance(value, float) and math.isfinite(value)
    assert jobs.conclude(job, value, in_sweep=False) == (value, 0)
    client, [run] = runs(store)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["val_loss"] == pytest.approx(value)
    # The process that wrote it, so resume can tell it died.
    assert run.data.tags[tags.PROCESS] == resume.this_process()


def test_a_job_that_raises_is_failed_with_its_run_and_exit_1(tmp_path, store, capsys):
    bad = write_npz(tmp_path / "bad", labels_high=200)
    job = jobs.accept(cfg_in(store, "dataset=mnist", f"dataset.data_dir={bad}"),
                      context(tmp_path))
    [result] = jobs.train(jobs.Group([job]))
    client, [run] = runs(store)
    assert result == jobs.Failed(result.error, run.info.run_id)
    assert run.info.status == "FAILED" and "label" in result.error.lower()
    assert jobs.conclude(job, result, in_sweep=True)[1] == 1
    err = capsys.readouterr().err
    assert f"sweeplab: error: job model=mlp failed: {result.error}; run {run.info.run_id} is " \
           f"FAILED, traceback in its error.txt" in err


def test_a_value_only_training_can_judge_is_rejected(tmp_path, store, capsys):
    job_dir = tmp_path / "sweep" / "3"
    job_dir.mkdir(parents=True)
    job = jobs.accept(cfg_in(store, "train.batch_size=100000"), context(job_dir))
    [result] = jobs.train(jobs.Group([job]))
    assert isinstance(result, jobs.Rejected) and result.message.startswith("train.batch_size")
    assert jobs.conclude(job, result, in_sweep=True)[1] == 2
    assert capsys.readouterr().err == f"sweeplab: error: {result.message}\n"
    assert sweep.rejected_jobs(str(tmp_path / "sweep")) == ["3"]  # the sweep counts it


def test_after_a_signal_no_job_trains(tmp_path, store, monkeypatch, capsys):
    monkeypatch.setattr(signals, "_received", signal.SIGTERM)
    job = jobs.accept(cfg_in(store), context(tmp_path))
    assert jobs.train(jobs.Group([job])) == [jobs.Killed(signal.SIGTERM)]
    assert "sweeplab: skipped (stopping on SIGTERM): model=mlp" in capsys.readouterr().err
    assert runs(store)[1] == []
    assert jobs.conclude(job, jobs.Killed(signal.SIGTERM), in_sweep=True)[1] == 143


def dead_process() -> str:
    """A `sweeplab.process` value of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return f"{socket.gethostname()}:{child.pid}:"


def test_a_lost_job_closes_the_run_its_dead_process_left_running(tmp_path, store, capsys):
    cfg = cfg_in(store)
    job = jobs.accept(cfg, context(tmp_path))
    client = MlflowClient(tracking_uri=store)
    exp = client.create_experiment("sweeplab")
    left = client.create_run(exp, tags={tags.CONFIG_HASH: config_hash(job.cfg),
                                        tags.PROCESS: dead_process()}).info.run_id
    alive = client.create_run(exp, tags={tags.CONFIG_HASH: config_hash(job.cfg),
                                         tags.PROCESS: resume.this_process()}).info.run_id
    why = "its worker process 123 died (exit code -9)"
    assert jobs.conclude(job, jobs.Lost(why), in_sweep=True) == (pytest.approx(math.nan,
                                                                                nan_ok=True), 1)
    run = client.get_run(left)
    assert run.info.status == "FAILED" and run.data.tags[tags.OUTCOME] == "lost"
    assert why in run.data.tags[tags.ERROR]
    assert client.get_run(alive).info.status == "RUNNING"  # another process's run
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("sweeplab:")]
    assert line == f"sweeplab: error: job model=mlp lost: {why}; run {left} is FAILED " \
                   f"(outcome=lost)"


def test_a_job_lost_before_its_run_existed_gets_a_failed_run(tmp_path, store):
    job = jobs.accept(cfg_in(store), context(tmp_path))
    jobs.conclude(job, jobs.Lost("its worker process 5 died (exit code -9)"), in_sweep=True)
    _, [run] = runs(store)
    assert run.info.status == "FAILED" and run.data.tags[tags.OUTCOME] == "lost"


def test_every_result_kind_is_concluded(tmp_path):
    job = jobs.Job(compose_cfg(*TINY), context(tmp_path))
    assert jobs.conclude(job, 0.25, in_sweep=True) == (0.25, 0)
    assert jobs.conclude(job, jobs.Killed(signal.SIGINT), in_sweep=True)[1] == 130
    assert jobs.conclude(job, jobs.Failed("E: x"), in_sweep=False)[1] == 1
    assert jobs.conclude(job, jobs.Rejected("a.b: bad"), in_sweep=False)[1] == 2
    assert not os.path.exists(tmp_path / sweep.CONFIG_ERROR_MARKER)  # a single run: no marker
