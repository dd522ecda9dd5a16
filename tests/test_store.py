"""runner/store.py: the one rule for where the store is and the one check, for jobs, sweeps,
`sweeplab report` and `sweeplab resume`; a full disk recognised as such. Real folders, a real
sqlite store, a port nobody listens on."""
import errno
import logging
import os
import socket
import time

import pytest
from omegaconf import OmegaConf

from runner import store
from runner.config import ConfigError


@pytest.fixture(autouse=True)
def no_env_store(monkeypatch):
    monkeypatch.delenv(store.ENV_URI, raising=False)


def mlflow_cfg(uri=None, artifacts=None):
    return OmegaConf.create({"tracking_uri": uri, "experiment_name": "sweeplab",
                             "artifact_location": artifacts})


# ---------------------------------------------------------------- where the store is

def test_the_option_wins_then_the_variable_then_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert store.resolve(None) == (f"sqlite:///{tmp_path}/outputs/mlflow.db",
                                   "mlflow.tracking_uri")
    monkeypatch.setenv(store.ENV_URI, "sqlite:///env.db")
    assert store.resolve(None) == (f"sqlite:///{tmp_path}/env.db", "MLFLOW_TRACKING_URI")
    assert store.resolve("sqlite:///given.db", "--tracking-uri") == (
        f"sqlite:///{tmp_path}/given.db", "--tracking-uri")


def test_jobs_and_the_report_resolve_alike(tmp_path, monkeypatch):
    """A job's config and `sweeplab report` name the same store by the same rule."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(store.ENV_URI, "http://127.0.0.1:5000")
    assert store.tracking_uri(mlflow_cfg()) == store.resolve(None, "--tracking-uri")[0]
    assert store.tracking_uri(mlflow_cfg("runs")) == f"{tmp_path}/runs"


@pytest.mark.parametrize("given, expected", [
    ("sqlite:///rel/m.db", "sqlite:///{cwd}/rel/m.db"),
    ("sqlite:////abs/m.db", "sqlite:////abs/m.db"),
    ("folder", "{cwd}/folder"),
    ("file:///abs/folder", "file:///abs/folder"),
    ("http://host:5000", "http://host:5000"),
    ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
])
def test_relative_local_stores_are_made_absolute(tmp_path, monkeypatch, given, expected):
    monkeypatch.chdir(tmp_path)
    assert store.absolute(given) == expected.format(cwd=tmp_path)


@pytest.mark.parametrize("uri, path", [
    ("sqlite:////a/m.db", "/a/m.db"), ("file:///a/b%20c", "/a/b c"), ("/a/folder", "/a/folder"),
    ("http://h:1", None), ("postgresql://h/db", None),
])
def test_local_path(uri, path):
    assert store.local_path(uri) == path


# ---------------------------------------------------------------- the check

def test_a_store_to_write_is_created_where_it_can_be(tmp_path):
    uri = f"sqlite:///{tmp_path}/new/deeper/mlflow.db"
    store.check(uri, write=True)
    assert (tmp_path / "new" / "deeper").is_dir()


def test_a_store_that_cannot_be_created_names_the_option(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match=r"^mlflow.tracking_uri: cannot create the folder "
                                          r".*a_file/sub .*e\.g\. mlflow\.tracking_uri=sqlite:"):
        store.check_store(mlflow_cfg(f"sqlite:///{tmp_path}/a_file/sub/mlflow.db"))


def test_the_variable_is_named_when_it_chose_the_store(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv(store.ENV_URI, f"{tmp_path}/a_file/sub")
    with pytest.raises(ConfigError, match=r"^MLFLOW_TRACKING_URI: cannot create the folder"):
        store.check_store(mlflow_cfg())


def test_a_store_to_read_must_exist_and_is_never_created(tmp_path):
    uri = f"sqlite:///{tmp_path}/none/mlflow.db"
    with pytest.raises(ConfigError, match=r"^--tracking-uri: no MLflow store at .*none/mlflow"
                                          r"\.db; run a sweep first .*pass --tracking-uri URI"):
        store.check(uri, "--tracking-uri", write=False)
    assert not (tmp_path / "none").exists()


def test_a_server_that_does_not_answer_is_one_line_in_seconds():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    for write in (True, False):
        with pytest.raises(ConfigError, match=r"^mlflow.tracking_uri: no MLflow server answers "
                                              rf"at http://127.0.0.1:{port} "):
            store.check(f"http://127.0.0.1:{port}", write=write)
    assert time.monotonic() - started < 2 * store.CHECK_SECONDS + 2


# ---------------------------------------------------------------- a full disk

def test_a_full_disk_is_recognised_in_an_error_chain(tmp_path):
    from mlflow.exceptions import MlflowException

    assert store.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert store.is_disk_full(OSError(errno.EFBIG, "File too large"))
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as err:
            raise MlflowException("writing failed") from err
    except MlflowException as wrapped:
        assert store.is_disk_full(wrapped)
    assert store.is_disk_full(MlflowException("(sqlite3.OperationalError) database or disk is "
                                              "full"))
    assert not store.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not store.is_disk_full(MlflowException("database is locked"))


def test_open_client_quiets_mlflows_sql_tracebacks(tmp_path):
    """MLflow logs each SQL error with its traceback before raising it; sweeplab reports it."""
    import logging

    store.open_client(f"sqlite:///{tmp_path}/mlflow.db")
    assert logging.getLogger("mlflow.store.db.utils").getEffectiveLevel() == logging.CRITICAL
    assert os.path.isfile(tmp_path / "mlflow.db")


# ---------------------------------------------------------------- secrets

@pytest.mark.parametrize("text, redacted, without", [
    ("http://alice:s3cret@127.0.0.1:5000", "http://alice:***@127.0.0.1:5000",
     "http://alice@127.0.0.1:5000"),
    ("postgresql+psycopg://bob:p%40ss@db:5432/mlflow?sslmode=require",
     "postgresql+psycopg://bob:***@db:5432/mlflow?sslmode=require",
     "postgresql+psycopg://bob@db:5432/mlflow?sslmode=require"),
    ("postgresql+psycopg://bob@/x?password=zz&host=/s",
     "postgresql+psycopg://bob@/x?password=***&host=/s", "postgresql+psycopg://bob@/x?host=/s"),
    # Hydra's launchers print an override with ':' escaped
    (r"#0 : lr=0.1 mlflow.tracking_uri=http\://alice\:s3cret@127.0.0.1\:5000",
     r"#0 : lr=0.1 mlflow.tracking_uri=http\://alice\:***@127.0.0.1\:5000",
     r"#0 : lr=0.1 mlflow.tracking_uri=http\://alice@127.0.0.1\:5000"),
    ("sqlite:////data/a@b/mlflow.db", "sqlite:////data/a@b/mlflow.db",
     "sqlite:////data/a@b/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000", "http://127.0.0.1:5000"),
])
def test_redact_hides_every_password_in_a_uri(text, redacted, without):
    assert store.redact(text) == redacted
    assert store.without_password(text) == without


def test_every_log_record_is_redacted(caplog):
    logging.getLogger("sweeplab.test").warning("store %s", "http://alice:s3cret@127.0.0.1:5000")
    assert "s3cret" not in caplog.text and "alice:***@" in caplog.text


def _answer(code, message):
    """An error as MLflow's client raises it for the server's JSON answer."""
    from mlflow.exceptions import RestException
    return RestException({"error_code": code, "message": message})


@pytest.mark.parametrize("code, message, refused, denied", [
    ("INVALID_PARAMETER_VALUE", "Changing param values is not allowed", True, False),
    ("BAD_REQUEST", "Invalid JSON payload", True, False),
    # MLflow's server wraps database errors other than OperationalError as BAD_REQUEST:
    ("BAD_REQUEST", "(psycopg.errors.UniqueViolation) duplicate key value violates unique "
                    "constraint \"latest_metric_pk\"", False, False),
    ("BAD_REQUEST", "Can't reconnect until invalid transaction is rolled back. (Background on "
                    "this error at: https://sqlalche.me/e/21/8s2b)", False, False),
    ("UNAUTHENTICATED", "You are not authenticated.", False, True),
    ("PERMISSION_DENIED", "Permission denied", False, True),
    ("TEMPORARILY_UNAVAILABLE", "(psycopg.OperationalError) the database system is shutting "
                                "down", False, False),
    ("INTERNAL_ERROR", "Error in _before_request", False, False),
])
def test_refused_denied_and_transient_answers(code, message, refused, denied):
    err = _answer(code, message)
    assert store.is_refused(err) is refused and store.is_denied(err) is denied
    assert store.is_transient(err) is (not refused and not denied)


def test_no_answer_at_all_is_transient():
    assert store.is_transient(ConnectionRefusedError(111, "Connection refused"))
    assert not store.is_refused(TimeoutError("read timed out"))
