"""`sweeplab server --dir DIR`: a team's tracking server in one command, in the foreground.

Two child processes, supervised here:
- PostgreSQL (Debian's `postgresql` binaries): a cluster initialised in DIR/postgres on the first
  start, listening on a unix socket in DIR/postgres-socket only (no TCP port), `trust` on that
  socket: the socket folder is private (0700) to the OS user running PostgreSQL, and root.
  PostgreSQL refuses to run as root; started as root, it runs as the OS user `postgres` (made by
  Debian's package), else `sweeplab-pg` (created here with useradd). That user must be able to
  enter DIR.
- `mlflow server --app-name sweeplab` under gunicorn (MLflow's basic-auth app, metric values
  written in one statement per batch: runner/server_app.py): the tracking store in database
  `mlflow`, the users and permissions in database `mlflow_auth` (basic-auth's ini,
  DIR/basic_auth.ini, names it), artifacts served from DIR/artifacts. The admin is MLflow's (`admin`, or
  $MLFLOW_AUTH_ADMIN_USERNAME) with the password in $MLFLOW_AUTH_ADMIN_PASSWORD (MLflow >= 3.16.1
  ships none; >= 12 characters), needed on the first start, when MLflow creates the admin.
  The password travels in the environment only: no file under DIR holds it.

It prints the tracking URI once the server answers. A child that dies is restarted (a crashed
or killed mlflow server, a PostgreSQL restart); Ctrl-C / SIGTERM stops mlflow, then PostgreSQL,
and leaves no process. A restart on the same DIR finds every run.
"""
import argparse
import ctypes
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import List, Optional

from runner.config import ConfigError

PG_USERS = ("postgres", "sweeplab-pg")  # the OS user PostgreSQL runs as when we are root
DATABASES = ("mlflow", "mlflow_auth")  # tracking store, basic-auth users and permissions
ADMIN_PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"  # MLflow's own variable
ADMIN_USERNAME_ENV = "MLFLOW_AUTH_ADMIN_USERNAME"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"  # basic-auth's CSRF key, shared by workers
AUTH_BOOTSTRAPPED_ENV = "_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED"  # MLflow's: the admin exists already
MIN_PASSWORD = 12  # MLflow's password policy
AUTH_CACHE_SECONDS = 60  # basic-auth remembers a good password this long (per worker)
START_SECONDS = 180.0  # how long a child may take to answer
# mlflow server under gunicorn serves MLflow's Flask app directly. Under uvicorn (mlflow's
# default) every request also crosses FastAPI and an ASGI-to-WSGI bridge: during the S16
# sweep the server's workers used 8.1 s of CPU that way, 4.4 s under gunicorn, on the cores
# that train (docs/team.md). Lost are MLflow 3's FastAPI-only GenAI routes (OpenTelemetry
# trace ingestion, jobs, AI gateway, assistant, MCP), which tracking sweeps does not use.
# Threads: requests of one worker overlap (a slow artifact upload does not hold up metrics);
# a request may take 120 s before gunicorn restarts its worker.
GUNICORN_OPTS = "--threads 8 --timeout 120 --graceful-timeout 10"
# More worker processes than cores serve no more requests, and each costs CPU of its own (on 2
# cores, under uvicorn, 4 workers used ~11 s of CPU during the S16 sweep, 2 workers ~9.5 s).
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
QUICK_DEATHS = 5  # a child that dies this many times in a row within a minute of starting: give up
INSTALL = "apt-get install postgresql"
BIN_ENV = "SWEEPLAB_POSTGRES_BIN"  # where initdb and postgres are, if not Debian's folder

AUTH_INI = """[mlflow]
default_permission = {default_permission}
database_uri = {database_uri}
admin_username = {admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# A password check is a PBKDF2 hash (tenths of a second of CPU): without this cache every
# request of every run pays it. A changed password or a deleted user is seen by the other
# workers within this many seconds.
auth_cache_ttl_seconds = {auth_cache_seconds}
"""


def say(message: str) -> None:
    print(f"sweeplab server: {message}", flush=True)


# ---------------------------------------------------------------- PostgreSQL

def pg_bin() -> str:
    """The folder of initdb and postgres: $SWEEPLAB_POSTGRES_BIN, else Debian's newest, else
    on PATH."""
    if os.environ.get(BIN_ENV):
        folder = os.environ[BIN_ENV]
        if all(os.access(os.path.join(folder, b), os.X_OK) for b in ("initdb", "postgres")):
            return folder
        raise ConfigError(f"{BIN_ENV}={folder} holds no PostgreSQL server binaries (initdb, "
                          f"postgres); install them ({INSTALL}) or point {BIN_ENV} at their "
                          f"folder")
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0,
                         reverse=True):
        if all(os.access(os.path.join(folder, b), os.X_OK) for b in ("initdb", "postgres")):
            return folder
    found = shutil.which("initdb")
    if found and shutil.which("postgres", path=os.path.dirname(os.path.realpath(found))):
        return os.path.dirname(os.path.realpath(found))
    raise ConfigError(f"sweeplab server needs PostgreSQL's server binaries (initdb, postgres: "
                      f"none in /usr/lib/postgresql/*/bin or on PATH); install them: {INSTALL}")


def pg_user() -> Optional[pwd.struct_passwd]:
    """The OS user PostgreSQL runs as: None (this user) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in PG_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    PG_USERS[-1]], check=True, capture_output=True)
    return pwd.getpwnam(PG_USERS[-1])


def role_name(user: Optional[pwd.struct_passwd]) -> str:
    """The PostgreSQL role clients connect as: the OS user that ran initdb (its superuser)."""
    return user.pw_name if user else pwd.getpwuid(os.geteuid()).pw_name


def as_user(user: Optional[pwd.struct_passwd]) -> dict:
    """Popen arguments that run a child as `user` (None: as we are)."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [],
            "env": dict(os.environ, HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)}


def die_with_parent(signum: int):
    """preexec_fn: the child gets `signum` if this process dies (even by SIGKILL)."""
    def set_pdeathsig():
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signum)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    return set_pdeathsig


def socket_dir(folder: str) -> str:
    return os.path.join(folder, "postgres-socket")


def store_uri(folder: str, database: str = "mlflow", user: Optional[str] = None) -> str:
    """The SQLAlchemy URI of a database of DIR's cluster, over its unix socket."""
    role = user or role_name(pg_user())
    return f"postgresql+psycopg://{role}@/{database}?host={socket_dir(folder)}"


def _own(path: str, user: Optional[pwd.struct_passwd], mode: int) -> None:
    os.makedirs(path, exist_ok=True)
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)
    os.chmod(path, mode)


def init_cluster(folder: str, bin_dir: str, user: Optional[pwd.struct_passwd]) -> bool:
    """initdb DIR/postgres on the first start; True if it was created now."""
    data = os.path.join(folder, "postgres")
    if os.path.exists(os.path.join(data, "PG_VERSION")):
        return False
    if user is not None:
        reach = subprocess.run(["test", "-x", folder], **as_user(user))
        if reach.returncode != 0:
            raise ConfigError(f"--dir {folder}: PostgreSQL refuses to run as root and runs as "
                              f"the OS user {user.pw_name}, who cannot enter that folder (or "
                              f"one above it); choose a folder it can reach, e.g. /srv/sweeplab")
    _own(data, user, 0o700)
    done = subprocess.run([os.path.join(bin_dir, "initdb"), "-D", data, "-U", role_name(user),
                           "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"],
                          capture_output=True, text=True, **as_user(user))
    if done.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise ConfigError(f"--dir {folder}: initdb failed: {last}")
    return True


def start_postgres(folder: str, bin_dir: str, user) -> subprocess.Popen:
    sockets = socket_dir(folder)
    _own(sockets, user, 0o700)
    log = open(os.path.join(folder, "postgres.log"), "ab")
    kwargs = as_user(user)
    return subprocess.Popen(
        [os.path.join(bin_dir, "postgres"), "-D", os.path.join(folder, "postgres"),
         "-c", "listen_addresses=", "-c", f"unix_socket_directories={sockets}",
         "-c", "unix_socket_permissions=0700", "-c", "max_connections=300"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=die_with_parent(signal.SIGINT), **kwargs)


def wait_for_postgres(folder: str, proc: subprocess.Popen, role: str,
                      timeout: float = START_SECONDS) -> None:
    """Until the `postgres` database accepts a connection; then create DATABASES if missing."""
    import psycopg  # lazy: the driver is an extra, checked in main()

    def create_databases():
        with psycopg.connect(host=socket_dir(folder), user=role, dbname="postgres",
                             autocommit=True, connect_timeout=5) as conn:
            have = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
            for name in DATABASES:
                if name not in have:
                    conn.execute(f'CREATE DATABASE "{name}"')

    retry_until_up(create_databases, psycopg.OperationalError, proc, timeout, pause=0.2,
                   exited=lambda code: f"PostgreSQL exited at start (code {code}); see "
                                       f"{os.path.join(folder, 'postgres.log')}",
                   silent=lambda err: f"PostgreSQL did not answer within {timeout:.0f} s "
                                      f"({str(err).strip().splitlines()[-1]})")


def retry_until_up(attempt, errors, proc: subprocess.Popen, timeout: float, pause: float,
                   exited, silent) -> None:
    """Call `attempt()` until it raises none of `errors` (a service still starting); a
    RuntimeError with the line `exited(code)` if `proc` ends first, `silent(last error)` once
    `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            attempt()
            return
        except errors as err:
            if proc.poll() is not None:
                raise RuntimeError(exited(proc.returncode)) from None
            if time.monotonic() > deadline:
                raise RuntimeError(silent(err)) from None
            time.sleep(pause)


# ---------------------------------------------------------------- mlflow server

def write_auth_ini(folder: str, role: str, default_permission: str) -> str:
    path = os.path.join(folder, "basic_auth.ini")
    admin = os.environ.get(ADMIN_USERNAME_ENV) or "admin"
    with open(path, "w") as f:
        f.write(AUTH_INI.format(database_uri=store_uri(folder, "mlflow_auth", role), admin=admin,
                                default_permission=default_permission,
                                auth_cache_seconds=AUTH_CACHE_SECONDS))
    os.chmod(path, 0o600)
    return path


def start_mlflow(folder: str, args, role: str, ini: str) -> subprocess.Popen:
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    command = [mlflow if os.path.exists(mlflow) else "mlflow", "server",
               "--app-name", "sweeplab", "--backend-store-uri", store_uri(folder, "mlflow", role),
               "--serve-artifacts", "--artifacts-destination", os.path.join(folder, "artifacts"),
               "--host", args.host, "--port", str(args.port), "--workers", str(args.workers),
               "--gunicorn-opts", GUNICORN_OPTS]
    if args.allowed_hosts:
        command += ["--allowed-hosts", args.allowed_hosts]
    env = dict(os.environ, MLFLOW_AUTH_CONFIG_PATH=ini,
               MLFLOW_FLASK_SERVER_SECRET_KEY=flask_secret(folder),
               # MLflow 3's GenAI job runners: not needed to track sweeps; a quicker start/stop.
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log = open(os.path.join(folder, "mlflow-server.log"), "ab")
    bootstrap_auth(env, log)
    env[AUTH_BOOTSTRAPPED_ENV] = "true"
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))


def bootstrap_auth(env: dict, log) -> None:
    """Set up basic-auth's tables and the admin user once, before mlflow's workers start.

    `mlflow server` does this itself only for the app named basic-auth; for ours (sweeplab,
    runner/server_app.py) every worker would, all at once, migrating one fresh database
    concurrently. So this runs MLflow's own bootstrap in a child and tells the workers it is
    done, as `mlflow server` tells them.
    """
    done = subprocess.run([sys.executable, "-c", "from mlflow.server import "
                           "_bootstrap_basic_auth as bootstrap; bootstrap()"],
                          env=env, stdout=log, stderr=subprocess.STDOUT, timeout=START_SECONDS)
    if done.returncode != 0:
        raise RuntimeError(f"setting up the users' database failed: {last_line(log.name)}; "
                           f"see {log.name}")


def flask_secret(folder: str) -> str:
    """The CSRF key every mlflow worker shares ($MLFLOW_FLASK_SERVER_SECRET_KEY, else made once
    and kept in DIR/flask_secret_key, 0600): a browser's session survives a restart."""
    if os.environ.get(SECRET_KEY_ENV):
        return os.environ[SECRET_KEY_ENV]
    path = os.path.join(folder, "flask_secret_key")
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    with open(path) as f:
        return f.read().strip()


def local_uri(host: str, port: int) -> str:
    """Where this machine reaches the server (0.0.0.0 and :: listen on loopback too)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    return f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}"


def wait_for_mlflow(uri: str, proc: subprocess.Popen, log_path: str,
                    timeout: float = START_SECONDS) -> None:
    def health():
        with urllib.request.urlopen(uri + "/health", timeout=2):
            pass

    retry_until_up(health, (urllib.error.URLError, OSError), proc, timeout, pause=0.3,
                   exited=lambda code: f"mlflow server exited at start (code {code}): "
                                       f"{last_line(log_path)}; see {log_path}",
                   silent=lambda err: f"mlflow server did not answer at {uri} within "
                                      f"{timeout:.0f} s; see {log_path}")


def last_line(path: str) -> str:
    """The last error-looking line of a log (MLflow ends a failed start with its reason)."""
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f.readlines()[-200:] if line.strip()]
    except OSError:
        return "?"
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)]
    return (errors or lines or ["?"])[-1][:400]


# ---------------------------------------------------------------- stopping

def stop(proc: Optional[subprocess.Popen], signum: int, timeout: float = 30.0) -> None:
    """Signal the child's process group, wait, then SIGKILL what is left of it."""
    if proc is None:
        return
    for sig in (signum, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
            break
        except subprocess.TimeoutExpired:
            continue
    # The group may outlive its leader (uvicorn workers, postgres backends): wait them out.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Stop(Exception):
    """SIGINT or SIGTERM arrived: stop both children and exit 0."""


def _raise_stop(signum, frame):
    raise Stop(signum)


# ---------------------------------------------------------------- the command

def check_password(first_start: bool) -> None:
    password = os.environ.get(ADMIN_PASSWORD_ENV)
    if password is None and first_start:
        raise ConfigError(f"{ADMIN_PASSWORD_ENV} is not set: the first start creates the admin "
                          f"user with it (MLflow has no default; {MIN_PASSWORD}+ characters), "
                          f"e.g. export {ADMIN_PASSWORD_ENV}=\"$(openssl rand -base64 18)\"")
    if password is not None and len(password) < MIN_PASSWORD:
        raise ConfigError(f"{ADMIN_PASSWORD_ENV} is {len(password)} characters long; MLflow "
                          f"needs at least {MIN_PASSWORD}")


def check_driver() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ConfigError("sweeplab server needs the PostgreSQL driver psycopg 3; install it: "
                          "pip install 'sweeplab[postgres]' (or pip install 'psycopg[binary]')"
                          ) from None


def parse(argv: List[str]):
    parser = argparse.ArgumentParser(
        prog="sweeplab server", description="A team's MLflow tracking server: PostgreSQL and "
        "mlflow server with MLflow's basic-auth app, with every file under DIR (docs/team.md).")
    parser.add_argument("--dir", required=True, help="where the database, artifacts and logs "
                        "live; created on the first start")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on "
                        "(default 127.0.0.1: this machine only; 0.0.0.0: every network, see "
                        "docs/team.md)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"mlflow server worker processes (default {DEFAULT_WORKERS}: 4, "
                        f"or fewer on a machine with fewer cores)")
    parser.add_argument("--allowed-hosts", help="mlflow server's Host-header allow-list, e.g. "
                        "mlflow.example.org,mlflow.example.org:5000 (needed with --host 0.0.0.0)")
    parser.add_argument("--default-permission", default="READ",
                        choices=["READ", "EDIT", "MANAGE", "NO_PERMISSIONS"],
                        help="what a user may do in an experiment nobody granted them "
                        "(default READ)")
    return parser.parse_args(argv)


def main(argv: List[str]) -> int:
    args = parse(argv)
    folder = os.path.abspath(args.dir)
    try:
        bin_dir = pg_bin()
        check_driver()
        first = not os.path.exists(os.path.join(folder, "postgres", "PG_VERSION"))
        check_password(first)
        os.makedirs(folder, exist_ok=True)
        os.chmod(folder, 0o755)  # PostgreSQL's user enters it; what is inside stays private
        user = pg_user()
        if init_cluster(folder, bin_dir, user):
            say(f"created a PostgreSQL cluster in {os.path.join(folder, 'postgres')}")
    except ConfigError as err:
        print(f"sweeplab: error: server: {err}", file=sys.stderr, flush=True)
        return 2
    role = role_name(user)
    ini = write_auth_ini(folder, role, args.default_permission)
    uri = local_uri(args.host, args.port)
    mlflow_log = os.path.join(folder, "mlflow-server.log")
    children = {"postgres": None, "mlflow": None}
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    deaths = {"postgres": [], "mlflow": []}

    def start(name: str) -> None:
        if name == "postgres":
            children[name] = start_postgres(folder, bin_dir, user)
            wait_for_postgres(folder, children[name], role)
        else:
            children[name] = start_mlflow(folder, args, role, ini)
            wait_for_mlflow(uri, children[name], mlflow_log)

    try:
        start("postgres")
        start("mlflow")
        say(f"tracking URI {uri} (log in as {os.environ.get(ADMIN_USERNAME_ENV) or 'admin'}; "
            f"clients set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD); "
            f"logs in {folder}; Ctrl-C stops it")
        while True:
            time.sleep(0.5)
            for name in ("postgres", "mlflow"):
                proc = children[name]
                if proc.poll() is None:
                    continue
                now = time.monotonic()
                deaths[name] = [t for t in deaths[name] if now - t < 60] + [now]
                if len(deaths[name]) >= QUICK_DEATHS:
                    raise RuntimeError(f"{name} keeps exiting (code {proc.returncode}); see "
                                       f"the logs in {folder}")
                say(f"{name} exited (code {proc.returncode}); restarting it")
                stop(proc, signal.SIGKILL, timeout=10)  # what is left of its group
                start(name)
                say(f"{name} is back; tracking URI {uri}")
    except Stop:
        say("stopping")
        code = 0
    except RuntimeError as err:
        print(f"sweeplab: error: server: {err}", file=sys.stderr, flush=True)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop(children["mlflow"], signal.SIGTERM)
        stop(children["postgres"], signal.SIGINT)  # PostgreSQL's fast shutdown
    say("stopped")
    return code
