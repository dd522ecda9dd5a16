"""runner.bulk_metrics writes what MlflowClient.log_batch writes, read back through MLflow."""
import math

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

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


@pytest.fixture
def client(tmp_path):
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")


def history(client, run_id, key):
    return sorted((m.step, m.timestamp, m.value if not math.isnan(m.value) else "nan")
                  for m in client.get_metric_history(run_id, key))


def test_bulk_rows_read_back_as_log_batchs(client):
    exp = client.create_experiment("bulk")
    bulk, reference = (client.create_run(exp).info.run_id for _ in range(2))
    assert bulk_metrics._sql_store(client) is not None  # the fast path is the one tested
    for batch in BATCHES:
        bulk_metrics.log_metrics(client, bulk, batch)
        client.log_batch(reference, metrics=[Metric(*m) for m in batch])
    mine, theirs = client.get_run(bulk).data.metrics, client.get_run(reference).data.metrics
    assert set(mine) == set(theirs) == {"loss", "acc", "norm", "time/train"}
    for key in theirs:
        assert history(client, bulk, key) == history(client, reference, key), key
        same_nan = math.isnan(mine[key]) and math.isnan(theirs[key])
        assert same_nan or mine[key] == theirs[key], key
    assert mine["acc"] == 0.7 and mine["loss"] == 1.9


def test_a_replayed_batch_falls_back_to_log_batch_and_stores_nothing_twice(client):
    exp = client.create_experiment("replay")
    run = client.create_run(exp).info.run_id
    bulk_metrics.log_metrics(client, run, BATCHES[0])
    bulk_metrics.log_metrics(client, run, BATCHES[0])  # e.g. `sweeplab sync` of a journal
    assert len(client.get_metric_history(run, "loss")) == 3


def test_a_store_that_is_not_sql_goes_through_log_batch(tmp_path, monkeypatch):
    # A client whose store is not SQL (a server's REST store, here MLflow's file store).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=f"file://{tmp_path}/mlruns")
    assert bulk_metrics._sql_store(client) is None
    exp = client.create_experiment("files")
    run = client.create_run(exp).info.run_id
    bulk_metrics.log_metrics(client, run, BATCHES[1])
    assert client.get_run(run).data.metrics["acc"] == 0.5
