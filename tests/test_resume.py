"""runner/resume.py and runner/sweep.py in-process, on a real MLflow sqlite store in a tmp dir:
whose process is gone, which sweep a command finds again, the sweep's folder and counts."""
import os
import socket
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import compose_cfg
from runner import resume, sweep, tags
from runner.tracking import JobContext, config_hash


def ended_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------- whose process is gone

def test_a_process_is_gone_only_when_this_host_can_tell():
    host = socket.gethostname()
    assert not resume.process_gone(resume.this_process())  # alive
    assert resume.process_gone(f"{host}:{ended_pid()}:")  # ended
    assert not resume.process_gone(f"elsewhere:{ended_pid()}:")  # another host: its heartbeat
    # This pid, but started at another time: the pid was reused by a new process.
    assert resume.process_gone(f"{host}:{os.getpid()}:1")
    assert not resume.process_gone("")


@pytest.fixture
def client(store):
    return MlflowClient(tracking_uri=store)


def test_running_runs_of_dead_processes_are_closed_lost_and_no_others(client):
    exp = client.create_experiment("e")
    dead = client.create_run(exp, tags={tags.PROCESS: f"{socket.gethostname()}:"
                                                        f"{ended_pid()}:"}).info.run_id
    alive = client.create_run(exp, tags={tags.PROCESS: resume.this_process()}).info.run_id
    untagged = client.create_run(exp).info.run_id
    assert resume.close_dead_runs(client, [exp]) == [dead]
    run = client.get_run(dead)
    assert run.info.status == "FAILED" and run.data.tags[tags.OUTCOME] == "lost"
    assert run.data.tags[tags.ERROR].startswith("lost: its process ")
    assert {client.get_run(r).info.status for r in (alive, untagged)} == {"RUNNING"}


# ---------------------------------------------------------------- finding a sweep

def parent(client, exp, key, sweep_dir, status):
    run = client.create_run(exp, tags={tags.ROLE: tags.ROLE_SWEEP, tags.SWEEP_KEY: key,
                                       tags.SWEEP_DIR: sweep_dir})
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_the_newest_sweep_of_a_command_is_found_in_its_dir(client):
    exp = client.create_experiment("e")
    old = parent(client, exp, "k", "/a", "KILLED")
    new = parent(client, exp, "k", "/b", "FINISHED")
    parent(client, exp, "k", "/c", "RUNNING")  # alive: another launcher's
    parent(client, exp, "other", "/a", "KILLED")
    assert resume.newest_sweep(client, exp, "k").info.run_id == new
    assert resume.newest_sweep(client, exp, "k", "/a").info.run_id == old
    assert resume.newest_sweep(client, exp, "k", "/c") is None


def test_a_finished_job_is_found_by_its_config_and_returns_its_objective(client, store,
                                                                         capsys):
    exp = client.create_experiment("sweeplab")
    sweep_id = parent(client, exp, "k", "/a", "RUNNING")
    cfg = compose_cfg("model=mlp", f"mlflow.tracking_uri={store}")
    job = JobContext(parent_run_id=sweep_id, tracking_uri=store)
    assert resume.finished_value(cfg, job) is None
    child = client.create_run(exp, run_name="lr=0.1", tags={
        "mlflow.parentRunId": sweep_id, tags.CONFIG_HASH: config_hash(cfg)}).info.run_id
    client.log_metric(child, "val_loss", 0.5)
    assert resume.finished_value(cfg, job) is None  # still running
    client.set_terminated(child, "FINISHED")
    assert resume.finished_value(cfg, job) == 0.5
    assert capsys.readouterr().out == f"already finished: run {child} (lr=0.1)\n"
    assert resume.finished_count(client, sweep_id) == 1
    assert resume.finished_value(cfg, JobContext()) is None  # a single run resumes nothing


def test_resume_refuses_a_live_sweep_and_takes_over_a_dead_one_at_once(client, store,
                                                                        tmp_path, capsys):
    exp = client.create_experiment("sweeplab")
    sweep_dir = str(tmp_path / "sweep")
    sweep_id = parent(client, exp, "k", sweep_dir, "RUNNING")
    client.set_tag(sweep_id, tags.HEARTBEAT, str(int(time.time())))  # fresh
    client.set_tag(sweep_id, tags.PROCESS, resume.this_process())
    resume.save_sweep_file(sweep_dir, {"parent_run_id": sweep_id, "tracking_uri": store,
                                       "task_overrides": ["optimizer.lr=0.1,0.2"],
                                       "hydra_overrides": ["hydra/launcher=basic"]})
    assert resume.resume_overrides([sweep_dir]) == (None, 2)
    assert "is still running" in capsys.readouterr().err
    # Its launcher was SIGKILLed: no waiting for the heartbeat to go stale.
    client.set_tag(sweep_id, tags.PROCESS, f"{socket.gethostname()}:{ended_pid()}:")
    overrides, code = resume.resume_overrides([sweep_dir, "hydra.launcher.n_workers=1"])
    assert code == 0 and overrides == [
        "-m", "optimizer.lr=0.1,0.2", f"mlflow.tracking_uri={store}", "hydra/launcher=basic",
        f"hydra.sweep.dir={sweep_dir}", "hydra.launcher.n_workers=1"]
    assert client.get_run(sweep_id).info.status == "FAILED"


def test_resume_of_a_missing_sweep_is_one_line_and_exit_2(tmp_path, capsys):
    assert resume.resume_overrides([str(tmp_path / "nowhere"),
                                    f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"]) == (None, 2)
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("sweeplab")]
    assert line.startswith("sweeplab: error: resume: ")


# ---------------------------------------------------------------- the sweep's folder, counts

def test_a_sweep_dir_is_claimed_by_one_sweep_only(tmp_path):
    path = str(tmp_path / "sweeps" / "12-00-00")
    assert sweep.claim_sweep_dir(path) == path
    assert sweep.claim_sweep_dir(path) == path + "-2"
    assert sweep.claim_sweep_dir(path) == path + "-3"


@pytest.mark.parametrize("overrides, jobs, distinct", [
    ((), 1, 1),
    (("optimizer.lr=0.1,0.01",), 2, 2),
    (("optimizer.lr=0.01,0.001,0.01", "clipping=none,value"), 6, 4),
    (("seed=range(3)", "model=mlp,lenet"), 6, 6),
])
def test_jobs_are_counted_as_the_basic_sweeper_makes_them(overrides, jobs, distinct):
    from hydra import compose, initialize_config_dir

    from conftest import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose("config", return_hydra_config=True)
    # What the CLI's multirun puts there (`compose` refuses sweep values).
    from omegaconf import open_dict

    with open_dict(config):
        config.hydra.overrides.task = list(overrides)
    assert sweep.count_jobs(config) == jobs
    assert sweep.count_jobs(config, distinct=True) == distinct


def test_the_preset_sweep_counts_too():
    from hydra import compose, initialize_config_dir

    from conftest import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose("config", overrides=["experiment=lr_clip"], return_hydra_config=True)
    assert sweep.count_jobs(config) == 28  # 7 learning rates x 4 clipping modes


def test_the_sweep_key_ignores_order_and_the_store():
    assert sweep.sweep_key(["a=1", "b=2,3"]) == sweep.sweep_key(["b=2,3", "a=1"])
    assert sweep.sweep_key(["a=1", "mlflow.tracking_uri=x"]) == sweep.sweep_key(["a=1"])
    assert sweep.common_overrides(["a=1", "b=2,3", "c=range(2)"]) == ["a=1"]


def test_rejection_markers_are_left_counted_and_cleared(tmp_path):
    for name in ("0", "1", "2"):
        (tmp_path / name).mkdir()
    sweep.mark_rejected(str(tmp_path / "2"), "optimizer.lr: bad")
    assert sweep.rejected_jobs(str(tmp_path)) == ["2"]
    sweep.clear_rejections(str(tmp_path))
    assert sweep.rejected_jobs(str(tmp_path)) == []
