"""runner.bulk_metrics writes what MlflowClient.log_batch writes, read back through MLflow;
its fast path is the one that ran, it writes MLflow's own columns, it rejects what log_batch
rejects, and its fallback warns once."""
import logging
import math
import re

import mlflow
import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric
from mlflow.tracking import MlflowClient
from sqlalchemy import event

from runner import bulk_metrics

BATCHES = [
    [["loss", 2.3, 1000, 1], ["loss", 2.1, 1000, 2], ["acc", 0.1, 1000, 0],
     ["loss", float("nan"), 1001, 3], ["norm", float("inf"), 1001, 3],
     ["norm", -float("inf"), 1001, 4]],
    # Later calls: an older step (latest stays), a newer one, a tie on step broken by value.
    [["loss", 9.0, 999, 0], ["acc", 0.5, 1002, 10], ["acc", 0.4, 1002, 10],
     ["loss", 1.9, 1003, 5]],
    [["time/train", 1.5, 1004, 0], ["acc", 0.7, 1002, 10]],
]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """One store for the module (creating its tables takes ~1 s); each test its own runs."""
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path_factory.mktemp('bulk')}/mlflow.db")


@pytest.fixture
def run_id(client):
    return client.create_run("0").info.run_id


def history(client, run_id, key):
    return sorted((m.step, m.timestamp, m.value if not math.isnan(m.value) else "nan")
                  for m in client.get_metric_history(run_id, key))


def test_bulk_rows_read_back_as_log_batchs(client):
    bulk, reference = (client.create_run("0").info.run_id for _ in range(2))
    for batch in BATCHES:
        assert bulk_metrics.log_metrics(client, bulk, batch) is True  # the fast path wrote it
        client.log_batch(reference, metrics=[Metric(*m) for m in batch])
    mine, theirs = client.get_run(bulk).data.metrics, client.get_run(reference).data.metrics
    assert set(mine) == set(theirs) == {"loss", "acc", "norm", "time/train"}
    for key in theirs:
        assert history(client, bulk, key) == history(client, reference, key), key
        same_nan = math.isnan(mine[key]) and math.isnan(theirs[key])
        assert same_nan or mine[key] == theirs[key], key
    assert mine["acc"] == 0.7 and mine["loss"] == 1.9


def test_the_fast_path_writes_exactly_mlflows_columns(client, run_id):
    """The INSERT statements sent to the database name the columns of MLflow's own models."""
    statements = []
    engine = bulk_metrics._sql_store(client).engine
    listener = lambda conn, cursor, sql, params, context, many: statements.append(sql)  # noqa
    event.listen(engine, "before_cursor_execute", listener)
    try:
        assert bulk_metrics.log_metrics(client, run_id, BATCHES[0]) is True
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    written = {}
    for sql in statements:
        match = re.match(r"\s*INSERT INTO (\w+) \(([^)]*)\)", sql)
        if match:
            written[match.group(1)] = {c.strip(" \"`") for c in match.group(2).split(",")}
    assert written == {
        SqlMetric.__tablename__: set(SqlMetric.__table__.columns.keys()),
        SqlLatestMetric.__tablename__: set(SqlLatestMetric.__table__.columns.keys())}
    assert set(SqlMetric.__table__.columns.keys()) == bulk_metrics.METRIC_COLUMNS
    assert set(SqlLatestMetric.__table__.columns.keys()) == bulk_metrics.METRIC_COLUMNS


@pytest.mark.parametrize("row", [
    ["../escape", 1.0, 1000, 0],      # a name that resolves to another path
    ["bad*key", 1.0, 1000, 0],        # a character MLflow does not allow
    ["", 1.0, 1000, 0],               # empty
    ["k" * 300, 1.0, 1000, 0],        # longer than MLflow's key limit
    ["ok", 1.0, -5, 0],               # negative timestamp
], ids=["path", "char", "empty", "long", "timestamp"])
def test_a_row_log_batch_rejects_is_rejected_the_same_way(client, run_id, row):
    batch = [["fine", 1.0, 1000, 0], row]
    with pytest.raises(MlflowException) as theirs:
        client.log_batch(run_id, metrics=[Metric(*m) for m in batch])
    with pytest.raises(MlflowException) as mine:
        bulk_metrics.log_metrics(client, run_id, batch)
    assert (mine.value.error_code, mine.value.message) == (
        theirs.value.error_code, theirs.value.message)
    assert client.get_run(run_id).data.metrics == {}  # nothing of the batch stored


def test_a_deleted_or_missing_run_is_refused_as_log_batch_refuses_it(client, run_id):
    client.delete_run(run_id)
    for target in (run_id, "0" * 32):
        with pytest.raises(MlflowException) as theirs:
            client.log_batch(target, metrics=[Metric("loss", 1.0, 1000, 0)])
        with pytest.raises(MlflowException) as mine:
            bulk_metrics.log_metrics(client, target, [["loss", 1.0, 1000, 0]])
        assert mine.value.error_code == theirs.value.error_code


def test_the_first_fallback_warns_once_naming_mlflows_version(client, run_id, monkeypatch,
                                                              caplog):
    def broken(*args):
        raise RuntimeError("no such column: metrics.is_nan")

    monkeypatch.setattr(bulk_metrics, "_insert", broken)
    monkeypatch.setattr(bulk_metrics, "_warned", False)
    with caplog.at_level(logging.DEBUG, logger=bulk_metrics.__name__):
        assert bulk_metrics.log_metrics(client, run_id, BATCHES[0]) is False
        assert bulk_metrics.log_metrics(client, run_id, BATCHES[1]) is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert mlflow.__version__ in warnings[0].getMessage()
    assert "no such column" in warnings[0].getMessage()
    assert len(caplog.records) == 2  # the second fallback is logged, at DEBUG
    assert client.get_run(run_id).data.metrics["acc"] == 0.5  # log_batch stored both


def test_a_replayed_batch_stores_nothing_twice(client, run_id):
    assert bulk_metrics.log_metrics(client, run_id, BATCHES[0]) is True
    # e.g. `sweeplab sync` of a journal: the rows exist, the fast path skips them
    assert bulk_metrics.log_metrics(client, run_id, BATCHES[0]) is True
    assert len(client.get_metric_history(run_id, "loss")) == 3
    assert client.get_run(run_id).data.metrics["loss"] != 2.1  # the newest (NaN, step 3)


def test_a_store_that_is_not_sql_goes_through_log_batch(tmp_path, monkeypatch):
    # A client whose store is not SQL (a server's REST store, here MLflow's file store).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=f"file://{tmp_path}/mlruns")
    assert bulk_metrics._sql_store(client) is None
    exp = client.create_experiment("files")
    run = client.create_run(exp).info.run_id
    assert bulk_metrics.log_metrics(client, run, BATCHES[1]) is False
    assert client.get_run(run).data.metrics["acc"] == 0.5
