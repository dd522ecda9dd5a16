"""The MLflow tracking store: where it is, a quick check before work starts, safe set-up,
and closing runs whose process died.

- `check_store` answers in seconds, before TensorFlow loads: a server that does not answer, a
  read-only folder or database file is one `ConfigError` line naming `mlflow.tracking_uri`.
- `open_client` creates or migrates a fresh sqlite store under a file lock beside the database,
  so two sweeps (or runs) started together never race through MLflow's schema migration.
- `mark_lost_runs`: a run refreshes its heartbeat tag while its process lives; a RUNNING run
  whose heartbeat is older than `lost_after_seconds()` (default 10 min) died without closing
  (SIGKILL, OOM killer, lost machine) and is marked FAILED with `outcome=lost`.
"""
import contextlib
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from typing import Iterable, List, Optional

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from runner.config import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no flock; MLflow itself skips its lock there too
    fcntl = None

log = logging.getLogger(__name__)

# MLflow's HTTP client retries 7 times with backoff (minutes) and waits 120 s per request; our
# runs send through their own retrying background thread, so keep each request short. Set only
# if the user did not.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
for _name, _value in MLFLOW_HTTP_DEFAULTS.items():
    os.environ.setdefault(_name, _value)

HEARTBEAT_TAG = "sweeplab.heartbeat"  # unix seconds, refreshed while the run's process lives
ERROR_TAG = "sweeplab.error"  # one line: why a run FAILED
CHECK_SECONDS = 3.0  # how long the server check waits for an answer

# MLflow error codes that retrying cannot fix (a bad request, not an unreachable store).
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS",
                    "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "BAD_REQUEST",
                    "PERMISSION_DENIED", "UNAUTHENTICATED", "MALFORMED_REQUEST"}


def seconds_setting(name: str, default: float) -> float:
    """A timing knob from the environment (tests shorten them), else its default."""
    return float(os.environ.get(name, default))


def heartbeat_seconds() -> float:
    return seconds_setting("SWEEPLAB_HEARTBEAT_SECONDS", 30.0)


def lost_after_seconds() -> float:
    return seconds_setting("SWEEPLAB_LOST_AFTER_SECONDS", 600.0)


# ---------------------------------------------------------------- where the store is

def tracking_uri(cfg) -> str:
    """`cfg.tracking_uri` made absolute; default sqlite:///<cwd>/outputs/mlflow.db."""
    uri = cfg.tracking_uri or "sqlite:///outputs/mlflow.db"
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    if "://" not in uri:  # a plain folder: MLflow's file store
        return os.path.abspath(uri)
    return uri


def sqlite_path(uri: str) -> Optional[str]:
    return uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else None


def artifact_location(cfg, uri: str) -> Optional[str]:
    """Where a new experiment keeps artifacts: beside the sqlite file unless configured."""
    if cfg.artifact_location:
        return os.path.abspath(cfg.artifact_location)
    if sqlite_path(uri):
        return os.path.join(os.path.dirname(sqlite_path(uri)), "mlartifacts")
    return None  # a server or file store decides


def experiment_id(client: MlflowClient, cfg, uri: str) -> str:
    """The id of experiment `cfg.experiment_name`, created if need be."""
    return ensure_experiment(client, cfg.experiment_name, artifact_location(cfg, uri))


def ensure_experiment(client: MlflowClient, name: str, artifacts: Optional[str]) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifacts)
    except MlflowException:  # created by a concurrent job in the meantime
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


# ---------------------------------------------------------------- the check before work

def _fix(uri: str) -> str:
    return (f"fix it or point mlflow.tracking_uri elsewhere, e.g. "
            f"mlflow.tracking_uri=sqlite:///{os.path.abspath('outputs/mlflow.db')}")


def _writable_folder(folder: str, uri: str) -> None:
    """The folder exists (created if need be) and this user may create files in it."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"mlflow.tracking_uri: cannot create the folder {folder} "
                          f"({err.strerror}); {_fix(uri)}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"mlflow.tracking_uri: the folder {folder} is read-only; "
                          f"{_fix(uri)}")


def check_server(uri: str, timeout: float = CHECK_SECONDS) -> None:
    """One quick request to the server's /health: answers at all, and not with a 5xx."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError as err:
        if err.code < 500:  # answers (a proxy may not route /health): reachable
            return
        reason = f"HTTP {err.code} {err.reason}"
    except (urllib.error.URLError, OSError) as err:
        reason = str(getattr(err, "reason", err)) or type(err).__name__
    raise ConfigError(f"mlflow.tracking_uri: no MLflow server answers at {uri} ({reason}); "
                      f"start it (mlflow server --host 127.0.0.1 --port 5000) or use a local "
                      f"store, e.g. mlflow.tracking_uri=sqlite:///outputs/mlflow.db")


def check_store(cfg) -> None:
    """Raise ConfigError if the store at `cfg.tracking_uri` cannot be used; takes seconds."""
    uri = tracking_uri(cfg)
    path = sqlite_path(uri)
    if path:
        _writable_folder(os.path.dirname(path), uri)
        if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(f"mlflow.tracking_uri: the database file {path} is read-only; "
                              f"{_fix(uri)}")
    elif uri.startswith(("http://", "https://")):
        check_server(uri)
    elif "://" not in uri or uri.startswith("file://"):
        _writable_folder(uri[len("file://"):] if uri.startswith("file://") else uri, uri)
    if cfg.artifact_location:
        _writable_folder(os.path.abspath(cfg.artifact_location), uri)


# ---------------------------------------------------------------- set-up under a lock

@contextlib.contextmanager
def store_lock(db_path: str):
    """An exclusive lock on `<db>.lock`: one process at a time creates or migrates the db."""
    if fcntl is None:
        yield
        return
    os.makedirs(os.path.dirname(db_path), exist_ok=True)
    with open(db_path + ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_client(uri: str) -> MlflowClient:
    """An MlflowClient whose store is set up; a fresh sqlite db is created under the lock.

    MLflow builds (and on an empty db, creates and migrates) the store object when a client
    is made and caches it per process; making it under the lock means no second process can
    see a half-migrated schema.
    """
    path = sqlite_path(uri)
    if not path:
        return MlflowClient(tracking_uri=uri)
    with store_lock(path):
        client = MlflowClient(tracking_uri=uri)
        client._tracking_client.store  # noqa: B018  built, created and migrated by now
    return client


def is_transient(err: BaseException) -> bool:
    """Worth retrying (server down, db locked, disk trouble) rather than a refused request."""
    if isinstance(err, MlflowException):
        return err.error_code not in PERMANENT_ERRORS
    return isinstance(err, Exception)


# ---------------------------------------------------------------- runs whose process died

def mark_lost_runs(client: MlflowClient, experiment_ids: Iterable[str],
                   lost_after: Optional[float] = None) -> List[str]:
    """Close RUNNING runs whose heartbeat stopped more than `lost_after` s ago: FAILED, lost.

    Only runs that carry a heartbeat (sweeplab's) are judged. Returns their run ids.
    """
    lost_after = lost_after_seconds() if lost_after is None else lost_after
    now = time.time()
    lost = []
    runs = client.search_runs(list(experiment_ids), "attributes.status = 'RUNNING'",
                              max_results=5000)
    for run in runs:
        beat = run.data.tags.get(HEARTBEAT_TAG)
        if beat is None or now - float(beat) <= lost_after:
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(beat)))
        client.set_tag(run.info.run_id, "outcome", "lost")
        client.set_tag(run.info.run_id, ERROR_TAG,
                       f"lost: no heartbeat since {when}; its process died without closing "
                       f"the run (SIGKILL, out of memory, lost machine)")
        client.set_terminated(run.info.run_id, "FAILED", end_time=int(float(beat) * 1000))
        lost.append(run.info.run_id)
    if lost:
        log.warning("Marked %d run(s) FAILED (outcome=lost): no heartbeat for over %.0f s: %s",
                    len(lost), lost_after, ", ".join(lost))
    return lost


def beat(client: MlflowClient, run_id: str) -> None:
    """Refresh a run's heartbeat tag."""
    client.set_tag(run_id, HEARTBEAT_TAG, str(int(time.time())))


class Heartbeat:
    """Refreshes a run's heartbeat from a daemon thread until stopped (a sweep's parent run;
    a job's run beats from its outbox thread)."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat_until_stopped, daemon=True,
                                       name=f"sweeplab-heartbeat-{run_id[:8]}")

    def start(self) -> "Heartbeat":
        self.thread.start()
        return self

    def _beat_until_stopped(self) -> None:
        while not self.stopped.wait(heartbeat_seconds()):
            try:
                beat(self.client, self.run_id)
            except Exception:  # a store hiccup: the next beat tries again
                pass

    def stop(self) -> None:
        self.stopped.set()
