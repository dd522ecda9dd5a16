"""`sweeplab server` for real: Debian's PostgreSQL, `mlflow server --app-name sweeplab` (MLflow's
basic-auth with sweeplab's metric path) on 127.0.0.1, real sweeps with passwords, and direct postgresql+psycopg:// stores. No mocks.

`make test-server` runs these (marker `server`; the load test is also `slow`). PostgreSQL
refuses root: as root, the server runs it as the OS user `postgres` (or `sweeplab-pg`), so the
test folders live under a world-enterable /tmp folder, not pytest's private tmp_path.
"""
import base64
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from conftest import Proc, chromium_missing, compose_cfg, start_chromium
from runner import bulk_metrics, procfs, server, store

pytestmark = pytest.mark.server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = "pa55-Word-for-the-test-only"  # the admin's
SMALL = ["model=mlp", "model.hidden=[16]", "train.eval_size=50"]
SHORT = [*SMALL, "train.steps=30", "train.eval_every=10"]


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(home, **extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_TRACKING_", "MLFLOW_AUTH_"))}
    return dict(env, PYTHONPATH=ROOT, KERAS_HOME=os.path.join(home, "keras_home"),
                PYTHONUNBUFFERED="1", **extra)


_BASE = []  # this test process's folder under /tmp, removed when the module ends


def public_folder(prefix):
    """A fresh folder PostgreSQL's OS user can enter (pytest's tmp_path is root's alone)."""
    if not _BASE:
        _BASE.append(tempfile.mkdtemp(prefix="sweeplab-server-tests-"))
        os.chmod(_BASE[0], 0o755)
    folder = tempfile.mkdtemp(prefix=prefix, dir=_BASE[0])
    os.chmod(folder, 0o755)
    return folder


@pytest.fixture(scope="module", autouse=True)
def remove_public_folders():
    yield
    if _BASE:
        shutil.rmtree(_BASE.pop(), ignore_errors=True)


def sweeplab(args, cwd, env, timeout=600):
    proc = Proc([sys.executable, "-m", "runner", *args], cwd, env)
    return proc.finish(timeout), proc.output


def processes_mentioning(text):
    """Pids of live processes whose command line holds `text`, and of their groups' members."""
    leaders, groups = [], set()
    for pid, fields in procfs.processes():
        if fields[procfs.STATE] != "Z" and text in _cmdline(pid):
            leaders.append(pid)
            groups.add(int(fields[procfs.PGRP]))
    return leaders, groups


def group_members(pgids):
    return [pid for pid, fields in procfs.processes()
            if int(fields[procfs.PGRP]) in pgids and fields[procfs.STATE] != "Z"]


class TeamServer:
    """`sweeplab server --dir DIR` on a free port of 127.0.0.1."""

    def __init__(self, folder, password=PASSWORD):
        self.folder, self.port, self.password = folder, free_port(), password
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        env = cli_env(self.folder, MLFLOW_AUTH_ADMIN_PASSWORD=self.password)
        self.proc = Proc([sys.executable, "-m", "runner", "server", "--dir", self.folder,
                          "--port", str(self.port), "--workers", "2"], self.folder, env)
        self.proc.wait_for(r"tracking URI http://127\.0\.0\.1:\d+")
        self.groups = processes_mentioning(self.folder)[1]
        return self

    def child_pid(self, marker):
        """The pid of the child whose command line holds `marker`."""
        pids = [p for p in processes_mentioning(marker)[0]
                if p != self.proc.proc.pid and "runner server" not in _cmdline(p)]
        assert pids, f"no process with {marker!r}"
        return min(pids)

    def stop(self, signum=signal.SIGTERM):
        if self.proc is None:
            return 0
        groups = processes_mentioning(self.folder)[1]
        self.proc.proc.send_signal(signum)
        code = self.proc.finish(120)
        self.proc = None
        deadline = time.monotonic() + 30
        while group_members(groups) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert group_members(groups) == [], "a process of the server is still alive"
        assert processes_mentioning(self.folder)[0] == []
        return code

    def admin(self, method, path, body=None):
        """A REST call as the admin; the parsed JSON answer."""
        request = urllib.request.Request(
            f"{self.uri}/api/2.0/mlflow/{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json",
                     "Authorization": "Basic " + base64.b64encode(
                         f"admin:{self.password}".encode()).decode()})
        with urllib.request.urlopen(request, timeout=30) as answer:
            text = answer.read()
        return json.loads(text) if text else {}


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def team():
    folder = public_folder("team-")
    srv = TeamServer(folder).start()
    yield srv
    srv.stop()
    shutil.rmtree(folder, ignore_errors=True)


def as_admin(folder, **extra):
    return cli_env(folder, MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=PASSWORD,
                   **extra)


@pytest.fixture(autouse=True)
def admin_client_env(monkeypatch):
    """This process reads the server as the admin (each CLI run gets its own environment)."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)


def runs_of(uri, experiment="sweeplab"):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], max_results=5000) if exp else []


# ---------------------------------------------------------------- one-line errors

def test_a_missing_or_short_admin_password_is_one_line(tmp_path):
    folder = public_folder("nopass-")
    for password, said in [(None, "MLFLOW_AUTH_ADMIN_PASSWORD is not set"),
                           ("short-pass", "needs at least 12")]:
        env = cli_env(folder, **({"MLFLOW_AUTH_ADMIN_PASSWORD": password} if password else {}))
        code, out = sweeplab(["server", "--dir", folder], folder, env, timeout=60)
        assert code == 2 and len(out.strip().splitlines()) == 1 and said in out, out
    assert not os.path.exists(os.path.join(folder, "postgres")), "nothing is created"


def test_missing_postgresql_binaries_say_how_to_install_them(tmp_path):
    folder = public_folder("nobin-")
    env = cli_env(folder, MLFLOW_AUTH_ADMIN_PASSWORD=PASSWORD,
                  SWEEPLAB_POSTGRES_BIN=str(tmp_path))
    code, out = sweeplab(["server", "--dir", folder], folder, env, timeout=60)
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert "apt-get install postgresql" in out


# ---------------------------------------------------------------- the team's server

def test_an_unauthenticated_request_is_refused(team):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(team.uri + "/api/2.0/mlflow/experiments/search?max_results=1",
                               timeout=10)
    assert refused.value.code == 401
    # The log-batch view is sweeplab's (runner/server_app.py); the login still comes first.
    metrics = [{"key": "a", "value": 1.0, "timestamp": 1, "step": 0}]
    request = urllib.request.Request(
        team.uri + "/api/2.0/mlflow/runs/log-batch", method="POST",
        data=json.dumps({"run_id": "0" * 32, "metrics": metrics}).encode(),
        headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    assert team.admin("GET", "users/current")["user"]["username"] == "admin"
    # Nothing listens on TCP for PostgreSQL; no file under DIR holds the admin password.
    for folder, _, names in os.walk(team.folder):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    assert PASSWORD.encode() not in f.read(), path


def test_wrong_or_missing_credentials_are_one_line_before_tensorflow(team):
    home = team.folder
    cases = [(cli_env(home), "needs a login; set MLFLOW_TRACKING_USERNAME and "
                             "MLFLOW_TRACKING_PASSWORD"),
             (cli_env(home, MLFLOW_TRACKING_USERNAME="admin",
                      MLFLOW_TRACKING_PASSWORD="not-the-password"),
              "refused user 'admin': wrong MLFLOW_TRACKING_USERNAME or MLFLOW_TRACKING_PASSWORD")]
    for env, said in cases:
        for args in ([*SHORT], ["-m", *SHORT, "optimizer.lr=0.1,0.01"]):
            started = time.monotonic()
            code, out = sweeplab([*args, f"mlflow.tracking_uri={team.uri}",
                                  f"hydra.run.dir={home}/x", f"hydra.sweep.dir={home}/xs"],
                                 home, env, timeout=120)
            lines = [line for line in out.splitlines() if line.strip()]
            assert code == 2 and len(lines) == 1 and said in lines[0], out
            assert "not-the-password" not in out
            assert time.monotonic() - started < 30  # TensorFlow never loaded


def test_two_sweeps_with_a_password_land_in_the_server(team):
    home = public_folder("sweeps-")
    for lrs in ("0.1,0.01", "0.05,0.005"):
        code, out = sweeplab(["-m", *SHORT, f"optimizer.lr={lrs}",
                              f"mlflow.tracking_uri={team.uri}"], home, as_admin(home))
        assert code == 0, out[-3000:]
    client, runs = runs_of(team.uri)
    children = [r for r in runs if r.data.tags.get("sweeplab.role") != "sweep"]
    assert len(children) >= 4 and all(r.info.status == "FINISHED" for r in runs)
    for run in children:
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 4  # steps 0-30
        assert {"config.yaml", "overrides.txt"} <= {a.path for a in
                                                     client.list_artifacts(run.info.run_id)}


def test_a_user_without_permission_gets_one_line(team):
    home = public_folder("perm-")
    team.admin("POST", "users/create", {"username": "guest", "password": "guest-password-1"})
    team.admin("POST", "experiments/create", {"name": "admins-only"})
    code, out = sweeplab(["-m", *SHORT, "optimizer.lr=0.1,0.01", "mlflow.experiment_name="
                          "admins-only", f"mlflow.tracking_uri={team.uri}"], home,
                         cli_env(home, MLFLOW_TRACKING_USERNAME="guest",
                                 MLFLOW_TRACKING_PASSWORD="guest-password-1"), timeout=120)
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, out
    assert "user 'guest' may not write to experiment 'admins-only'" in lines[0]


def test_no_password_reaches_the_store_the_logs_the_terminal_or_the_report(team):
    """The password inside the URI itself: every param, tag, artifact, log and printed line
    of a real sweep (and its report) is searched for it."""
    home = public_folder("secret-")
    uri = f"http://admin:{PASSWORD}@127.0.0.1:{team.port}"
    env = cli_env(home)
    code, out = sweeplab(["-m", *SHORT, "optimizer.lr=0.1,0.01", "mlflow.experiment_name=secret",
                          f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={home}/sweep"],
                         home, env)
    assert code == 0, out[-3000:]
    code, report = sweeplab(["report", "--tracking-uri", uri], home, env, timeout=300)
    assert code == 0, report[-3000:]
    for text, where in [(out, "the sweep's terminal"), (report, "the report")]:
        assert PASSWORD not in text, where
    assert "admin:***@" in out
    client, runs = runs_of(team.uri, "secret")
    assert len(runs) == 3
    for run in runs:
        for key, value in {**run.data.params, **run.data.tags}.items():
            assert PASSWORD not in value, (run.info.run_name, key)
        local = client.download_artifacts(run.info.run_id, "", tempfile.mkdtemp(dir=home))
        for folder, _, names in os.walk(local):
            for name in names:
                with open(os.path.join(folder, name), "rb") as f:
                    assert PASSWORD.encode() not in f.read(), (run.info.run_name, name)
    assert runs[0].data.params.get("mlflow.tracking_uri", "").count("***") or \
        any("***" in r.data.params.get("mlflow.tracking_uri", "") for r in runs)
    # Logs and files sweeplab writes in the sweep folder (Hydra's own .hydra/ copies of the
    # command line are Hydra's: docs/team.md says to keep passwords in the environment).
    for folder, dirs, names in os.walk(os.path.join(home, "sweep")):
        dirs[:] = [d for d in dirs if d != ".hydra"]
        for name in names:
            if name == "multirun.yaml":
                continue
            with open(os.path.join(folder, name), "rb") as f:
                assert PASSWORD.encode() not in f.read(), os.path.join(folder, name)


def test_a_login_refused_when_the_run_is_created_is_one_line(team, monkeypatch):
    """A 401 at create time is asked again (basic-auth also answers 401 mid-restart): refused
    again, it is the one line the store check gives."""
    from runner.tracking import JobContext, TrackedRun

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    cfg = compose_cfg(*SHORT, f"mlflow.tracking_uri={team.uri}")
    run = TrackedRun(cfg, JobContext(output_dir=public_folder("create-")), {})
    with pytest.raises(store.AccessDenied, match="refused user 'admin': wrong "
                                                 "MLFLOW_TRACKING_USERNAME or"):
        run.__enter__()


def test_a_login_refused_mid_run_keeps_the_writes_for_sync(team, monkeypatch, capsys):
    """basic-auth answers 401 to a run that is already writing: when its user lookup fails
    while its database restarts, or after a password change mid-sweep (what this test does:
    the same answer, on demand). The outbox retries, then saves the writes in its journal:
    none is dropped, and `sweeplab sync` with the right password uploads every value."""
    from runner import outbox

    folder = public_folder("relogin-")
    client = store.open_client(team.uri)  # MLflow's variables: the admin (see admin_client_env)
    run_id = client.create_run(store.ensure_experiment(client, "relogin", None)).info.run_id
    monkeypatch.setenv("SWEEPLAB_MLFLOW_GIVE_UP_SECONDS", "3")
    box = outbox.Outbox(client, run_id, folder, {"tracking_uri": team.uri, "run_name": "relogin"})

    def batch(steps):
        return {"op": "log_batch", "metrics": [["loss", 1.0 / s, 1000, s] for s in steps]}

    box.put(batch(range(1, 101)))
    wait_until(lambda: len(client.get_metric_history(run_id, "loss")) == 100, 60,
               "the first batch in the store")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    box.put(batch(range(101, 201)))
    box.put({"op": "set_terminated", "status": "FINISHED", "end_time": 2000})
    journal = box.close()
    assert journal is not None  # before: both refused as if bad requests, and dropped
    assert [op["op"] for op in outbox.read_journal(journal)[1]] == ["log_batch", "set_terminated"]
    assert (box.refused, box.values_dropped, box.dropped) == (0, 0, 0)
    said = capsys.readouterr().err
    assert "error code 401" in said and "upload it later with: sweeplab sync" in said
    assert "not-the-password" not in said and PASSWORD not in open(journal).read()

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    code, out = sweeplab(["sync", folder], folder, as_admin(folder), timeout=120)
    assert code == 0, out
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == \
        list(range(1, 201))
    assert client.get_run(run_id).info.status == "FINISHED"


# ---------------------------------------------------------------- the UI, in a browser

@pytest.fixture
def chromium(tmp_path, monkeypatch):
    """Headless Debian Chromium (as `make test-ui` drives it), fresh profile, no login yet."""
    if chromium_missing():
        pytest.skip(f"{chromium_missing()} (make test-server installs it)")
    monkeypatch.setenv("SE_OFFLINE", "true")  # see start_chromium
    driver = start_chromium(tmp_path / "chromium")
    yield driver
    driver.quit()


def test_a_user_logs_in_to_the_ui_and_sees_the_sweep(team, chromium):
    """The issue's "done when": a sweep run with a password, then the MLflow UI in a browser.
    Without a login the API and the page answer 401. Logged in (the browser answers
    basic-auth's challenge with the user and password, as its login dialog does, and keeps
    them for the page's own API calls), the runs table shows the sweep and its jobs."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    home = public_folder("ui-")
    code, out = sweeplab(["-m", *SHORT, "optimizer.lr=0.1,0.01", "mlflow.experiment_name=ui",
                          f"mlflow.tracking_uri={team.uri}"], home, as_admin(home))
    assert code == 0, out[-3000:]
    _, runs = runs_of(team.uri, "ui")
    parent = [r.info.run_id for r in runs if r.data.tags.get("sweeplab.role") == "sweep"]
    children = {r.info.run_id for r in runs if r.info.run_id not in parent}
    assert len(parent) == 1 and len(children) == 2
    table = (f"{team.uri}/#/experiments/{runs[0].info.experiment_id}/runs"
             f"?workflowType=machine_learning")  # MLflow 3 opens the GenAI overview otherwise

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{team.uri}/api/2.0/mlflow/runs/get?run_id={parent[0]}",
                               timeout=10)
    assert refused.value.code == 401
    chromium.get(table)  # headless, the login dialog is an empty page: its status tells
    assert chromium.execute_script(
        "return performance.getEntriesByType('navigation').map(e => e.responseStatus)") == [401]

    rows = ".ag-pinned-left-cols-container [role=row]"  # row-id = run id (see test_ui.py)

    def shown(driver):
        return {r.get_attribute("row-id") for r in driver.find_elements(By.CSS_SELECTOR, rows)}

    def wait(condition, what):
        try:
            return WebDriverWait(chromium, 90, poll_frequency=0.5).until(condition)
        except TimeoutException:  # say what never showed; the page's URL may hold the password
            pytest.fail(f"the MLflow UI never showed {what} in 90 s")

    # Logging in. The page must then be opened at its own address: Chromium refuses the
    # page's fetch() calls while its address holds a user and password.
    chromium.get(f"http://admin:{PASSWORD}@127.0.0.1:{team.port}/")
    chromium.get(table)
    wait(lambda d: parent[0] in shown(d), "the sweep's row after logging in")
    chromium.find_element(By.CSS_SELECTOR, f'{rows}[row-id="{parent[0]}"] '
                                           f'[col-id="attributes.`Run Name`"] button').click()
    wait(lambda d: shown(d) == {parent[0], *children}, "the sweep's 2 jobs under it")
    assert PASSWORD not in chromium.current_url


# ---------------------------------------------------------------- direct PostgreSQL

@pytest.fixture(scope="module")
def pg_database(team):
    """A fresh database in the team server's PostgreSQL cluster, as a direct store URI."""
    import psycopg
    user = server.role_name(server.pg_user())
    with psycopg.connect(host=server.socket_dir(team.folder), user=user, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute("CREATE DATABASE direct")
    return server.store_uri(team.folder, "direct", user)


def test_two_first_users_of_an_empty_postgresql_database_both_succeed(pg_database):
    code = ("import sys; from runner import store; c = store.open_client(sys.argv[1]); "
            "c.search_experiments(); print('ok')")
    procs = [subprocess.Popen([sys.executable, "-c", code, pg_database], cwd=ROOT,
                              env=cli_env(ROOT), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert all(o.strip().endswith("ok") for o in outs), outs


def test_bulk_metrics_fast_path_on_postgresql(pg_database):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import test_tracking_bulk as on_sqlite

    client = store.open_client(pg_database)
    on_sqlite.test_bulk_rows_read_back_as_log_batchs(client)  # True: the fast path wrote them


def test_metric_values_through_the_server_read_back_as_log_batchs(team, tmp_path):
    """Through the server's log-batch view and store (runner/server_app.py), the JSON of
    sweeplab's outbox and of MLflow's own client both store what MLflow's log_batch stores."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from mlflow.entities import Metric
    from test_tracking_bulk import BATCHES, history

    workers = processes_mentioning("runner.server_app:create_app")[0]
    assert workers, "the server's workers do not run sweeplab's app"
    served = store.open_client(team.uri)
    exp = store.ensure_experiment(served, "served-metrics", None)
    ours, mlflows = (served.create_run(exp).info.run_id for _ in range(2))
    local = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/reference.db")
    reference = local.create_run("0").info.run_id
    for batch in BATCHES:
        bulk_metrics.log_metrics(served, ours, batch)
        served.log_batch(mlflows, metrics=[Metric(*m) for m in batch])
        local.log_batch(reference, metrics=[Metric(*m) for m in batch])
    expected = local.get_run(reference).data.metrics
    for run in (ours, mlflows):
        got = served.get_run(run).data.metrics
        assert set(got) == set(expected)
        for key in expected:
            assert history(served, run, key) == history(local, reference, key), key
            assert got[key] == expected[key] or math.isnan(got[key]) and math.isnan(expected[key])
    with open(os.path.join(team.folder, "mlflow-server.log"), errors="replace") as f:
        assert "bulk metric insert failed" not in f.read()  # the fast path, not its fallback


def test_a_batch_the_server_refuses_gets_mlflows_error(team, tmp_path):
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    served = store.open_client(team.uri)
    run = served.create_run(store.ensure_experiment(served, "served-metrics", None)).info.run_id
    local = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/reference.db")
    reference = local.create_run("0").info.run_id
    bad = [["fine", 1.0, 1000, 0], ["../escape", 1.0, 1000, 0]]
    with pytest.raises(MlflowException) as theirs:
        local.log_batch(reference, metrics=[Metric(*m) for m in bad])
    with pytest.raises(MlflowException) as mine:
        bulk_metrics.log_metrics(served, run, bad)
    assert mine.value.error_code == theirs.value.error_code
    assert mine.value.message.endswith(theirs.value.message)  # a REST one starts with the code
    assert served.get_run(run).data.metrics == {}
    served.delete_run(run)
    local.delete_run(reference)
    with pytest.raises(MlflowException) as theirs:
        local.log_batch(reference, metrics=[Metric("a", 1.0, 1000, 0)])
    with pytest.raises(MlflowException) as mine:
        bulk_metrics.log_metrics(served, run, [["a", 1.0, 1000, 0]])
    assert mine.value.error_code == theirs.value.error_code


def test_a_sweep_into_a_direct_postgresql_store_with_its_password_redacted(pg_database):
    home = public_folder("direct-")
    # trust on the private socket: the password is not checked, only kept out of every record
    uri = pg_database.replace("@/", ":db-secret-password@/")
    # quoted: `?host=/path` holds an `=`, which Hydra's override grammar takes for its own
    code, out = sweeplab(["-m", *SHORT, "optimizer.lr=0.1,0.01", f"mlflow.tracking_uri='{uri}'",
                          f"mlflow.artifact_location={home}/artifacts"], home, cli_env(home))
    assert code == 0, out[-3000:]
    assert "db-secret-password" not in out
    client = MlflowClient(tracking_uri=pg_database)
    exp = client.get_experiment_by_name("sweeplab")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        assert "db-secret-password" not in json.dumps([run.data.params, run.data.tags])


def test_a_missing_postgresql_driver_is_one_line(tmp_path):
    home = str(tmp_path)
    code, out = sweeplab([*SHORT, "mlflow.tracking_uri=postgresql+pg8000://u@127.0.0.1/x"],
                         home, cli_env(home), timeout=120)
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "pip install 'sweeplab[postgres]'" in lines[0], out


# ---------------------------------------------------------------- restart

def test_a_restart_on_the_same_folder_finds_every_run_and_leaves_no_process(team):
    before = {r.info.run_id: r.info.status for r in runs_of(team.uri)[1]}
    assert before
    assert team.stop(signal.SIGINT) == 0  # Ctrl-C
    team.start()
    after = {r.info.run_id: r.info.status for r in runs_of(team.uri)[1]}
    assert after == before


# ---------------------------------------------------------------- under load, with faults

LOAD_STEPS = 800  # with train.log_every=1: ~4 values a step, ~3,300 a job


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(3)  # each look is a search on the loaded server
    raise AssertionError(f"no {what} within {timeout} s")


@pytest.mark.slow
def test_four_sweeps_at_once_survive_a_killed_mlflow_and_a_postgresql_restart():
    """3 stacked sweeps + 1 joblib sweep (60 jobs, >= 200,000 metric values) into one
    `sweeplab server`; mid-sweep its mlflow server is SIGKILLed, then PostgreSQL restarted
    (the server restarts both). After `sweeplab sync`: every run FINISHED, each with its full
    metric history, nothing lost."""
    folder = public_folder("load-")
    team = TeamServer(folder).start()
    try:
        home = public_folder("load-sweeps-")
        env = as_admin(home, SWEEPLAB_HEARTBEAT_SECONDS="5")
        common = [*SMALL, f"train.steps={LOAD_STEPS}", "train.eval_every=100",
                  "train.log_every=1", f"mlflow.tracking_uri={team.uri}"]
        sweeps = {}
        for i in range(3):
            sweeps[f"stacked{i}"] = ["-m", *common, f"optimizer.lr=0.{i + 1},0.0{i + 1},"
                                     f"0.00{i + 1},0.05", "seed=range(4)"]
        sweeps["joblib"] = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *common,
                            "optimizer.lr=0.1,0.01,0.001,0.02", "seed=range(3)"]
        started = time.monotonic()
        procs = {name: Proc([sys.executable, "-m", "runner", *args,
                             f"hydra.sweep.dir={home}/{name}"], home, env)
                 for name, args in sweeps.items()}

        def run_count():
            try:
                client = MlflowClient(tracking_uri=team.uri)
                exp = client.get_experiment_by_name("sweeplab")
                return len(client.search_runs([exp.experiment_id], max_results=20)) if exp else 0
            except Exception:
                return 0

        wait_until(lambda: run_count() >= 20, 300, "20 runs in the store")
        # The mlflow server dies without a word; `sweeplab server` starts it again.
        os.kill(team.child_pid(f"--artifacts-destination {folder}/artifacts"), signal.SIGKILL)
        killed_at = time.monotonic() - started
        team.proc.wait_for(r"mlflow is back", 240)
        time.sleep(5)
        # PostgreSQL restarts (its fast shutdown; `sweeplab server` starts it again).
        os.kill(team.child_pid(f"-D {folder}/postgres"), signal.SIGINT)
        restarted_at = time.monotonic() - started
        team.proc.wait_for(r"postgres is back", 240)
        still_running = [n for n, p in procs.items() if p.proc.poll() is None]
        codes = {name: p.finish(900) for name, p in procs.items()}
        wall = time.monotonic() - started
        for name, p in procs.items():
            assert codes[name] in (0, 1), (name, p.output[-3000:])
            for bad in ("database is locked", "deadlock detected", "Traceback"):
                assert bad not in p.output, (name, bad, p.output[-3000:])
        code, out = sweeplab(["sync", *[f"{home}/{n}" for n in sweeps]], home, env, 600)
        assert code == 0, out[-3000:]

        client, runs = runs_of(team.uri)
        children = [r for r in runs if r.data.tags.get("sweeplab.role") != "sweep"]
        parents = [r for r in runs if r.data.tags.get("sweeplab.role") == "sweep"]
        assert len(parents) == 4 and len(children) == 60, (len(parents), len(children))
        assert all(r.info.status == "FINISHED" for r in runs), \
            [(r.info.run_name, r.info.status) for r in runs if r.info.status != "FINISHED"]
        counts = {r.info.run_id: {k: len(client.get_metric_history(r.info.run_id, k))
                                  for k in r.data.metrics} for r in children}
        full = {}
        for per_key in counts.values():
            for key, n in per_key.items():
                full[key] = max(full.get(key, 0), n)
        lost = sum(full[k] - n for per_key in counts.values() for k, n in per_key.items())
        lost += sum(n for k, n in full.items() for per_key in counts.values()
                    if k not in per_key)
        values = sum(n for per_key in counts.values() for n in per_key.values())
        per_step = [k for k, n in full.items() if n == LOAD_STEPS]
        print(f"\nload: {len(children)} jobs in 4 sweeps, {values} metric values, lost "
              f"{lost}; {wall:.0f} s; mlflow SIGKILLed at {killed_at:.0f} s, PostgreSQL "
              f"restarted at {restarted_at:.0f} s with {len(still_running)} sweeps running; "
              f"sync: {out.count('synced')} journals")
        short = [(r.info.run_name, r.data.tags.get("outcome"), k, counts[r.info.run_id].get(k, 0),
                  n) for r in children for k, n in full.items()
                 if counts[r.info.run_id].get(k, 0) != n]
        assert per_step, full
        said = [line for p in procs.values() for line in p.lines
                if "refused" in line or "sweeplab: error" in line or "WARNING" in line]
        assert lost == 0, (short, said[:20])
        # A dropped value is always said (runner/outbox.py): nothing here may say so.
        dropped = [line for line in [*said, *out.splitlines()]
                   if "MLflow refused" in line or "they are lost" in line]
        assert dropped == [], dropped[:20]
        assert values >= 200_000
        assert still_running, "the sweeps ended before the faults: raise LOAD_STEPS"
    finally:
        team.stop()
