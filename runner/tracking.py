"""MLflow only: one tracking store per sweep, a parent run per sweep, a child run per job.

Everything goes through an explicit MlflowClient (no fluent global state), so parallel jobs
and the sweep callback never step on each other's "active run".
"""
import logging
import os
import sys
import time
from typing import Dict, List, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

# How the sweep callback hands the parent run to jobs (launchers start jobs after it ran).
ENV_PARENT_RUN = "SWEEPLAB_PARENT_RUN_ID"
ENV_SWEEP_OVERRIDES = "SWEEPLAB_SWEEP_OVERRIDES"  # the sweep's command line, one per line
TAG_SWEEP_DIR = "sweeplab.sweep_dir"
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


def job_overrides() -> List[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_name(overrides: List[str], common: List[str] = ()) -> str:
    """Readable from what this job changed, e.g. 'lr=0.005,clipping=value'.

    In a sweep, `common` holds the command line's fixed overrides (shared by every job and
    shown on the parent run), so a child is named by what varies.
    """
    shown = [o.lstrip("+~").replace("optimizer.lr=", "lr=") for o in overrides
             if o not in common and not o.startswith(("experiment=", "mlflow.", "hydra"))]
    experiment = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
    return ",".join(shown) or (experiment[0] if experiment else "run")


def _sweep_dir() -> Optional[str]:
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode is None or hydra_cfg.mode.name != "MULTIRUN":
        return None
    return os.path.abspath(hydra_cfg.sweep.dir)


def _parent_run(client: MlflowClient, exp_id: str) -> Optional[str]:
    """The sweep's parent run: from the environment, or (remote launchers) by sweep-dir tag."""
    sweep_dir = _sweep_dir()
    if sweep_dir is None:
        return None  # a single run is a plain run
    if os.environ.get(ENV_PARENT_RUN):
        return os.environ[ENV_PARENT_RUN]
    found = client.search_runs([exp_id], f"tags.`{TAG_SWEEP_DIR}` = '{sweep_dir}'",
                               max_results=1, order_by=["attributes.start_time ASC"])
    return found[0].info.run_id if found else None


# ---------------------------------------------------------------- one job's run

class TrackedRun:
    """A job's MLflow run: params and config on entry, batched metrics, status on exit."""

    def __init__(self, cfg, info):
        self.cfg, self.info = cfg, info
        self.pending: List[Metric] = []
        self.last_flush = time.monotonic()

    def __enter__(self):
        uri = tracking_uri(self.cfg.mlflow)
        self.client = MlflowClient(tracking_uri=uri)
        exp_id = experiment_id(self.client, self.cfg.mlflow, uri)
        overrides = job_overrides()
        tags = {"sweeplab.overrides": " ".join(overrides) or "(none)",
                "dataset.source": self.info.source, "outcome": "running"}
        parent = _parent_run(self.client, exp_id)
        if parent:
            tags["mlflow.parentRunId"] = parent
            tags["sweeplab.sweep_id"] = parent
        common = os.environ.get(ENV_SWEEP_OVERRIDES, "").splitlines() if parent else []
        run = self.client.create_run(exp_id, run_name=run_name(overrides, common), tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, v[:6000]) for k, v in
                  flatten(OmegaConf.to_container(self.cfg, resolve=True)).items()]
        for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + MAX_PARAMS_PER_BATCH])
        self.client.log_text(self.run_id, OmegaConf.to_yaml(self.cfg, resolve=True),
                             "config.yaml")
        self.client.log_text(self.run_id, "\n".join(overrides) + "\n", "overrides.txt")
        log.info("MLflow run %s (%s) in %s", run.info.run_name, self.run_id, uri)
        return self

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
        """The job's own log file (progress lines), if Hydra wrote one."""
        if not HydraConfig.initialized():
            return
        hydra_cfg = HydraConfig.get()
        path = os.path.join(hydra_cfg.runtime.output_dir, f"{hydra_cfg.job.name}.log")
        if os.path.isfile(path):
            self.client.log_artifact(self.run_id, path)


# ---------------------------------------------------------------- the sweep's parent run

class SweepCallback(Callback):
    """Creates the experiment and the parent run before any job starts, closes it after.

    Jobs of a parallel launcher would otherwise race to create the sqlite store (a fresh
    sqlite DB corrupts under parallel first access) and could not agree on a parent.
    """

    def on_multirun_start(self, config, **kwargs) -> None:
        uri = tracking_uri(config.mlflow)
        client = MlflowClient(tracking_uri=uri)
        exp_id = experiment_id(client, config.mlflow, uri)
        sweep_dir = os.path.abspath(config.hydra.sweep.dir)
        overrides = list(config.hydra.overrides.task)
        parent = client.create_run(exp_id, run_name=f"sweep {' '.join(overrides) or '(defaults)'}",
                                   tags={TAG_SWEEP_DIR: sweep_dir, "sweeplab.role": "sweep",
                                         "sweeplab.overrides": " ".join(overrides)})
        os.environ[ENV_PARENT_RUN] = parent.info.run_id
        os.environ[ENV_SWEEP_OVERRIDES] = "\n".join(overrides)
        log.info("MLflow sweep run %s in %s", parent.info.run_id, uri)

    def on_multirun_end(self, config, **kwargs) -> None:
        parent = os.environ.pop(ENV_PARENT_RUN, None)
        os.environ.pop(ENV_SWEEP_OVERRIDES, None)
        if parent is not None:
            client = MlflowClient(tracking_uri=tracking_uri(config.mlflow))
            try:
                summarise_sweep(client, parent)
            finally:
                client.set_terminated(parent, "FINISHED")
        rejected = rejected_jobs(os.path.abspath(config.hydra.sweep.dir))
        if rejected:
            print(f"sweeplab: error: {len(rejected)} job(s) of this sweep were rejected for "
                  f"bad config values (see the lines above): {', '.join(rejected)}",
                  file=sys.stderr, flush=True)
            sys.exit(2)


def rejected_jobs(sweep_dir: str) -> List[str]:
    """Job folders where the CLI left a config-error marker."""
    from runner.cli import CONFIG_ERROR_MARKER

    if not os.path.isdir(sweep_dir):
        return []
    return sorted(name for name in os.listdir(sweep_dir)
                  if os.path.isfile(os.path.join(sweep_dir, name, CONFIG_ERROR_MARKER)))


def summarise_sweep(client: MlflowClient, parent: str) -> None:
    """Overlay every child's curves on the parent run, plus a table of final numbers."""
    from runner import plots

    exp_id = client.get_run(parent).info.experiment_id
    children = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent}'",
                                  order_by=["attributes.start_time ASC"], max_results=1000)
    histories, rows = {}, []
    for child in children:
        name = child.info.run_name
        histories[name] = {key: [(m.step, m.value) for m in
                                 client.get_metric_history(child.info.run_id, key)]
                           for key in ("val_loss", "val_acc", "valid_perplexity")}
        metrics = child.data.metrics
        rows.append({"run": name, "outcome": child.data.tags.get("outcome", "?"),
                     **{k: metrics[k] for k in ("val_loss", "val_acc", "test_acc",
                                                "valid_perplexity", "test_perplexity",
                                                "diverged_at_step") if k in metrics}})
    if histories:
        language_model = not any(h["val_loss"] for h in histories.values())
        keys = ("valid_perplexity",) if language_model else ("val_loss", "val_acc")
        client.log_figure(parent, plots.sweep_comparison(histories, keys),
                          "plots/sweep_curves.png")
    client.log_dict(parent, {"runs": rows}, "sweep_summary.json")
    client.set_tag(parent, "sweeplab.jobs", str(len(children)))
