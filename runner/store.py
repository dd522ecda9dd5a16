"""The MLflow tracking store: where it is, a quick check before work starts, safe set-up,
and closing runs whose process died.

- `resolve`: the one rule for where the store is, for jobs, sweeps, `sweeplab report`,
  `sweeplab resume` alike: the option given, else $MLFLOW_TRACKING_URI, else
  sqlite:///<cwd>/outputs/mlflow.db; relative sqlite files and folders made absolute, so every
  job of a sweep (whatever its working directory) finds the same store.
- `check`: the one check, in seconds and before TensorFlow loads. A store about to be
  written (a run, a sweep) must be creatable and writable; a store about to be read (a
  report) must exist and is never created. A server must answer /health. Each failure is one
  `ConfigError` line naming the option (or variable) that chose the store, and a fix.
- `open_client` creates or migrates a fresh sqlite store under a file lock beside the database
  (a PostgreSQL database: under an advisory lock), so two sweeps (or runs) started together
  never race through MLflow's schema migration.
- `redact`: credentials in a URI (`scheme://user:password@`, `password=...`) as `***`; used
  everywhere a URI is written (params, tags, artifacts, one-line errors) and, through a log
  record factory installed when this module loads, on every log line of the process.
- `mark_lost_runs`: a run refreshes its heartbeat tag while its process lives; a RUNNING run
  whose heartbeat is older than `lost_after_seconds()` (default 10 min) died without closing
  (SIGKILL, OOM killer, lost machine) and is marked FAILED with `outcome=lost`.

MLflow is imported inside the functions that talk to the store, not at the top: the CLI
imports this module, and `sweeplab --help` must print without loading MLflow (about 1 s).
"""
import base64
import contextlib
import errno
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Tuple

from runner import tags
from runner.config import ConfigError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

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

OPTION = "mlflow.tracking_uri"  # the config key that names the store
ENV_URI = "MLFLOW_TRACKING_URI"  # MLflow's own variable: the store when no option names one
DEFAULT_DB = os.path.join("outputs", "mlflow.db")  # under the working directory
CHECK_SECONDS = 3.0  # how long the server check waits for an answer
SCHEMA_LOCK_KEY = 0x5357_4545_504C  # "SWEEPL": PostgreSQL advisory lock around schema set-up

# MLflow error codes that say the request itself is wrong (a param changed value, a deleted
# run): sent again, now or from a journal, it gets the same answer.
REFUSED_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS",
                  "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "MALFORMED_REQUEST", "BAD_REQUEST"}
# A login or permission refused (HTTP 401, 403): see `is_denied`.
DENIED_ERRORS = {"UNAUTHENTICATED", "PERMISSION_DENIED"}
# How a database error reads once MLflow's server wrapped it as BAD_REQUEST (mlflow.store.db
# .utils turns every SQLAlchemy error but OperationalError into one): "(psycopg.errors.X) ...",
# "(sqlalchemy.exc.X) ...", and SQLAlchemy's "https://sqlalche.me/e/..." background link.
_DATABASE_ERROR = re.compile(r"\((psycopg2?|sqlite3|sqlalchemy)[\w.]*\)|sqlalche\.me/e/")
# A write that failed for want of room: the disk (or quota, or file-size limit) is full.
FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
SQLITE_FULL = "database or disk is full"  # SQLite's SQLITE_FULL message


def seconds_setting(name: str, default: float) -> float:
    """A timing knob from the environment (tests shorten them), else its default."""
    return float(os.environ.get(name, default))


def heartbeat_seconds() -> float:
    return seconds_setting("SWEEPLAB_HEARTBEAT_SECONDS", 30.0)


def lost_after_seconds() -> float:
    return seconds_setting("SWEEPLAB_LOST_AFTER_SECONDS", 600.0)


# ---------------------------------------------------------------- secrets

USERNAME_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"  # MLflow's
REDACTED = "***"
# scheme://user:password@ (Hydra's launchers print overrides with ':' escaped as '\:').
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*\\?://)(?P<user>[^/@\s:'\"\\]*)"
                       r"(?P<sep>\\?:)(?P<password>[^/@\s'\"]*)@")
_PASSWORD_PARAM = re.compile(r"(?P<key>\bpassword=)(?P<password>[^&\s'\"]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every password in a URI replaced by ***: `postgresql+psycopg://u:***@db/x`,
    `http://u:***@host:5000`, `...?password=***`. The one rule, wherever a URI is written."""
    if not isinstance(text, str) or ("@" not in text and "assword=" not in text.lower()):
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}{m['sep']}{REDACTED}@", text)
    return _PASSWORD_PARAM.sub(lambda m: f"{m['key']}{REDACTED}", text)


def without_password(uri: str) -> str:
    """`uri` with its password taken out (userinfo `user@`, no password= parameter): the
    client then uses MLflow's variables (a server) or PGPASSWORD / ~/.pgpass (PostgreSQL)."""
    uri = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}@", uri)
    uri = re.sub(r"(?<=[?&])password=[^&]*&?", "", uri, flags=re.IGNORECASE)
    return uri.rstrip("?&")


def _install_log_redaction() -> None:
    """Every log record of this process (sweeplab's, Hydra's launcher lines, MLflow's) has its
    message redacted when it is made: no handler, file or terminal sees a password."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "sweeplab_redacts", False):
        return

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: the handler reports it as it always does
            return record
        clean = redact(message)
        if clean is not message and clean != message:
            record.msg, record.args = clean, None
        return record

    factory.sweeplab_redacts = True
    logging.setLogRecordFactory(factory)


_install_log_redaction()


def server_credentials(uri: str) -> Tuple[Optional[str], Optional[str]]:
    """(username, password) a client sends to the server at `uri`: MLflow's variables, else
    the URI's own userinfo."""
    if os.environ.get(USERNAME_ENV) or os.environ.get(PASSWORD_ENV):
        return os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
    parsed = urllib.parse.urlsplit(uri)
    if parsed.username is not None:
        return (urllib.parse.unquote(parsed.username),
                urllib.parse.unquote(parsed.password or ""))
    return None, None


def base_url(uri: str) -> str:
    """A server's URL without user or password (urllib does not take them; links must not
    show them)."""
    parsed = urllib.parse.urlsplit(uri)
    host = parsed.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parsed.port}" if parsed.port else "")
    return urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, "", "")).rstrip("/")


class AccessDenied(ConfigError):
    """The store refused this user (no login, or no permission on the experiment): one line,
    like a bad option, rather than a FAILED run it may not write either."""


def login_error(uri: str, source: str, user: Optional[str]) -> ConfigError:
    """The one line for a server that refused the client's login (HTTP 401)."""
    shown = redact(uri)
    if not user:
        return ConfigError(f"{source}: the MLflow server at {shown} needs a login; set "
                           f"{USERNAME_ENV} and {PASSWORD_ENV} (your account on that server)")
    return ConfigError(f"{source}: the MLflow server at {shown} refused user {user!r}: wrong "
                       f"{USERNAME_ENV} or {PASSWORD_ENV}")


def permission_error(err: BaseException, uri: str, experiment: str) -> Optional[str]:
    """The one line for a store that refused a write for want of permission; None if `err` is
    something else."""
    code = getattr(err, "error_code", "")
    if code not in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return None
    user = server_credentials(uri)[0] or "(no user)"
    if code == "UNAUTHENTICATED":
        return str(login_error(uri, OPTION, server_credentials(uri)[0]))
    return (f"{OPTION}: user {user!r} may not write to experiment {experiment!r} on "
            f"{redact(uri)}; ask an admin of that server to grant it EDIT (docs/team.md), or "
            f"use another experiment: mlflow.experiment_name=NAME")


# ---------------------------------------------------------------- where the store is

def default_uri() -> str:
    """The store when nothing names one: sqlite:///<cwd>/outputs/mlflow.db."""
    return "sqlite:///" + os.path.abspath(DEFAULT_DB)


def absolute(uri: str) -> str:
    """sqlite:///relative.db and plain folders made absolute; other URIs as given."""
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    return uri if "://" in uri or uri.startswith("file:") else os.path.abspath(uri)


def resolve(given: Optional[str], option: str = OPTION) -> Tuple[str, str]:
    """(absolute tracking URI, what chose it): `given` (named `option` in messages), else
    $MLFLOW_TRACKING_URI, else the default store (named `option`: it is how to change it)."""
    if given:
        return absolute(given), option
    if os.environ.get(ENV_URI):
        return absolute(os.environ[ENV_URI]), ENV_URI
    return default_uri(), option


def tracking_uri(cfg) -> str:
    """The store of a job's `mlflow` config (`cfg.tracking_uri`), by `resolve`'s rule."""
    return resolve(cfg.tracking_uri)[0]


def sqlite_path(uri: str) -> Optional[str]:
    return uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else None


def local_path(uri: str) -> Optional[str]:
    """The file or folder of a local store (sqlite file, file: URI, plain folder); None for a
    server or a database server."""
    if uri.startswith("sqlite:///"):
        return sqlite_path(uri)
    if uri.startswith("file:"):
        return urllib.parse.unquote(urllib.parse.urlparse(uri).path)
    return uri if "://" not in uri else None


def artifact_location(cfg, uri: str) -> Optional[str]:
    """Where a new experiment keeps artifacts: beside the sqlite file unless configured."""
    if cfg.artifact_location:
        return os.path.abspath(cfg.artifact_location)
    if sqlite_path(uri):
        return os.path.join(os.path.dirname(sqlite_path(uri)), "mlartifacts")
    return None  # a server or file store decides


def experiment_id(client: "MlflowClient", cfg, uri: str) -> str:
    """The id of experiment `cfg.experiment_name`, created if need be."""
    return ensure_experiment(client, cfg.experiment_name, artifact_location(cfg, uri))


# (store URI, experiment name) -> id, per process: an experiment's id never changes, and a
# launcher's jobs all ask for the same one (a tracking server spent ~40 ms of CPU on each ask during a sweep).
_experiment_ids: Dict[Tuple[str, str], str] = {}


def ensure_experiment(client: "MlflowClient", name: str, artifacts: Optional[str]) -> str:
    from mlflow.exceptions import MlflowException  # lazy: see the module's docstring

    key = (client.tracking_uri, name)
    if key in _experiment_ids:
        return _experiment_ids[key]
    found = client.get_experiment_by_name(name)
    if found is not None:
        _experiment_ids[key] = found.experiment_id
        return found.experiment_id
    try:
        made = client.create_experiment(name, artifacts)
    except MlflowException:  # created by a concurrent job in the meantime
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        made = found.experiment_id
    _experiment_ids[key] = made
    return made


# ---------------------------------------------------------------- the check before work

def _fix(source: str) -> str:
    """How to point at another store, for the option or variable that chose this one."""
    if source.startswith("--"):
        return f"pass {source} URI (or set {ENV_URI})"
    example = f"sqlite:///{os.path.abspath(DEFAULT_DB)}"
    return f"fix it or point {source} elsewhere, e.g. {source}={example}"


def _writable_folder(folder: str, source: str) -> None:
    """The folder exists (created if need be) and this user may create files in it."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{source}: cannot create the folder {folder} ({err.strerror}); "
                          f"{_fix(source)}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{source}: the folder {folder} is read-only; {_fix(source)}")


def check_server(uri: str, source: str = OPTION, timeout: float = CHECK_SECONDS) -> None:
    """Quick requests to the server: /health answers at all, and not with a 5xx; then, on a
    server with logins (basic-auth), the client's credentials are accepted."""
    base = base_url(uri)
    try:
        with urllib.request.urlopen(base + "/health", timeout=timeout):
            pass
    except urllib.error.HTTPError as err:
        if err.code >= 500:
            _unreachable(uri, source, f"HTTP {err.code} {err.reason}")
        # else it answers (a proxy may not route /health): reachable
    except (urllib.error.URLError, OSError) as err:
        _unreachable(uri, source, str(getattr(err, "reason", err)) or type(err).__name__)
    check_login(uri, source, timeout)


def _unreachable(uri: str, source: str, reason: str) -> None:
    raise ConfigError(f"{source}: no MLflow server answers at {redact(uri)} ({reason}); start "
                      f"it (sweeplab server --dir DIR, or mlflow server --host 127.0.0.1 --port "
                      f"5000) or {_fix(source)}")


def check_login(uri: str, source: str = OPTION, timeout: float = CHECK_SECONDS) -> None:
    """On a server with logins, the client's user and password are accepted (MLflow's
    basic-auth answers /users/current; a server without logins answers 404)."""
    user, password = server_credentials(uri)
    request = urllib.request.Request(base_url(uri) + "/api/2.0/mlflow/users/current")
    if user is not None:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            json.load(answer)
    except urllib.error.HTTPError as err:
        if err.code == 401:
            raise login_error(uri, source, user) from None
    except (urllib.error.URLError, OSError, ValueError):
        pass  # the /health check passed: the store's own requests say what is wrong


def check(uri: str, source: str = OPTION, write: bool = True,
          artifact_location: Optional[str] = None) -> None:
    """Raise ConfigError if the store at `uri` cannot be used; takes seconds.

    write=True (a run or sweep): a local store's folder is created if need be and must be
    writable, as must an existing sqlite file. write=False (a report): a local store must
    exist, and is never created. A server must answer either way.
    """
    path = local_path(uri)
    if uri.startswith(("http://", "https://")):
        check_server(uri, source)
    elif is_postgres(uri):
        check_postgres(uri, source)
    elif path and not write:
        if not os.path.exists(path):
            raise ConfigError(f"{source}: no MLflow store at {path}; run a sweep first "
                              f"(sweeplab -m ...), or {_fix(source)}")
    elif path and sqlite_path(uri):
        _writable_folder(os.path.dirname(path), source)
        if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(f"{source}: the database file {path} is read-only; "
                              f"{_fix(source)}")
    elif path:
        _writable_folder(path, source)
    if artifact_location and write:
        _writable_folder(os.path.abspath(artifact_location), source)


def is_postgres(uri: str) -> bool:
    return uri.startswith(("postgresql:", "postgresql+", "postgres:"))


def _engine(uri: str, source: str, **connect_args):
    """A SQLAlchemy engine without a pool, for one-off connections; a missing driver is a
    one-line ConfigError."""
    import sqlalchemy  # lazy: see the module's docstring
    from sqlalchemy.pool import NullPool

    try:
        return sqlalchemy.create_engine(uri, poolclass=NullPool, connect_args=connect_args)
    except (ImportError, sqlalchemy.exc.NoSuchModuleError, sqlalchemy.exc.ArgumentError) as err:
        raise ConfigError(f"{source}: cannot use {redact(uri)} ({type(err).__name__}: "
                          f"{redact(str(err).splitlines()[0])}); the PostgreSQL driver is the "
                          f".[postgres] extra: pip install 'sweeplab[postgres]' (psycopg 3, "
                          f"URIs postgresql+psycopg://USER@HOST/DB)") from None


def check_postgres(uri: str, source: str = OPTION, timeout: float = CHECK_SECONDS) -> None:
    """The driver loads and the database accepts a connection, within `timeout` s."""
    engine = _engine(uri, source, connect_timeout=max(1, int(timeout)))
    try:
        with engine.connect():
            pass
    except Exception as err:
        reason = " ".join(redact(str(getattr(err, "orig", None) or err)).split())[:300]
        raise ConfigError(f"{source}: PostgreSQL at {redact(uri)} does not accept a connection "
                          f"({reason}); start it or fix the URI (a password goes in PGPASSWORD "
                          f"or ~/.pgpass)") from None
    finally:
        engine.dispose()


@contextlib.contextmanager
def postgres_lock(uri: str):
    """A PostgreSQL advisory lock (session-level, held on its own connection): one process at
    a time creates or migrates the schema of that database."""
    from sqlalchemy import text  # lazy: see the module's docstring

    engine = _engine(uri, OPTION)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
                conn.commit()
    finally:
        engine.dispose()


def check_store(cfg) -> None:
    """Raise ConfigError if a run or sweep with the `mlflow` config `cfg` cannot write its
    store; takes seconds."""
    uri, source = resolve(cfg.tracking_uri)
    check(uri, source, write=True, artifact_location=cfg.artifact_location)


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


def open_client(uri: str) -> "MlflowClient":
    """An MlflowClient whose store is set up; a fresh sqlite db (a file lock) or PostgreSQL
    database (an advisory lock) is created under a lock.

    MLflow builds (and on an empty db, creates and migrates) the store object when a client
    is made and caches it per process; making it under the lock means no second process can
    see a half-migrated schema.
    """
    from mlflow.tracking import MlflowClient  # lazy: see the module's docstring

    quiet_mlflow_sql_errors()
    if redact(uri) != uri:
        # MLflow prints "View run ... at: <the URI>" on stdout (not a log record) when a run
        # ends: with a password in the URI, not at all.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    path = sqlite_path(uri)
    if is_postgres(uri):
        lock = postgres_lock(uri)
    elif path:
        lock = store_lock(path)
    else:
        return MlflowClient(tracking_uri=uri)
    with lock:
        client = MlflowClient(tracking_uri=uri)
        client._tracking_client.store  # noqa: B018  built, created and migrated by now
    return client


def quiet_mlflow_sql_errors() -> None:
    """MLflow logs every SQL error of its sqlite/database store with a full traceback before it
    raises it (mlflow.store.db.utils); sweeplab retries and reports each failure itself, in
    one line, so that logger only speaks for CRITICAL."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def is_refused(err: BaseException) -> bool:
    """The store answered that this request is wrong: retrying it, or saving it for `sweeplab
    sync`, cannot make it pass. Anything else (no answer, a 5xx, a database error, a login
    or permission refused) might pass later.

    A BAD_REQUEST that carries a database error is not a refusal: MLflow's server answers 400
    for e.g. a connection PostgreSQL closed under it, or two copies of one retried log_batch
    racing on a unique key.
    """
    code = getattr(err, "error_code", None)
    if code not in REFUSED_ERRORS:
        return False
    return not (code == "BAD_REQUEST" and _DATABASE_ERROR.search(str(err)))


def is_denied(err: BaseException) -> bool:
    """The server refused the login or the permission (HTTP 401/403). Before anything is
    written that is the user's answer (one line, exit 2). Once a run writes, it is kept for
    later instead: basic-auth answers 401 when its user lookup fails while its database
    restarts, and a password changed mid-sweep must not cost the sweep its metrics."""
    return getattr(err, "error_code", None) in DENIED_ERRORS


def is_transient(err: BaseException) -> bool:
    """Worth retrying (server down, db locked): neither refused nor denied."""
    return isinstance(err, Exception) and not is_refused(err) and not is_denied(err)


def is_disk_full(err: BaseException) -> bool:
    """A write failed for want of room (no space, quota, file-size limit), in a file of ours
    or inside the sqlite store: waiting will not make room."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in FULL_ERRNOS:
            return True
        if SQLITE_FULL in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


# ---------------------------------------------------------------- creating a run once

def create_run_once(client: "MlflowClient", exp_id: str, run_tags: dict, run_name: str,
                    start_time: Optional[int] = None, first_send: bool = False):
    """Create the run tagged `tags.RUN_KEY` = run_tags[RUN_KEY], once.

    The store is first asked for the key: a create saved in a journal may have reached the
    store already (one in flight when its run closed, see runner/outbox.py); not when
    `first_send` says this key was made just now and is sent for the first time. A request to a
    server can also commit and lose its answer (the server killed, a timeout); the retry,
    MLflow's own or ours, would make a second run. So a server is asked again after creating:
    of two, the older stays and the other is deleted (it holds nothing but its tags). A
    database store commits or raises: no second question.
    """
    key = run_tags[tags.RUN_KEY]
    remote = client.tracking_uri.startswith(("http://", "https://"))
    query = f"tags.`{tags.RUN_KEY}` = '{key}'"
    found = [] if first_send else client.search_runs([exp_id], query, max_results=10)
    if found:
        return min(found, key=lambda r: (r.info.start_time, r.info.run_id))
    run = client.create_run(exp_id, start_time=start_time, tags=run_tags, run_name=run_name)
    if remote:
        found = client.search_runs([exp_id], query, max_results=10)
        keep = min(found or [run], key=lambda r: (r.info.start_time, r.info.run_id))
        for other in found:
            if other.info.run_id != keep.info.run_id:
                client.delete_run(other.info.run_id)
        return keep
    return run


# ---------------------------------------------------------------- runs whose process died

def mark_lost_runs(client: "MlflowClient", experiment_ids: Iterable[str],
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
        beat = run.data.tags.get(tags.HEARTBEAT)
        if beat is None or now - float(beat) <= lost_after:
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(beat)))
        close_lost(client, run.info.run_id,
                   f"{tags.LOST_ERROR_PREFIX} no heartbeat since {when}; its process died "
                   f"without closing the run (SIGKILL, out of memory, lost machine)",
                   end_time=int(float(beat) * 1000))
        lost.append(run.info.run_id)
    if lost:
        log.warning("Marked %d run(s) FAILED (outcome=lost): no heartbeat for over %.0f s: %s",
                    len(lost), lost_after, ", ".join(lost))
    return lost


def close_lost(client: "MlflowClient", run_id: str, why: str,
               end_time: Optional[int] = None) -> None:
    """Close a run whose process died: FAILED, `outcome=lost`, why in `sweeplab.error`."""
    client.set_tag(run_id, tags.OUTCOME, tags.OUTCOME_LOST)
    client.set_tag(run_id, tags.ERROR, why)
    client.set_terminated(run_id, "FAILED", end_time=end_time)


def beat(client: "MlflowClient", run_id: str) -> None:
    """Refresh a run's heartbeat tag."""
    client.set_tag(run_id, tags.HEARTBEAT, str(int(time.time())))


class Heartbeat:
    """Refreshes a run's heartbeat from a daemon thread until stopped (a sweep's parent run;
    a job's run beats from its outbox thread)."""

    def __init__(self, client: "MlflowClient", run_id: str):
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
