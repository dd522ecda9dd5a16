"""The app `sweeplab server` runs in mlflow server's workers: MLflow's basic-auth app, with
metric values written the way sweeplab writes them into a local store.

Why: behind basic-auth, a REST log_batch of 1000 metric values cost the server ~100 µs of CPU
per value (MLflow parses the JSON through protobuf, then its SqlAlchemyStore builds one ORM
object per value), on the same cores that train when the server runs beside a sweep:
+41 % on the S16 sweep's wall time against sqlite (docs/team.md). Here:
- `BulkMetricsStore.log_batch` writes plain metric values with runner.bulk_metrics (one
  statement per batch, reading back exactly as log_batch's rows);
- the log-batch endpoint reads a plain metrics-only request straight from its JSON into rows
  (`fast_log_batch`); anything else in it goes to MLflow's own handler.
Authentication and permissions are untouched: basic-auth checks every request before any view.

How: MLflow finds a server app by its `mlflow.app` entry point (pyproject.toml names this
`create_app` "sweeplab"; `mlflow server --app-name sweeplab`). Each worker process registers
`BulkMetricsStore` for the PostgreSQL and sqlite schemes in the server's tracking-store registry
(mlflow.server.handlers') before the first request builds the store; clients and other
processes are untouched. With MLflow's workspaces on (MLFLOW_ENABLE_WORKSPACES) the store and
the endpoint are MLflow's own, unchanged. Private MLflow names used here (DESIGN.md: only behind
a tested fallback): the handlers' registry and store builder, the `_log_batch` endpoint, and the
validation helpers; tests/test_server.py runs all of it against a real server.
"""
import logging
import math
import os

import mlflow
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from runner import bulk_metrics

log = logging.getLogger(__name__)
SCHEMES = ("postgresql", "sqlite")  # bulk_metrics.DIALECTS, as MLflow names their URI schemes
ENDPOINT = "_log_batch"  # the Flask endpoint of /api/2.0/mlflow/runs/log-batch (and ajax-api)
METRIC_FIELDS = frozenset({"key", "value", "timestamp", "step"})
NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}  # proto JSON


class BulkMetricsStore(SqlAlchemyStore):
    """SqlAlchemyStore whose log_batch writes plain metric values in one statement."""

    def log_batch(self, run_id, metrics, params, tags):
        # A metric tied to a logged model or a dataset also goes into MLflow's model tables.
        plain = all(m.model_id is None and m.dataset_name is None and m.dataset_digest is None
                    for m in metrics)
        if not metrics or not plain:
            return super().log_batch(run_id, metrics, params, tags)
        if params or tags:  # validated, checked against the run and written by MLflow
            super().log_batch(run_id, [], params, tags)
        self.log_metric_rows(run_id, [(m.key, m.value, m.timestamp, m.step) for m in metrics])

    def log_metric_rows(self, run_id, rows):
        """Log [key, value, timestamp ms, step] rows, as log_batch would log them."""
        from mlflow.entities import Metric
        from mlflow.utils.validation import _validate_batch_log_limits, _validate_run_id
        _validate_run_id(run_id)
        _validate_batch_log_limits(rows, [], [])
        if not bulk_metrics.write(self, run_id, rows):
            super().log_batch(run_id, [Metric(*row) for row in rows], [], [])  # MLflow's answer


def metric_rows(body):
    """(run_id, rows) of a log-batch request that holds only plain metrics, else None.

    Rows are what MLflow's handler would make of the same JSON (protobuf's JSON: a double may
    be "NaN" / "Infinity" / "-Infinity" or a numeric string, an int64 a string, `step`
    defaults to 0); a request with anything else (params, tags, model or dataset fields, a
    missing field, a wrong type) returns None and goes to MLflow's handler, which answers as it
    always does.
    """
    if not isinstance(body, dict) or set(body) - {"run_id", "metrics", "params", "tags"}:
        return None
    run_id, metrics = body.get("run_id"), body.get("metrics")
    if (not isinstance(run_id, str) or not run_id or not isinstance(metrics, list) or not metrics
            or body.get("params") or body.get("tags")):
        return None
    rows = []
    try:
        for metric in metrics:
            key = metric["key"]
            if set(metric) - METRIC_FIELDS or not isinstance(key, str) or not key:
                return None
            value, timestamp, step = metric["value"], metric["timestamp"], metric.get("step", 0)
            if isinstance(value, str):
                value = NON_FINITE[value] if value in NON_FINITE else float(value)
                if metric["value"] not in NON_FINITE and not math.isfinite(value):
                    return None  # "nan", "inf": protobuf's JSON spells them otherwise
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                return None
            rows.append((key, float(value), _int64(timestamp), _int64(step)))
    except (KeyError, TypeError, ValueError):
        return None
    return run_id, rows


def _int64(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(value)
    return int(value)


def fast_log_batch(mlflow_view):
    """The log-batch view: plain metrics straight into the store, the rest to `mlflow_view`."""
    from flask import Response, request
    from mlflow.server.handlers import _get_tracking_store, catch_mlflow_exception
    from mlflow.utils.validation import MAX_BATCH_LOG_REQUEST_SIZE

    @catch_mlflow_exception  # an MlflowException answers as MLflow's handler answers it
    def log_batch_view(*args, **kwargs):
        store = _get_tracking_store()
        parsed = None
        if (isinstance(store, BulkMetricsStore) and request.is_json
                and (request.content_length or 0) <= MAX_BATCH_LOG_REQUEST_SIZE):
            parsed = metric_rows(request.get_json(silent=True))
        if parsed is None:
            return mlflow_view(*args, **kwargs)
        store.log_metric_rows(*parsed)
        return Response("{}", mimetype="application/json")  # LogBatch.Response has no fields

    return log_batch_view


def _build_store(store_uri, artifact_uri):
    """What mlflow server's own builder makes, as a BulkMetricsStore."""
    from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES
    from mlflow.server.constants import READ_REPLICA_BACKEND_STORE_URI_ENV_VAR
    from mlflow.server.handlers import TrackingStoreRegistryWrapper
    if MLFLOW_ENABLE_WORKSPACES.get():
        return TrackingStoreRegistryWrapper._get_sqlalchemy_store(store_uri, artifact_uri)
    return BulkMetricsStore(store_uri, artifact_uri,
                            read_db_uri=os.environ.get(READ_REPLICA_BACKEND_STORE_URI_ENV_VAR))


def create_app():
    """mlflow server's app factory, called once in each worker process."""
    from mlflow.server import app as flask_app
    try:
        from mlflow.server.handlers import _tracking_store_registry  # the server's own
        for scheme in SCHEMES:
            _tracking_store_registry.register(scheme, _build_store)
        if ENDPOINT in flask_app.view_functions:  # else MLflow renamed it: its view serves
            flask_app.view_functions[ENDPOINT] = fast_log_batch(
                flask_app.view_functions[ENDPOINT])
    except (ImportError, AttributeError) as err:  # a new MLflow moved these: its own app
        log.warning("sweeplab's metric path is off on MLflow %s (%s); mlflow's own log_batch "
                    "serves (correct, slower)", mlflow.__version__, err)
    from mlflow.server.auth import create_app as basic_auth_app
    return basic_auth_app()
