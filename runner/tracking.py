"""One job's MLflow run: params, batched metrics, artifacts, status. Knows nothing of Hydra.

Everything goes through an explicit MlflowClient (no fluent global state), so parallel jobs
and the sweep callback never step on each other's "active run". What a run needs to know about
the job that produced it (overrides, its sweep's parent run, its log file, whether it must
stop) comes in as a `JobContext` (built by the CLI, or by a launcher that runs several jobs in
one process).

Writes go through the run's `Outbox` (runner/outbox.py): a background thread sends them, so
training never waits on the store, and saves them to a file if the store stays unreachable.
Every run ends in a terminal state: FINISHED; KILLED (`outcome=killed`) when the job was told
to stop; FAILED (`outcome=error`, the error in the `sweeplab.error` tag and `error.txt`) when
it raised. If neither the store nor the journal took its writes (a full disk), leaving the run
raises `WritesLost`: the job fails instead of passing for finished; so does a job whose log
file loses lines (runner/joblog.py), at its next metrics call. Every run carries the code
version (runner/codeversion.py).
"""
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from runner import codeversion, joblog, store, tags
from runner.config import ConfigError
from runner.outbox import Outbox, WritesLost, one_line
# Where the store is: re-exported, callers have always found these here.
from runner.store import artifact_location, experiment_id, tracking_uri  # noqa: F401

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
MAX_PARAMS_PER_BATCH = 100
MAX_RUN_NAME = 250  # MLflow's runs.name column
FLUSH_SECONDS = 5.0  # metrics reach the store at least this often, so the UI shows progress
CREATE_RETRY_SECONDS = 10.0  # creating the run is retried this long, then the run goes offline
RECORDED_ATTR = "sweeplab_run_id"  # set on an exception once a run recorded it


class Stopped(KeyboardInterrupt):
    """The job was told to stop (a signal, via JobContext.should_stop): its run ends KILLED.

    A KeyboardInterrupt, so that `except Exception` in task code never swallows it.
    """

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


# ---------------------------------------------------------------- params and names

def flatten(node, prefix: str = "") -> Dict[str, str]:
    """{'optimizer': {'lr': 0.01}} -> {'optimizer.lr': '0.01'}; lists stay one value."""
    flat = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = str(value)
    return flat


def run_name(overrides: List[str], common: List[str] = ()) -> str:
    """Readable from what this job changed, e.g. 'lr=0.005,clipping=value'.

    In a sweep, `common` holds the command line's fixed overrides (shared by every job and
    shown on the parent run), so a child is named by what varies.
    """
    shown = [o.lstrip("+~").replace("optimizer.lr=", "lr=") for o in overrides
             if o not in common and not o.startswith(("experiment=", "mlflow.", "hydra"))]
    experiment = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
    return short_name(",".join(shown) or (experiment[0] if experiment else "run"))


def short_name(name: str) -> str:
    """A run name MLflow's tables take: PostgreSQL enforces the column's 250 characters
    (sqlite does not, so a long name used to pass there only)."""
    return name if len(name) <= MAX_RUN_NAME else name[:MAX_RUN_NAME - 3] + "..."


def config_hash(cfg) -> str:
    """Names a job's training config across sweeps: the resolved config minus `mlflow.*`
    (where it is tracked is not what it trains)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("mlflow", None)
    text = json.dumps(resolved, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def replicate_hash(cfg) -> str:
    """Names a job's replicate group: its config minus `seed` (and `mlflow.*`). Runs that
    share it repeat one config with different seeds: the report's statistics pool them."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.pop("mlflow", None)
    resolved.pop("seed", None)
    text = json.dumps(resolved, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- one job's run

@dataclass(frozen=True)
class JobContext:
    """Who ran this job: its overrides and, in a sweep, the parent run it belongs to."""
    overrides: Sequence[str] = ()  # this job's command-line overrides
    parent_run_id: Optional[str] = None  # the sweep's parent run; None for a single run
    common_overrides: Sequence[str] = ()  # shared by every job of the sweep (not in the name)
    log_file: Optional[str] = None  # the job's own log, logged as an artifact at the end
    extra_tags: Dict[str, str] = None  # e.g. how the job was launched
    # Progress lines go to this logger (a launcher running several jobs in one process gives
    # each its own, writing to the job's log file); None = the task module's logger.
    logger_name: Optional[str] = None
    output_dir: Optional[str] = None  # where writes the store did not take are saved (cwd)
    # Polled at every metrics call: a signal number once the job must stop, else None/0.
    should_stop: Optional[Callable[[], Optional[int]]] = None
    # The sweep's store, absolute as the sweep resolved it (a worker in another directory
    # would resolve a relative mlflow.tracking_uri elsewhere); None = from the job's config.
    tracking_uri: Optional[str] = None


class TrackedRun:
    """A job's MLflow run: params and config on entry, batched metrics, status on exit."""

    def __init__(self, cfg, job: JobContext, task_tags: Dict[str, str]):
        self.cfg, self.job, self.task_tags = cfg, job, task_tags
        self.pending: List[list] = []
        self.last_flush = time.monotonic()
        self.finished = False  # finish() called: a stop request no longer cuts the run short
        self.run_id: Optional[str] = None
        self.name = run_name(list(job.overrides), job.common_overrides)

    def __enter__(self):
        self._stop_if_asked()  # before anything exists in the store
        uri = self.job.tracking_uri or tracking_uri(self.cfg.mlflow)
        self.staging = tempfile.mkdtemp(prefix="sweeplab-run-")
        overrides = list(self.job.overrides)
        run_tags = {tags.OVERRIDES: store.redact(" ".join(overrides)) or "(none)",
                    tags.OUTCOME: tags.OUTCOME_RUNNING, tags.CONFIG_HASH: config_hash(self.cfg),
                    tags.REPLICATE: replicate_hash(self.cfg),
                    tags.HEARTBEAT: str(int(time.time())), tags.RUN_KEY: uuid.uuid4().hex,
                    **codeversion.version_tags(),
                    **self.task_tags, **(self.job.extra_tags or {})}
        if self.job.parent_run_id:
            run_tags[tags.PARENT_RUN] = self.job.parent_run_id
            run_tags[tags.SWEEP_ID] = self.job.parent_run_id
        header = {"tracking_uri": uri, "experiment_name": self.cfg.mlflow.experiment_name,
                  "artifact_location": artifact_location(self.cfg.mlflow, uri),
                  "run_name": self.name}
        failure = self._create_run(uri, run_tags)
        self.outbox = Outbox(self.client, self.run_id, self.job.output_dir or os.getcwd(),
                             header, offline_because=failure)
        if self.run_id is None:  # the store is unreachable: the journal creates it later
            self.outbox.put({"op": "create_run", "experiment_name": header["experiment_name"],
                             "artifact_location": header["artifact_location"],
                             "run_name": self.name, "tags": run_tags,
                             "start_time": int(time.time() * 1000)})
        # Every value redacted: a password in any URI never reaches the store.
        params = [[k, store.redact(v)[:6000]] for k, v in
                  flatten(OmegaConf.to_container(self.cfg, resolve=True)).items()]
        for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self.outbox.put({"op": "log_batch", "params": params[i:i + MAX_PARAMS_PER_BATCH]})
        self.log_text(store.redact(OmegaConf.to_yaml(self.cfg, resolve=True)), "config.yaml")
        self.log_text(store.redact("\n".join(overrides) + "\n"), "overrides.txt")
        if self.run_id:
            # The job's own logger: with several jobs in one process, the line is this job's.
            logging.getLogger(self.job.logger_name or __name__).info(
                "MLflow run %s (%s) in %s", self.name, self.run_id, store.redact(uri))
        return self

    def _create_run(self, uri: str, run_tags: Dict[str, str]) -> Optional[BaseException]:
        """Create the run now (retrying briefly); the error if the store stays unreachable."""
        deadline = time.monotonic() + CREATE_RETRY_SECONDS
        first_send = True  # the run's key is new: only a retry may find it stored
        while True:
            try:
                self.client = store.open_client(uri)
                exp_id = experiment_id(self.client, self.cfg.mlflow, uri)
                sending_now, first_send = first_send, False
                run = store.create_run_once(self.client, exp_id, run_tags, self.name,
                                            first_send=sending_now)
                self.run_id = run.info.run_id
                return None
            except Exception as err:
                if getattr(err, "error_code", None) == "UNAUTHENTICATED":
                    # The sweep's check let this login in; basic-auth also answers 401 when
                    # its user lookup fails mid-restart. Asked again: refused now, one line
                    # (AccessDenied); accepted, it was the restart, and the create is retried.
                    try:
                        store.check_login(uri)
                    except ConfigError as refused:
                        raise store.AccessDenied(str(refused)) from None
                elif not store.is_transient(err):
                    denied = store.permission_error(err, uri, self.cfg.mlflow.experiment_name)
                    raise (store.AccessDenied(denied) if denied else err)
                if store.is_disk_full(err) or time.monotonic() > deadline:
                    self.client = None  # the outbox journals from the start: no client needed
                    return err
                time.sleep(1.0)

    def _stop_if_asked(self) -> None:
        if not self.finished and self.job.should_stop is not None:
            signum = self.job.should_stop()
            if signum:
                raise Stopped(signum)

    def _fail_if_log_lost(self) -> None:
        lost = joblog.write_error(self.job.log_file)
        if lost is not None:  # the job's log is losing lines (a full disk): the job fails
            raise OSError(lost.errno, lost.strerror, lost.filename)

    def log_derived(self, values: Dict[str, object]) -> None:
        """Numbers computed from the config (e.g. total steps from epochs), as `derived.*`
        params: the config params stay exactly what the user composed."""
        self.outbox.put({"op": "log_batch",
                         "params": [[f"derived.{k}", str(v)] for k, v in values.items()]})

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.pending.extend([k, float(v), now, int(step)] for k, v in metrics.items())
        self._maybe_flush()
        self._stop_if_asked()  # after keeping these metrics: __exit__ sends them
        self._fail_if_log_lost()

    def log_series(self, name: str, steps, values) -> None:
        now = int(time.time() * 1000)
        self.pending.extend([name, float(v), now, int(s)] for s, v in zip(steps, values))
        self._maybe_flush()
        self._stop_if_asked()
        self._fail_if_log_lost()

    def _maybe_flush(self) -> None:
        if time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()
        elif len(self.pending) >= MAX_METRICS_PER_BATCH:
            self.flush(whole_batches_only=True)

    def flush(self, whole_batches_only: bool = False) -> None:
        """Hand the buffered metrics to the outbox (it sends them in the background).

        `whole_batches_only`: keep the last part-batch for later. Every batch is a request to
        a tracking server, whose cost is mostly per request; sending the remainder of each
        full batch at once doubled the requests of a sweep (docs/team.md).
        """
        end = len(self.pending)
        if whole_batches_only:
            end -= end % MAX_METRICS_PER_BATCH
        for i in range(0, end, MAX_METRICS_PER_BATCH):
            self.outbox.put({"op": "log_batch",
                             "metrics": self.pending[i:i + MAX_METRICS_PER_BATCH]})
        self.pending = self.pending[end:]
        if not whole_batches_only:
            self.last_flush = time.monotonic()

    def set_tags(self, values: Dict[str, str]) -> None:
        self.outbox.put({"op": "log_batch", "tags": [[k, str(v)] for k, v in values.items()]})

    def finish(self, final: Dict[str, float], outcome: str) -> None:
        """Final metrics (no step) and the outcome tag users filter on."""
        self.finished = True
        self.log_metrics(final, step=0)
        self.flush()
        self.set_tags({tags.OUTCOME: outcome})
        self.log_dict(final, "final_metrics.json")

    # ------------------------------------------------------------ artifacts

    def _staged(self, artifact_file: str) -> str:
        """A local path for an artifact: written now, uploaded (or journaled) by the outbox."""
        path = os.path.join(self.staging, artifact_file)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def _log_staged(self, path: str, artifact_file: str) -> None:
        self.outbox.put({"op": "log_artifact", "path": path,
                         "artifact_path": os.path.dirname(artifact_file) or None})

    def log_text(self, text: str, artifact_file: str) -> None:
        path = self._staged(artifact_file)
        with open(path, "w") as f:
            f.write(text)
        self._log_staged(path, artifact_file)

    def log_dict(self, values: dict, artifact_file: str) -> None:
        self.log_text(json.dumps(values, indent=2), artifact_file)

    def log_figure(self, figure, name: str, save_kwargs: Optional[dict] = None) -> None:
        path = self._staged(f"plots/{name}")
        figure.savefig(path, **(save_kwargs or {}))
        self._log_staged(path, f"plots/{name}")

    # ------------------------------------------------------------ closing

    def __exit__(self, exc_type, exc, tb):
        self.flush()
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):  # Stopped, or Ctrl-C outside the CLI
            status = "KILLED"
            self.set_tags({tags.OUTCOME: tags.OUTCOME_KILLED})
        else:
            status = "FAILED"
            self.set_tags({tags.OUTCOME: tags.OUTCOME_ERROR, tags.ERROR: one_line(exc)})
            self.log_text("".join(traceback.format_exception(exc_type, exc, tb)), "error.txt")
        if exc is not None:
            try:
                setattr(exc, RECORDED_ATTR, self.run_id or self.name)
            except AttributeError:  # an exception type without __dict__
                pass
        self._log_job_log()
        self.outbox.put({"op": "set_terminated", "status": status,
                         "end_time": int(time.time() * 1000)})
        self.outbox.close()
        self.run_id = self.outbox.run_id  # a run created late by the outbox has its id now
        shutil.rmtree(self.staging, ignore_errors=True)
        if self.outbox.lost is not None and exc_type is None:
            raise WritesLost(f"run {self.name}: {self.outbox.dropped} write(s) reached neither "
                             f"the store nor the journal ({one_line(self.outbox.lost)})")
        return False

    def _log_job_log(self) -> None:
        """The job's own log file (progress lines), as it is now."""
        if self.job.log_file and os.path.isfile(self.job.log_file):
            path = self._staged(os.path.basename(self.job.log_file))
            shutil.copyfile(self.job.log_file, path)
            self._log_staged(path, os.path.basename(self.job.log_file))


def recorded_run(error: BaseException) -> Optional[str]:
    """The run that recorded `error` when it closed, if one did."""
    return getattr(error, RECORDED_ATTR, None)


def record_failure(cfg, job: JobContext, error: BaseException,
                   task_tags: Optional[Dict[str, str]] = None) -> Optional[str]:
    """A FAILED run for a job that raised before its run was opened (e.g. reading its data),
    so the failure shows in the store and the sweep counts it; returns the run id. None when
    the error is that the run's writes were lost: a second run would be lost the same way."""
    if isinstance(error, WritesLost):
        return None
    run = TrackedRun(cfg, replace(job, should_stop=None), task_tags or {})
    run.__enter__()
    run.__exit__(type(error), error, error.__traceback__)
    return run.run_id
