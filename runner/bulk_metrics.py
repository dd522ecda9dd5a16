"""Metric values into a SQL tracking store in one statement, instead of one ORM object each.

Why: MLflow's SqlAlchemyStore.log_batch builds an ORM object per metric value (0.08-0.12 ms
of CPU each on this project's 2-core machines), so a 1000-step run's ~8,200 values cost up to
~1 s of CPU and a 16-job sweep 16-20 s, in threads that share the cores with training. Here
the same rows go into MLflow's own tables in one statement (~0.013 ms per value, 6x less in
the same measurement: docs/speed.md), and the run's `latest_metrics` rows are updated the way
MLflow updates them (the newest by step, then timestamp, then value) in one upsert. The
result reads back through MlflowClient exactly as if log_batch had written it
(tests/test_tracking_bulk.py).

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

By design, not as a fallback: a file store and SQL dialects other than sqlite and PostgreSQL
go through `MlflowClient.log_batch`, which is always right, only slower. A client of a tracking
server sends REST log-batch requests (`send`); `sweeplab server` writes them with `write` on
its side (runner/server_app.py). The fast path is tested on sqlite (tests/test_tracking_bulk.py)
and on PostgreSQL (tests/test_server.py, `make test-server`).
"""
import json
import logging
import math
from typing import List, Optional, Sequence

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# What each row holds, with its PostgreSQL type (for one unnest() per batch); the tables must
# have exactly these columns (a guard, and a test).
PG_ARRAY_TYPES = {"run_uuid": "text", "key": "text", "value": "float8", "timestamp": "int8",
                  "step": "int8", "is_nan": "bool"}
METRIC_COLUMNS = frozenset(PG_ARRAY_TYPES)
DIALECTS = ("sqlite", "postgresql")  # both have INSERT ... ON CONFLICT DO NOTHING
MAX_PER_CALL = 1000  # log_batch's limit per call

_warned = False  # the first fallback in this process warns; later ones log at DEBUG


def _store_of(client: MlflowClient):
    """The store object behind an MlflowClient (MLflow's private attributes; None if moved)."""
    return getattr(getattr(client, "_tracking_client", None), "store", None)


def _sql_store(client: MlflowClient):
    """The client's SqlAlchemyStore, or None (REST, file)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError:  # pragma: no cover - an MLflow without SQL support
        return None
    store = _store_of(client)
    return store if isinstance(store, SqlAlchemyStore) else None


def _rest_store(client: MlflowClient):
    """The client's RestStore (a tracking server) if its log_batch is MLflow's own, or None."""
    from mlflow.store.tracking.rest_store import RestStore
    store = _store_of(client)
    if isinstance(store, RestStore) and type(store).log_batch is RestStore.log_batch:
        return store
    return None


def _json_double(value: float):
    """A double as protobuf's JSON writes it: NaN and ±inf are the strings JSON lacks."""
    value = float(value)
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def send(store, run_id: str, metrics: Sequence[Sequence]) -> None:
    """RestStore.log_batch of metric rows, its JSON written with json.dumps.

    Why: RestStore.log_batch builds a protobuf message per value and writes it with
    protobuf's JSON printer: the client spent ~18 µs of CPU per value in the training process
    (request included), ~6 µs with json.dumps (50,000 values in batches of 1000). The request is the same log-batch call (same endpoint,
    credentials, retries and errors: RestStore's own `_call_endpoint`).
    """
    from mlflow.protos.service_pb2 import LogBatch
    body = {"run_id": run_id,
            "metrics": [{"key": key, "value": _json_double(value), "timestamp": int(timestamp),
                         "step": int(step)} for key, value, timestamp, step in metrics]}
    store._call_endpoint(LogBatch, json.dumps(body, allow_nan=False))


def _write_session(store):
    """A session that commits on success (MLflow 3 opens read-only ones unless told)."""
    try:
        return store.ManagedSessionMaker(read_only=False)
    except TypeError:  # MLflow 2: every session may write
        return store.ManagedSessionMaker()


def _valid(metrics: Sequence[Sequence]) -> bool:
    """Whether log_batch would accept every row: MLflow's own check (`_validate_metric`) on
    each key's first row, then on any row whose value, timestamp or step is not plainly a
    float, a non-negative int and an int: a key's rows share its name checks."""
    from mlflow.utils.validation import _validate_metric
    checked = set()
    try:
        for key, value, timestamp, step in metrics:
            if (key in checked and type(value) is float and type(timestamp) is int
                    and timestamp >= 0 and type(step) is int):
                continue
            _validate_metric(key, value, timestamp, step)
            checked.add(key)
    except MlflowException:
        return False
    return True


def _rows(store, run_id: str, metrics: Sequence[Sequence]):
    """(rows for the metrics table, the newest row of each key), stored as MLflow stores them."""
    rows, newest = [], {}
    for key, value, timestamp, step in metrics:
        is_nan, stored = store.sanitize_metric_value(float(value))
        stored = float(stored)  # NaN is stored as 0 (an int): a float column takes floats
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
    from sqlalchemy import select, tuple_

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
        _insert_metric_rows(session, store, table, rows, insert)
        # Each key's newest row replaces the stored one only if newer, MLflow's rule, in one
        # upsert (a select, an insert and an update per key had made a 20-value batch of 8
        # keys 11 statements).
        upsert = insert(latest).values(list(newest.values()))
        newer = (tuple_(upsert.excluded.step, upsert.excluded.timestamp, upsert.excluded.value)
                 > tuple_(latest.c.step, latest.c.timestamp, latest.c.value))
        session.execute(upsert.on_conflict_do_update(
            index_elements=[latest.c.run_uuid, latest.c.key], where=newer,
            set_={c: upsert.excluded[c] for c in ("value", "timestamp", "step", "is_nan")}))
    return True


def _insert_metric_rows(session, store, table, rows, insert) -> None:
    """INSERT ... ON CONFLICT DO NOTHING of every row (all of one run): on sqlite an
    executemany (sqlite3 loops in C); on PostgreSQL one statement over one array per column,
    because psycopg's executemany sends the rows one by one (in a profile of the server, the
    executemany was most of a 1000-value batch's insert)."""
    if store.engine.dialect.name != "postgresql":
        session.execute(insert(table).on_conflict_do_nothing(), rows)
        return
    # The run id once; the other columns as arrays in psycopg's binary format (1.3 ms of client
    # CPU per 1000 rows, against 4.2 ms for text arrays, whose elements are quoted in Python).
    quote = store.engine.dialect.identifier_preparer.quote
    columns = [c for c in PG_ARRAY_TYPES if c != "run_uuid"]
    sql = (f"INSERT INTO {quote(table.name)} ({quote('run_uuid')}, "
           f"{', '.join(quote(c) for c in columns)}) "
           f"SELECT %s, * FROM unnest({', '.join(f'%b::{PG_ARRAY_TYPES[c]}[]' for c in columns)})"
           f" ON CONFLICT DO NOTHING")
    session.connection().exec_driver_sql(
        sql, (rows[0]["run_uuid"],) + tuple([row[c] for row in rows] for c in columns))


def _fell_back(err: BaseException) -> None:
    global _warned
    level = logging.DEBUG if _warned else logging.WARNING
    _warned = True
    log.log(level, "bulk metric insert failed on MLflow %s (%s: %s); this batch goes "
            "through MlflowClient.log_batch (correct, slower)", mlflow.__version__,
            type(err).__name__, " ".join(str(err).split())[:300])


def write(store, run_id: str, metrics: Sequence[Sequence]) -> bool:
    """Write [key, value, timestamp ms, step] rows into a SqlAlchemyStore in one statement.

    False (nothing written) where log_batch must write them: another dialect, a row log_batch
    would refuse, a missing or deleted run, or tables this module does not know.
    """
    if store.engine.dialect.name not in DIALECTS or not _valid(metrics):
        return False
    try:
        return _insert(store, run_id, metrics)
    except Exception as err:  # the transaction rolled back: nothing of it is stored
        _fell_back(err)
        return False


def log_metrics(client: MlflowClient, run_id: str, metrics: Optional[List[Sequence]]) -> bool:
    """Log [key, value, timestamp ms, step] rows to the run, fast where the store allows.

    Returns True when the one-statement path wrote them, False when log_batch did.
    """
    if not metrics:
        return False
    store = _sql_store(client)
    if store is not None and write(store, run_id, metrics):
        return True
    rest = _rest_store(client)
    if rest is not None:
        for i in range(0, len(metrics), MAX_PER_CALL):
            send(rest, run_id, metrics[i:i + MAX_PER_CALL])
        return False
    for i in range(0, len(metrics), MAX_PER_CALL):
        client.log_batch(run_id, metrics=[Metric(*m) for m in metrics[i:i + MAX_PER_CALL]])
    return False
