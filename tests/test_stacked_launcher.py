"""hydra/launcher=stacked: real Hydra multiruns through the real CLI, real MLflow (sqlite), real
TensorFlow, each from a working directory that is not the project root. A stacked sweep must
leave exactly what the basic launcher leaves (output dirs, log files, MLflow child runs and
their curves), plus two tags; jobs that cannot stack train alone; bad configs are skipped."""
import math
import os
import pickle
import re
import signal
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY, children_of, cli_env, compose_cfg, runs_of
from runner.grouping import even_chunks, graph_key, plan_chunks

STACKED = ("hydra/launcher=stacked",)
SWEEP = ("model=mlp", "model.hidden=[16]", "optimizer.lr=0.01,0.001", "clipping=none,global_norm",
         *TINY)
# Relative, so that both sweeps log the same `mlflow.tracking_uri` param (each in its own cwd).
STORE = "mlflow.tracking_uri=sqlite:///mlflow.db"
PICKLE_JOB_INFO = ("+hydra.callbacks.pickle._target_="
                   "hydra.experimental.callbacks.PickleJobInfoCallback")


def start_cli(args, cwd, executable=(sys.executable, "-m", "runner"), env=None):
    """The CLI as a running process (stdout/stderr to files in `cwd`)."""
    os.makedirs(cwd, exist_ok=True)
    out, err = open(Path(cwd) / "stdout.txt", "w"), open(Path(cwd) / "stderr.txt", "w")
    return subprocess.Popen([*executable, "-m", *args, "hydra.sweep.dir=sweep"], cwd=cwd,
                            env=env or cli_env(cwd), stdout=out, stderr=err, text=True)


def outcome(process, cwd, timeout=900):
    """(return code, stdout, stderr) once `process` is done."""
    process.wait(timeout=timeout)
    return (process.returncode, (Path(cwd) / "stdout.txt").read_text(),
            (Path(cwd) / "stderr.txt").read_text())


def artifact_paths(client, run_id, path=None):
    """Every artifact file of a run, recursively."""
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def job_dirs(cwd):
    return sorted(p for p in (Path(cwd) / "sweep").iterdir() if p.is_dir())


# ---------------------------------------------------------------- grouping (no TensorFlow)

def test_jobs_differing_in_shape_free_groups_share_a_graph_and_others_do_not():
    base = compose_cfg("model=mlp")
    same_graph = [compose_cfg("model=mlp", *o) for o in (
        ("optimizer.lr=0.5", "optimizer.beta2=0.9"), ("clipping=value", "clipping.min=-2"),
        ("regularizer=l2", "regularizer.strength=0.1"), ("lr_schedule=cosine",),
        ("plots.skip_first=3",), ("seed=1",))]  # seeds are replicates: one graph
    other_graph = [compose_cfg("model=mlp", *o) for o in (
        ("optimizer=sgd",), ("model.hidden=[8]",), ("train.batch_size=16",),
        ("dataset=fashion_mnist",), ("mlflow.experiment_name=x",))]
    assert {graph_key(cfg, {}) for cfg in [base, *same_graph]} == {graph_key(base, {})}
    assert graph_key(base, {}) not in {graph_key(cfg, {}) for cfg in other_graph}
    assert graph_key(base, {"A": "1"}) != graph_key(base, {})


def test_a_group_of_several_chunks_fills_every_worker_in_each_round():
    assert [len(c) for c in even_chunks(list(range(40)), 16, workers=2)] == [10] * 4
    assert [len(c) for c in even_chunks(list(range(140)), 16, workers=2)] == [14] * 10
    assert [len(c) for c in even_chunks(list(range(17)), 16, workers=3)] == [6, 6, 5]
    assert [len(c) for c in even_chunks(list(range(5)), 4, workers=4)] == [3, 2]  # >= 2 each


def test_chunks_are_even_and_never_above_max_stack():
    assert even_chunks(list(range(17)), 16) == [list(range(9)), list(range(9, 17))]
    assert [len(c) for c in even_chunks(list(range(10)), 4)] == [4, 3, 3]
    assert even_chunks([1, 2], 16) == [[1, 2]]


def test_chunks_are_split_until_every_worker_has_one():
    cfgs = [compose_cfg("model=mlp", f"optimizer.lr={lr}") for lr in (0.1, 0.01, 0.001)] * 6
    sizes = lambda workers, max_stack=16: sorted(  # noqa: E731
        len(c.members) for c in plan_chunks(cfgs, [{}] * 18, max_stack, workers=workers))
    assert sizes(1) == [9, 9] and sizes(2) == [9, 9]
    assert sizes(3) == [6, 6, 6] and sizes(4) == [4, 4, 5, 5]
    assert sizes(2, max_stack=32) == [9, 9]
    # A chunk below four jobs stays whole: halves of one would train alone.
    assert [len(c.members) for c in plan_chunks(cfgs[:3], [{}] * 3, 16, workers=2)] == [3]


def test_a_replicate_sweep_chunks_each_seed_together():
    # lr x seed with seed varying fastest, as `optimizer.lr=... seed=range(4)` sweeps it:
    # 4 configs x 4 seeds on 2 workers in chunks of at most 4 -> each chunk holds one seed.
    cfgs = [compose_cfg("model=mlp", f"optimizer.lr={lr}", f"seed={seed}")
            for lr in (0.1, 0.01, 0.001, 0.0001) for seed in range(4)]
    chunks = plan_chunks(cfgs, [{}] * len(cfgs), max_stack=4, workers=2)
    assert [sorted({cfgs[i].seed for i in c.members}) for c in chunks] == [[0], [1], [2], [3]]
    assert sorted(i for c in chunks for i in c.members) == list(range(len(cfgs)))


def test_unstackable_models_and_lonely_jobs_train_alone_with_a_reason():
    cfgs = [compose_cfg("model=mlp", "optimizer.lr=0.1"), compose_cfg("model=alexnet"),
            compose_cfg("model=mlp", "optimizer.lr=0.2"), compose_cfg("model=mlp", "train.steps=7"),
            compose_cfg("model=lstm_small", "dataset=ptb", "dataset.data_dir=/nowhere")]
    chunks = plan_chunks(cfgs, [{}] * len(cfgs), max_stack=16)
    assert [c.members for c in chunks] == [[0, 2], [1], [3], [4]]
    assert chunks[0].alone is None
    assert "model=alexnet trains one per graph" in chunks[1].alone
    assert "no other job" in chunks[2].alone
    assert "LSTM state" in chunks[3].alone
    assert [c.members for c in plan_chunks(cfgs[:3:2], [{}] * 2, max_stack=1)] == [[0], [1]]


# ---------------------------------------------------------------- the same results as basic

@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """The 4-job sweep under the basic launcher and under stacked, run at the same time."""
    basic, stacked = tmp_path_factory.mktemp("basic"), tmp_path_factory.mktemp("stacked")
    processes = [start_cli([*SWEEP, STORE], basic),
                 # One process, all four in one graph (workers: test_workers_train_whole_chunks).
                 start_cli([*STACKED, "hydra.launcher.n_workers=1", *SWEEP, STORE,
                            PICKLE_JOB_INFO], stacked)]
    for process, cwd in zip(processes, (basic, stacked)):
        code, _, err = outcome(process, cwd)
        assert code == 0, err[-3000:]
    return basic, stacked


def same_but_cwd(stacked_text, basic_text, sweeps):
    """Equal once each sweep's own directory is blanked out (the sweep callback ships the
    store's absolute URI with every job, as an override)."""
    return stacked_text.replace(str(sweeps[1]), "<cwd>") == basic_text.replace(str(sweeps[0]),
                                                                               "<cwd>")


def children(cwd):
    client, runs = runs_of(f"sqlite:///{cwd}/mlflow.db")
    return client, children_of(runs)


def test_stacked_children_have_the_basic_launchers_params_metrics_tags_artifacts(sweeps):
    (basic_client, basic), (client, stacked) = children(sweeps[0]), children(sweeps[1])
    assert sorted(stacked) == sorted(basic) and len(stacked) == 4
    for name, run in stacked.items():
        alone = basic[name]
        assert run.info.status == "FINISHED"
        assert run.data.params == alone.data.params  # the relative store URI too: STORE
        assert set(run.data.metrics) == set(alone.data.metrics)
        for key in run.data.metrics:
            assert [s for s, _ in history(client, run.info.run_id, key)] == \
                [s for s, _ in history(basic_client, alone.info.run_id, key)], (name, key)
        assert set(run.data.tags) == set(alone.data.tags) | {"sweeplab.launcher",
                                                             "sweeplab.stacked"}
        assert run.data.tags["sweeplab.launcher"] == "stacked"
        assert run.data.tags["sweeplab.stacked"] == "4"
        for tag in ("sweeplab.overrides", "outcome", "dataset.source", "sweeplab.task"):
            assert same_but_cwd(run.data.tags[tag], alone.data.tags[tag], sweeps), tag
        assert artifact_paths(client, run.info.run_id) == \
            artifact_paths(basic_client, alone.info.run_id)


def test_stacked_curves_equal_the_basic_launchers(sweeps):
    (basic_client, basic), (client, stacked) = children(sweeps[0]), children(sweeps[1])
    for name, run in stacked.items():
        alone = basic[name]
        ours = [v for _, v in history(client, run.info.run_id, "train_loss")]
        theirs = [v for _, v in history(basic_client, alone.info.run_id, "train_loss")]
        assert len(ours) == 30
        assert ours == pytest.approx(theirs, rel=1e-4), name
        assert run.data.metrics["test_acc"] == pytest.approx(alone.data.metrics["test_acc"],
                                                             abs=1e-6), name


def test_every_job_has_its_hydra_files_and_a_log_of_its_own_lines(sweeps):
    basic, stacked = sweeps
    client, runs = children(stacked)
    by_overrides = {run.data.tags["sweeplab.overrides"]: run for run in runs.values()}
    labels = {f"[{name}]" for name in runs}
    dirs = job_dirs(stacked)
    assert [d.name for d in dirs] == ["0", "1", "2", "3"]
    for job_dir in dirs:
        hydra_dir = job_dir / ".hydra"
        for name in ("config.yaml", "overrides.yaml"):  # what run_job writes, as under basic
            assert same_but_cwd((hydra_dir / name).read_text(),
                                (Path(basic) / "sweep" / job_dir.name / ".hydra" / name)
                                .read_text(), sweeps), name
        hydra_cfg = yaml.safe_load((hydra_dir / "hydra.yaml").read_text())["hydra"]
        assert hydra_cfg["launcher"]["_target_"].endswith("StackedLauncher")
        assert hydra_cfg["runtime"]["output_dir"] == str(job_dir)
        run = by_overrides[" ".join(yaml.safe_load((hydra_dir / "overrides.yaml").read_text()))]
        lines = (job_dir / "cli.log").read_text().splitlines()
        own = f"[{run.info.run_name}]"
        assert sum(own in line for line in lines) >= 4  # 3 progress lines and the test line
        assert all(f"[sweeplab.steps.job{job_dir.name}]" in line for line in lines)
        assert not any(label in line for line in lines for label in labels - {own})
        assert "cli.log" in artifact_paths(client, run.info.run_id)
        # Hydra's callbacks heard of this job: PickleJobInfoCallback left its return value.
        with open(hydra_dir / "job_return.pickle", "rb") as f:
            returned = pickle.load(f)
        assert returned.return_value == history(client, run.info.run_id, "val_loss")[-1][1]


# ---------------------------------------------------------------- rejected and lonely jobs

def test_a_rejected_job_is_skipped_and_an_alexnet_job_trains_alone(tmp_path):
    process = start_cli([*STACKED, "model=alexnet", "model.input_size=67", "model.fc_units=16",
                         "optimizer.lr=-1,0.01", *TINY, STORE], tmp_path)
    code, out, err = outcome(process, tmp_path)
    assert code == 2, err[-3000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("sweeplab: error:")]
    assert errors[0] == "sweeplab: error: optimizer.lr: must be > 0, got -1.0; " \
                        "e.g. optimizer.lr=0.001"
    assert "1 job(s) of this sweep were rejected" in errors[1] and len(errors) == 2
    rejected, trained = job_dirs(tmp_path)
    assert (rejected / "CONFIG_ERROR").is_file() and (rejected / ".hydra/config.yaml").is_file()
    why = "job #1 trains alone: model=alexnet trains one per graph"
    assert why in out
    log = (trained / "cli.log").read_text()
    assert why in log and "step 30/30" in log
    client, runs = children(tmp_path)
    assert list(runs) == ["lr=0.01"]
    run = runs["lr=0.01"]
    assert run.info.status == "FINISHED" and run.data.tags["outcome"] != "error"
    assert run.data.tags["sweeplab.stacked"] == "1"
    assert run.data.tags["sweeplab.launcher"] == "stacked"


def test_a_bad_launcher_option_is_one_line_and_exit_2(tmp_path):
    process = start_cli([*STACKED, "hydra.launcher.max_stack=0", "model=mlp",
                         "optimizer.lr=0.1,0.2", STORE], tmp_path)
    code, _, err = outcome(process, tmp_path)
    assert code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("sweeplab:")] == [
        "sweeplab: error: hydra.launcher.max_stack: must be an integer >= 1, got 0; "
        "e.g. hydra.launcher.max_stack=16"]


# ---------------------------------------------------------------- the default, repeats, reruns

def test_stacked_is_the_default_launcher_and_basic_is_one_override_away(tmp_path):
    def launcher(*args):
        done = subprocess.run([sys.executable, "-m", "runner", *args, "--cfg", "hydra",
                               "--package", "hydra.launcher"], cwd=tmp_path,
                              env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return yaml.safe_load(done.stdout)["_target_"]

    assert launcher().endswith("StackedLauncher")
    assert launcher("hydra/launcher=basic").endswith("BasicLauncher")


def test_a_repeated_value_in_a_sweep_list_trains_once_and_ends_cleanly(tmp_path):
    process = start_cli(["model=mlp", "model.hidden=[16]", "optimizer.lr=0.01,0.001,0.01",
                         "hydra.launcher.n_workers=1", *TINY, STORE], tmp_path)
    code, out, err = outcome(process, tmp_path)
    assert code == 0 and "Traceback" not in err, err[-3000:]
    assert "job #2 repeats the config of job #0: trained once" in out
    assert [d.name for d in job_dirs(tmp_path)] == ["0", "1", "2"]
    client, runs = children(tmp_path)
    assert sorted(runs) == ["lr=0.001", "lr=0.01"]
    assert all(r.info.status == "FINISHED" for r in runs.values())
    [parent] = [r for r in runs_of(f"sqlite:///{tmp_path}/mlflow.db")[1]
                if r.data.tags.get("sweeplab.role") == "sweep"]
    assert parent.info.status == "FINISHED"


def test_rerunning_a_finished_sweep_in_its_dir_runs_nothing_and_a_new_dir_runs_afresh(
        tmp_path):
    args = ["model=mlp", "model.hidden=[16]", "optimizer.lr=0.01,0.001",
            "hydra.launcher.n_workers=1", *TINY, STORE]
    code, _, err = outcome(start_cli(args, tmp_path), tmp_path)
    assert code == 0, err[-3000:]
    logs = {p: (p.read_text(), p.stat().st_mtime_ns) for p in (tmp_path / "sweep").rglob("*")
            if p.is_file()}
    code, out, err = outcome(start_cli(args, tmp_path), tmp_path)
    assert code == 0, err[-3000:]
    [parent] = [r for r in runs_of(f"sqlite:///{tmp_path}/mlflow.db")[1]
                if r.data.tags.get("sweeplab.role") == "sweep"]
    assert out.splitlines()[-1] == (
        f"sweeplab: all 2 jobs of sweep run {parent.info.run_id} in {tmp_path / 'sweep'} are "
        f"already finished: nothing to run (another hydra.sweep.dir runs them afresh)")
    assert "Launching" not in out + err
    assert {p: (p.read_text(), p.stat().st_mtime_ns) for p in (tmp_path / "sweep").rglob("*")
            if p.is_file()} == logs  # no job folder, log or sweep file touched
    process = subprocess.Popen([sys.executable, "-m", "runner", "-m", *args,
                                "hydra.sweep.dir=again"], cwd=tmp_path, env=cli_env(tmp_path),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, err[-3000:]
    _, runs = runs_of(f"sqlite:///{tmp_path}/mlflow.db")
    assert len(runs) == 6  # two sweeps (parents) of two jobs each
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags.get("mlflow.parentRunId") for r in runs} - {None}) == 2


# ---------------------------------------------------------------- worker processes

@pytest.mark.slow
def test_workers_train_whole_chunks_with_the_same_curves(tmp_path):
    process = start_cli([*STACKED, "hydra.launcher.n_workers=2", "hydra.launcher.max_stack=2",
                         *SWEEP, STORE], tmp_path)
    code, out, err = outcome(process, tmp_path)
    assert code == 0, err[-3000:]
    assert "in 2 worker processes" in out
    # The workers' progress reaches the launcher, which counts the sweep's jobs.
    assert "(4/4 of the sweep)" in out + err
    client, runs = children(tmp_path)
    assert len(runs) == 4
    for name, run in runs.items():
        assert run.info.status == "FINISHED" and run.data.tags["sweeplab.stacked"] == "2"
        assert len(history(client, run.info.run_id, "train_loss")) == 30
    # Jobs that differ only in clipping (never active at clip_norm 5 here) train alike.
    for lr in ("0.01", "0.001"):
        a, b = runs[f"lr={lr},clipping=none"], runs[f"lr={lr},clipping=global_norm"]
        assert [v for _, v in history(client, a.info.run_id, "train_loss")] == pytest.approx(
            [v for _, v in history(client, b.info.run_id, "train_loss")], rel=1e-6)
    for job_dir in job_dirs(tmp_path):
        assert "step 30/30" in (job_dir / "cli.log").read_text()


def spawned_workers(parent_pid):
    """Pids of the multiprocessing workers a process spawned (not its resource tracker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent_pid and "spawn_main" in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_a_worker_that_dies_fails_its_jobs_and_the_sweep_does_not_hang(tmp_path):
    long = [a for a in SWEEP if not a.startswith("train.steps")] + ["train.steps=3000"]
    process = start_cli([*STACKED, "hydra.launcher.n_workers=2", "hydra.launcher.max_stack=2",
                         *long, STORE], tmp_path)
    deadline = time.monotonic() + 300
    while len(list((tmp_path / "sweep").glob("*/cli.log"))) < 4:  # both chunks started
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    victim = spawned_workers(process.pid)[0]
    os.kill(victim, signal.SIGKILL)
    code, out, err = outcome(process, tmp_path, timeout=600)
    assert code == 1 and "Traceback" not in err
    # One line per job of the dead worker's group, naming the job and its closed run.
    lost = [line for line in err.splitlines() if " lost: " in line]
    assert len(lost) == 2, err[-3000:]
    for line in lost:
        assert re.fullmatch(rf"sweeplab: error: job .* lost: its worker process {victim} "
                            rf"died \(exit code -9\); run \w+ is FAILED \(outcome=lost\)", line)
    assert "2 job(s) failed" in err
    client, runs = children(tmp_path)
    finished = [r for r in runs.values() if r.info.status == "FINISHED"]
    assert len(finished) == 2 and all(r.data.tags["outcome"] == "ok" for r in finished)
    lost_runs = [r for r in runs.values() if r.info.status != "FINISHED"]
    assert [(r.info.status, r.data.tags["outcome"]) for r in lost_runs] == [("FAILED", "lost")] * 2


# ---------------------------------------------------------------- plugin discovery

@pytest.mark.slow
def test_an_editable_install_exposes_the_launcher_to_hydra(tmp_path):
    """`pip install -e .` (offline: this environment's setuptools and packages) into a fresh
    venv; both entry points, run from elsewhere, find `hydra/launcher=stacked`."""
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    [packages] = (venv / "lib").glob("python3*/site-packages")
    (packages / "shared.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in cli_env(tmp_path).items() if k != "PYTHONPATH"}
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "-e", str(ROOT)], check=True, cwd=tmp_path, env=env)
    for entry in ([python, "-m", "runner"], [str(venv / "bin" / "sweeplab")]):
        info = subprocess.run([*entry, "--info", "plugins"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert "StackedLauncher" in info.stdout, info.stdout + info.stderr
    process = start_cli([*STACKED, "model=mlp", "model.hidden=[16]", "optimizer.lr=0.01,0.001",
                         *TINY, STORE], tmp_path / "run", executable=[str(venv / "bin/sweeplab")],
                        env=env)
    code, out, err = outcome(process, tmp_path / "run")
    assert code == 0, err[-3000:]
    assert "jobs #0, #1 train stacked in one graph" in out
    _, runs = children(tmp_path / "run")
    assert {r.data.tags["sweeplab.stacked"] for r in runs.values()} == {"2"}
    assert not math.isnan(float(runs["lr=0.01"].data.metrics["test_acc"]))
