"""One job's MLflow run: params, batched metrics, artifacts, status. Knows nothing of Hydra.

Everything goes through an explicit MlflowClient (no fluent global state), so parallel jobs
and the sweep callback never step on each other's "active run". What a run needs to know about
the job that produced it (overrides, its sweep's parent run, its log file) comes in as a
`JobContext` (built by the CLI, or by a launcher that runs several jobs in one process).
"""
import logging
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
MAX_PARAMS_PER_BATCH = 100
FLUSH_SECONDS = 5.0  # metrics reach the store at least this often, so the UI shows progress


# ---------------------------------------------------------------- store and experiment

def tracking_uri(cfg) -> str:
    """`cfg.tracking_uri` made absolute; default sqlite:///<cwd>/outputs/mlflow.db."""
    uri = cfg.tracking_uri or "sqlite:///outputs/mlflow.db"
    if uri.startswith("sqlite:///"):
        path = os.path.abspath(uri[len("sqlite:///"):])
        os.makedirs(os.path.dirname(path), exist_ok=True)  # sqlite does not create folders
        return "sqlite:///" + path
    if "://" not in uri:  # a plain folder: MLflow's file store
        return os.path.abspath(uri)
    return uri


def artifact_location(cfg, uri: str) -> Optional[str]:
    """Where a new experiment keeps artifacts: beside the sqlite file unless configured."""
    if cfg.artifact_location:
        return os.path.abspath(cfg.artifact_location)
    if uri.startswith("sqlite:///"):
        return os.path.join(os.path.dirname(uri[len("sqlite:///"):]), "mlartifacts")
    return None  # a server or file store decides


def experiment_id(client: MlflowClient, cfg, uri: str) -> str:
    found = client.get_experiment_by_name(cfg.experiment_name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(cfg.experiment_name, artifact_location(cfg, uri))
    except Exception:  # created by a concurrent job in the meantime
        found = client.get_experiment_by_name(cfg.experiment_name)
        if found is None:
            raise
        return found.experiment_id


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
    return ",".join(shown) or (experiment[0] if experiment else "run")


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


class TrackedRun:
    """A job's MLflow run: params and config on entry, batched metrics, status on exit."""

    def __init__(self, cfg, job: JobContext, tags: Dict[str, str]):
        self.cfg, self.job, self.tags = cfg, job, tags
        self.pending: List[Metric] = []
        self.last_flush = time.monotonic()

    def __enter__(self):
        uri = tracking_uri(self.cfg.mlflow)
        self.client = MlflowClient(tracking_uri=uri)
        exp_id = experiment_id(self.client, self.cfg.mlflow, uri)
        overrides = list(self.job.overrides)
        tags = {"sweeplab.overrides": " ".join(overrides) or "(none)", "outcome": "running",
                **self.tags, **(self.job.extra_tags or {})}
        parent = self.job.parent_run_id
        if parent:
            tags["mlflow.parentRunId"] = parent
            tags["sweeplab.sweep_id"] = parent
        run = self.client.create_run(exp_id, run_name=run_name(overrides,
                                                               self.job.common_overrides),
                                     tags=tags)
        self.run_id, self.name = run.info.run_id, run.info.run_name
        params = [Param(k, v[:6000]) for k, v in
                  flatten(OmegaConf.to_container(self.cfg, resolve=True)).items()]
        for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + MAX_PARAMS_PER_BATCH])
        self.client.log_text(self.run_id, OmegaConf.to_yaml(self.cfg, resolve=True),
                             "config.yaml")
        self.client.log_text(self.run_id, "\n".join(overrides) + "\n", "overrides.txt")
        # The job's own logger: with several jobs in one process, the line is this job's.
        logging.getLogger(self.job.logger_name or __name__).info(
            "MLflow run %s (%s) in %s", run.info.run_name, self.run_id, uri)
        return self

    def log_derived(self, values: Dict[str, object]) -> None:
        """Numbers computed from the config (e.g. total steps from epochs), as `derived.*`
        params: the config params stay exactly what the user composed."""
        self.client.log_batch(self.run_id, params=[Param(f"derived.{k}", str(v))
                                                   for k, v in values.items()])

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.pending.extend(Metric(k, float(v), now, int(step)) for k, v in metrics.items())
        self._maybe_flush()

    def log_series(self, name: str, steps, values) -> None:
        now = int(time.time() * 1000)
        self.pending.extend(Metric(name, float(v), now, int(s)) for s, v in zip(steps, values))
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if (len(self.pending) >= MAX_METRICS_PER_BATCH
                or time.monotonic() - self.last_flush >= FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.pending), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=self.pending[i:i + MAX_METRICS_PER_BATCH])
        self.pending = []
        self.last_flush = time.monotonic()

    def finish(self, final: Dict[str, float], outcome: str) -> None:
        """Final metrics (no step) and the outcome tag users filter on."""
        self.log_metrics(final, step=0)
        self.flush()
        self.client.set_tag(self.run_id, "outcome", outcome)
        self.client.log_dict(self.run_id, final, "final_metrics.json")

    def log_figure(self, figure, name: str) -> None:
        self.client.log_figure(self.run_id, figure, f"plots/{name}")

    def __exit__(self, exc_type, exc, tb):
        try:
            self.flush()
        finally:
            if exc_type is None:
                status = "FINISHED"
            else:
                status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
                self.client.set_tag(self.run_id, "outcome", "error")
            self._log_job_log()
            self.client.set_terminated(self.run_id, status)
        return False

    def _log_job_log(self) -> None:
        """The job's own log file (progress lines), if it wrote one."""
        if self.job.log_file and os.path.isfile(self.job.log_file):
            self.client.log_artifact(self.run_id, self.job.log_file)
