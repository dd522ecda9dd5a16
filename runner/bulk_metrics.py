"""Metric values into a SQL tracking store in one statement, instead of one ORM object each.

Why: MLflow's SqlAlchemyStore.log_batch builds an ORM object per metric value (0.08-0.12 ms
of CPU each on this project's 2-core machines), so a 1000-step run's ~8,200 values cost up to
~1 s of CPU and a 16-job sweep 16-20 s, in threads that share the cores with training. Here
the same rows go into MLflow's own tables with one executemany (~0.013 ms per value, 6x less
in the same measurement: docs/speed.md), and the run's
`latest_metrics` rows are updated the way MLflow updates them (the newest by step, then
timestamp, then value). The result reads back through MlflowClient exactly as if log_batch had
written it (tests/test_tracking_bulk.py).

This uses MLflow's private API (DESIGN.md allows it only behind a tested fallback):
`mlflow.store.tracking.dbmodels.models` (SqlMetric, SqlLatestMetric, SqlRun: their
`__table__`, so the columns are the installed MLflow's), the store's `ManagedSessionMaker` and
`sanitize_metric_value` (NaN and ±inf stored as MLflow stores them), and
`mlflow.utils.validation._validate_metric`. The guards:
- every row is checked with `_validate_metric`, the check log_batch makes; a batch it rejects
  goes to log_batch, which raises exactly the error it always raises;
- a run that does not exist or is deleted goes to log_batch (which refuses it as usual);
- the tables must have exactly the columns written here (`METRIC_COLUMNS`), else log_batch;
- any error inside the transaction rolls it back (nothing of it is stored) and the batch goes
  to log_batch. The first such fallback in a process logs a WARNING naming the MLflow version
  (later ones DEBUG): a new MLflow that changed its tables is seen, not silently slow.
Rows already stored (a replayed journal, `sweeplab sync`) are skipped by ON CONFLICT DO
NOTHING, as log_batch skips them. Not written here: logged-model metrics (log_batch writes
them only for a metric with a model id, or with an active model; sweeplab sets neither).

By design, not as a fallback: a tracking server (REST store), a file store and SQL dialects
other than sqlite and PostgreSQL go through `MlflowClient.log_batch`, which is always right,
only slower. The fast path is tested on sqlite (tests/test_tracking_bulk.py) and on PostgreSQL
(tests/test_server.py, `make test-server`).
"""
import logging
from typing import List, Optional, Sequence

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# What each row holds; the tables must have exactly these columns (a guard, and a test).
METRIC_COLUMNS = frozenset({"run_uuid", "key", "value", "timestamp", "step", "is_nan"})
DIALECTS = ("sqlite", "postgresql")  # both have INSERT ... ON CONFLICT DO NOTHING
MAX_PER_CALL = 1000  # log_batch's limit per call

_warned = False  # the first fallback in this process warns; later ones log at DEBUG


def _sql_store(client: MlflowClient):
    """The client's SqlAlchemyStore on a dialect handled here, or None (REST, file, other)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError:  # pragma: no cover - an MLflow without SQL support
        return None
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if not isinstance(store, SqlAlchemyStore) or store.engine.dialect.name not in DIALECTS:
        return None
    return store


def _write_session(store):
    """A session that commits on success (MLflow 3 opens read-only ones unless told)."""
    try:
        return store.ManagedSessionMaker(read_only=False)
    except TypeError:  # MLflow 2: every session may write
        return store.ManagedSessionMaker()


def _valid(metrics: Sequence[Sequence]) -> bool:
    """Whether log_batch would accept every row (its own check, row by row: ~2 µs each)."""
    from mlflow.utils.validation import _validate_metric
    try:
        for key, value, timestamp, step in metrics:
            _validate_metric(key, value, timestamp, step)
    except MlflowException:
        return False
    return True


def _rows(store, run_id: str, metrics: Sequence[Sequence]):
    """(rows for the metrics table, the newest row of each key), stored as MLflow stores them."""
    rows, newest = [], {}
    for key, value, timestamp, step in metrics:
        is_nan, stored = store.sanitize_metric_value(float(value))
        row = {"run_uuid": run_id, "key": key, "value": stored, "timestamp": int(timestamp),
               "step": int(step), "is_nan": is_nan}
        rows.append(row)
        best = newest.get(key)
        if best is None or ((row["step"], row["timestamp"], stored)
                            > (best["step"], best["timestamp"], best["value"])):
            newest[key] = row
    return rows, newest


def _insert(store, run_id: str, metrics: Sequence[Sequence]) -> bool:
    """Write the rows in one transaction; False (nothing written) where log_batch must decide."""
    from mlflow.entities import LifecycleStage
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlRun
    from sqlalchemy import select, update

    table, latest, runs = SqlMetric.__table__, SqlLatestMetric.__table__, SqlRun.__table__
    for t in (table, latest):
        if set(t.columns.keys()) != METRIC_COLUMNS:
            raise RuntimeError(f"table {t.name} has columns {sorted(t.columns.keys())}, "
                               f"expected {sorted(METRIC_COLUMNS)}")
    if store.engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    rows, newest = _rows(store, run_id, metrics)
    with _write_session(store) as session:
        stage = session.execute(select(runs.c.lifecycle_stage)
                                .where(runs.c.run_uuid == run_id)).scalar()
        if stage != LifecycleStage.ACTIVE:  # missing or deleted: log_batch says so
            return False
        session.execute(insert(table).on_conflict_do_nothing(), rows)
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
    return True


def _fell_back(err: BaseException) -> None:
    global _warned
    level = logging.DEBUG if _warned else logging.WARNING
    _warned = True
    log.log(level, "bulk metric insert failed on MLflow %s (%s: %s); this batch goes "
            "through MlflowClient.log_batch (correct, slower)", mlflow.__version__,
            type(err).__name__, " ".join(str(err).split())[:300])


def log_metrics(client: MlflowClient, run_id: str, metrics: Optional[List[Sequence]]) -> bool:
    """Log [key, value, timestamp ms, step] rows to the run, fast where the store allows.

    Returns True when the one-statement path wrote them, False when log_batch did.
    """
    if not metrics:
        return False
    store = _sql_store(client)
    if store is not None and _valid(metrics):
        try:
            if _insert(store, run_id, metrics):
                return True
        except Exception as err:  # the transaction rolled back: nothing of it is stored
            _fell_back(err)
    for i in range(0, len(metrics), MAX_PER_CALL):
        client.log_batch(run_id, metrics=[Metric(*m) for m in metrics[i:i + MAX_PER_CALL]])
    return False
