"""Metric values into a SQL tracking store in one statement, instead of one ORM object each.

MLflow's SqlAlchemyStore.log_batch builds an ORM object per metric value: ~0.12 ms each on
this project's 2-core machines, so a 1000-step run's ~8,200 values cost ~1 s of CPU and a
16-job sweep 16-20 s, in threads that share the cores with training. Here the same rows go into MLflow's
own tables (its models' `__table__`, so the columns are the installed MLflow's) with one
executemany, and the run's `latest_metrics` rows are updated the way MLflow updates them (the
newest by step, then timestamp, then value). The result reads back through MlflowClient
exactly as if log_batch had written it (tests/test_tracking_bulk.py).

Anything else — a tracking server, another store, an MLflow or schema this code does not expect, a row
that already exists (a replayed journal) — goes through `MlflowClient.log_batch`, which is
always right, only slower.
"""
import logging
from typing import List, Optional, Sequence

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

def _sql_store(client: MlflowClient):
    """The client's SqlAlchemyStore, or None (a REST server, a file store)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError:  # pragma: no cover - an MLflow without SQL support
        return None
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    return store if isinstance(store, SqlAlchemyStore) else None


def _write_session(store):
    """A session that commits on success (MLflow 3 opens read-only ones unless told)."""
    try:
        return store.ManagedSessionMaker(read_only=False)
    except TypeError:  # MLflow 2: every session may write
        return store.ManagedSessionMaker()


def _insert(store, run_id: str, metrics: Sequence[Sequence]) -> None:
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric
    from sqlalchemy import insert, select, update

    rows, newest = [], {}
    for key, value, timestamp, step in metrics:
        is_nan, stored = store.sanitize_metric_value(float(value))  # NaN, +-inf as MLflow
        row = {"run_uuid": run_id, "key": key, "value": stored, "timestamp": int(timestamp),
               "step": int(step), "is_nan": is_nan}
        rows.append(row)
        best = newest.get(key)
        if best is None or ((row["step"], row["timestamp"], stored)
                            > (best["step"], best["timestamp"], best["value"])):
            newest[key] = row
    latest = SqlLatestMetric.__table__
    with _write_session(store) as session:
        session.execute(insert(SqlMetric.__table__), rows)
        known = {r.key: r for r in session.execute(
            select(latest.c.key, latest.c.value, latest.c.timestamp, latest.c.step)
            .where(latest.c.run_uuid == run_id, latest.c.key.in_(list(newest))))}
        fresh = [row for key, row in newest.items() if key not in known]
        if fresh:
            session.execute(insert(latest), fresh)
        for key, row in newest.items():
            old = known.get(key)
            if old is not None and ((row["step"], row["timestamp"], row["value"])
                                    > (old.step, old.timestamp, old.value)):
                session.execute(update(latest)
                                .where(latest.c.run_uuid == run_id, latest.c.key == key)
                                .values(value=row["value"], timestamp=row["timestamp"],
                                        step=row["step"], is_nan=row["is_nan"]))


def log_metrics(client: MlflowClient, run_id: str, metrics: Optional[List[Sequence]]) -> None:
    """Log [key, value, timestamp ms, step] rows to the run, fast where the store allows."""
    if not metrics:
        return
    store = _sql_store(client)
    if store is not None:
        try:
            _insert(store, run_id, metrics)
            return
        except Exception as err:  # the transaction rolled back: nothing of it is stored
            log.debug("bulk metric insert fell back to log_batch: %s", err)
    for i in range(0, len(metrics), 1000):  # log_batch's limit per call
        client.log_batch(run_id, metrics=[Metric(*m) for m in metrics[i:i + 1000]])
