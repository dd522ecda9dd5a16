"""Cluster launchers for real: a 2-job sweep through the CLI on a local Ray cluster and on
submitit's local executor, tracked by a real `mlflow server` on 127.0.0.1.

Needs the extras (`pip install -e '.[ray,slurm]'`); `make test-cluster` installs and runs them.
Every process a test starts runs in its own session and is stopped by the fixture, which
then checks that nothing of that session is left.
"""
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

pytestmark = pytest.mark.cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)  # the venv's `ray` and `mlflow` scripts
SWEEP = ["model=mlp", "model.hidden=[16]", "optimizer.lr=0.001,0.01", "train.steps=20",
         "train.eval_every=10", "train.eval_size=50"]


def _missing(module: str, extra: str):
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None,
        reason=f"{module} is not installed: pip install -e '.[{extra}]' (make test-cluster does)")


needs_ray = _missing("ray", "ray")
needs_submitit = _missing("submitit", "slurm")


# ---------------------------------------------------------------- processes of our own

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def job_env(tmp_path) -> dict:
    """This tree's code, no Keras cache of the user's (the bundled digits), no Ray telemetry."""
    return dict(os.environ, PYTHONPATH=ROOT, KERAS_HOME=str(tmp_path / "keras_home"),
                RAY_USAGE_STATS_ENABLED="0")


def session_pids(session: int) -> list:
    """Live processes of one session: what a server started with start_new_session spawned."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getsid(int(name)) == session:
                    pids.append(int(name))
            except OSError:  # gone meanwhile
                pass
    return pids


def start_session(args, cwd, log_path, env) -> subprocess.Popen:
    with open(log_path, "w") as log:
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop_session(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM the leader (it shuts its children down), then SIGKILL whatever is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 10
    while session_pids(proc.pid) and time.monotonic() < deadline:
        for pid in session_pids(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    assert not session_pids(proc.pid), f"processes left behind: {session_pids(proc.pid)}"


def wait_until(ready, proc, log_path, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            with open(log_path) as log:
                pytest.fail(f"{what} did not start (exit {proc.poll()}):\n{log.read()[-3000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real tracking server on 127.0.0.1 with its own sqlite store; yields its URL."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = root / "server.log"
    proc = start_session([os.path.join(BIN, "mlflow"), "server",
                          "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                          "--artifacts-destination", str(root / "artifacts"),
                          "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                         root, log_path,
                         # No job runner: it adds ~8 worker processes this test never uses.
                         dict(job_env(root), MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    try:
        wait_until(healthy, proc, log_path, "mlflow server")
        yield url
    finally:
        stop_session(proc)


@pytest.fixture
def ray_cluster(tmp_path):
    """`ray start --head --block` on 127.0.0.1 in its own folder; yields (address, head dir).

    Every port is picked free, so it never meets another Ray cluster on this machine, and
    stopping the session stops this cluster only (`ray stop` would stop every cluster here).
    Workers inherit the head's working directory and environment, not the launcher's.
    """
    head_dir = tmp_path / "ray_head"
    head_dir.mkdir()
    port = free_port()
    ports = {name: free_port() for name in (
        "ray-client-server-port", "node-manager-port", "object-manager-port",
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port")}
    log_path = tmp_path / "ray_head.log"
    # Ray's unix sockets live under --temp-dir and must stay under 108 bytes: a short folder.
    ray_tmp = tempfile.TemporaryDirectory(prefix="sweeplab-ray-")
    proc = start_session([os.path.join(BIN, "ray"), "start", "--head", "--block",
                          "--node-ip-address=127.0.0.1", f"--port={port}",
                          f"--temp-dir={ray_tmp.name}", "--num-cpus=2",
                          "--include-dashboard=false", "--disable-usage-stats",
                          *(f"--{name}={value}" for name, value in ports.items())],
                         head_dir, log_path, job_env(tmp_path))

    def started() -> bool:
        with open(log_path) as log:
            return "block forever" in log.read()

    try:
        wait_until(started, proc, log_path, "ray head")
        yield f"127.0.0.1:{port}", head_dir
    finally:
        try:
            stop_session(proc)
        finally:
            ray_tmp.cleanup()


# ---------------------------------------------------------------- the sweep and its runs

def run_sweep(cwd, launcher_args, tracking_uri, tmp_path):
    """The 2-job sweep through the real CLI, from `cwd` (not the project root)."""
    cwd.mkdir(exist_ok=True)
    args = [sys.executable, "-m", "runner", "-m", *launcher_args, *SWEEP,
            "hydra.sweep.dir=sweep", f"mlflow.tracking_uri={tracking_uri}",
            f"mlflow.experiment_name={cwd.name}"]
    started = time.monotonic()
    done = subprocess.run(args, cwd=cwd, env=job_env(tmp_path), capture_output=True,
                          text=True, timeout=900)
    print(f"{launcher_args[0]}: sweep took {time.monotonic() - started:.1f} s")
    return done


def assert_one_parent_two_finished_children(tracking_uri, experiment_name):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, "the sweep created no experiment"
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("sweeplab.role") == "sweep"]
    children = [r for r in runs if r not in parents]
    assert len(parents) == 1, [r.data.tags for r in parents]
    parent_id = parents[0].info.run_id
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 2
    assert [c.data.tags.get("mlflow.parentRunId") for c in children] == [parent_id] * 2
    assert sorted(c.data.params["optimizer.lr"] for c in children) == ["0.001", "0.01"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags.get("outcome") not in (None, "running", "error")
        val_loss = client.get_metric_history(child.info.run_id, "val_loss")
        assert sorted(m.step for m in val_loss) == [0, 10, 20]


def assert_job_dirs_under(sweep_dir):
    for job in ("0", "1"):
        assert (sweep_dir / job / ".hydra" / "config.yaml").is_file(), \
            f"job {job}'s output is not under {sweep_dir}: {sorted(os.listdir(sweep_dir))}"


# ---------------------------------------------------------------- the launchers

@needs_ray
def test_ray_sweep_on_a_local_cluster_nests_both_jobs_under_one_parent(
        tmp_path, mlflow_server, ray_cluster):
    address, head_dir = ray_cluster
    launcher_dir = tmp_path / "ray_launcher"
    launcher_dir.mkdir()
    # The premise: a Ray task runs in the head's folder, not in the launcher's.
    probe = subprocess.run(
        [sys.executable, "-c", "import os, ray; ray.init(address=os.environ['ADDRESS']); "
         "print(ray.get(ray.remote(lambda: os.getcwd()).remote()))"],
        cwd=launcher_dir, env=dict(job_env(tmp_path), ADDRESS=address),
        capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.strip().splitlines()[-1] == str(head_dir)

    done = run_sweep(launcher_dir, ["hydra/launcher=ray_cluster",
                                    f"hydra.launcher.ray.init.address={address}"],
                     mlflow_server, tmp_path)
    assert done.returncode == 0, done.stderr[-5000:]
    assert_one_parent_two_finished_children(mlflow_server, launcher_dir.name)
    assert_job_dirs_under(launcher_dir / "sweep")
    assert not (head_dir / "sweep").exists()  # the relative sweep dir was made absolute


@needs_submitit
def test_submitit_local_sweep_nests_both_jobs_under_one_parent(tmp_path, mlflow_server):
    launcher_dir = tmp_path / "submitit_launcher"
    done = run_sweep(launcher_dir, ["hydra/launcher=submitit_local"], mlflow_server, tmp_path)
    assert done.returncode == 0, done.stderr[-5000:]
    assert_one_parent_two_finished_children(mlflow_server, launcher_dir.name)
    assert_job_dirs_under(launcher_dir / "sweep")


@needs_submitit
def test_slurm_example_config_composes_without_a_cluster(tmp_path):
    """conf/hydra/launcher/slurm.yaml: submitit's SLURM launcher with the example's values."""
    done = subprocess.run([sys.executable, "-m", "runner", "hydra/launcher=slurm",
                           "--cfg", "hydra", "--package", "hydra.launcher"],
                          cwd=tmp_path, env=job_env(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    import yaml

    launcher = yaml.safe_load(done.stdout)  # just the `hydra.launcher` node
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["partition"] and launcher["timeout_min"] > 0
    assert launcher["cpus_per_task"] >= 1 and launcher["mem_gb"] >= 1
    assert launcher["submitit_folder"].endswith("/.submitit/%j")
