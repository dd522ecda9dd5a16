"""The app `sweeplab server` runs (runner/server_app.py), in parts that need no server: the
log-batch request reader, against protobuf's own JSON, and BulkMetricsStore on a real sqlite
store, against MLflow's SqlAlchemyStore. The whole app behind a real server is in
tests/test_server.py (`make test-server`)."""
import json
import math

import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.service_pb2 import LogBatch
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils.proto_json_utils import message_to_json

from runner import bulk_metrics
from runner.server_app import BulkMetricsStore, metric_rows

ROWS = [("loss", 2.5, 1700000000000, 0), ("loss", float("nan"), 1700000000001, 1),
        ("norm", float("inf"), 1700000000002, 2), ("norm", -float("inf"), 1700000000003, 3),
        ("acc", 0.0, 1700000000004, 2 ** 40)]


def same_rows(a, b):
    def key(row):
        return tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in row)
    return [key(r) for r in a] == [key(r) for r in b]


def mlflow_json(rows, **extra):
    """The body MLflow's RestStore.log_batch sends (its message_to_json of the protobuf)."""
    return json.loads(message_to_json(LogBatch(
        run_id="r" * 32, metrics=[Metric(*row).to_proto() for row in rows], **extra)))


def sweeplab_json(rows):
    """The body runner.bulk_metrics.send sends."""
    return {"run_id": "r" * 32,
            "metrics": [{"key": k, "value": bulk_metrics._json_double(v), "timestamp": t,
                         "step": s} for k, v, t, s in rows]}


@pytest.mark.parametrize("make_body", [mlflow_json, sweeplab_json], ids=["mlflow", "sweeplab"])
def test_a_plain_metrics_request_reads_as_its_rows(make_body):
    body = make_body(ROWS)
    assert "NaN" in json.dumps(body) and "Infinity" in json.dumps(body)  # strings, not floats
    run_id, rows = metric_rows(body)
    assert run_id == "r" * 32
    assert same_rows(rows, ROWS)
    assert all(type(v) is float and type(t) is int and type(s) is int for _, v, t, s in rows)


def test_step_defaults_to_zero_as_in_protobuf():
    body = {"run_id": "r" * 32, "metrics": [{"key": "a", "value": 1, "timestamp": 5}]}
    assert metric_rows(body) == ("r" * 32, [("a", 1.0, 5, 0)])


def plain(**metric):
    return {"run_id": "r" * 32,
            "metrics": [{"key": "a", "value": 1.0, "timestamp": 5, "step": 0, **metric}]}


@pytest.mark.parametrize("body", [
    {**plain(), "params": [{"key": "p", "value": "1"}]},   # params: MLflow's handler
    {**plain(), "tags": [{"key": "t", "value": "1"}]},     # tags: MLflow's handler
    plain(model_id="m-1"),                                  # a logged model's metric
    plain(dataset_name="d", dataset_digest="x"),           # a dataset's metric
    {"run_id": "r" * 32, "metrics": [{"key": "a", "value": 1.0}]},  # no timestamp
    plain(value=True),                                      # a bool is not a double
    plain(value="nan"),                                     # protobuf spells it "NaN"
    plain(value=None),
    plain(timestamp=5.5),                                   # not an int64
    plain(key=""),
    {"run_id": "", "metrics": plain()["metrics"]},
    {"run_id": "r" * 32, "metrics": []},
    {"run_id": "r" * 32, "metrics": [], "unknown": 1},
    {"runId": "r" * 32, "metrics": plain()["metrics"]},     # protobuf's other spelling
    ["not", "an", "object"],
], ids=["params", "tags", "model", "dataset", "no-timestamp", "bool", "nan-lower", "null",
        "float-timestamp", "empty-key", "empty-run", "no-metrics", "unknown-field", "camel-case",
        "list"])
def test_anything_else_goes_to_mlflows_handler(body):
    assert metric_rows(body) is None


@pytest.fixture
def stores(tmp_path):
    """This app's store and MLflow's, on two real sqlite databases, one run each."""
    ours = BulkMetricsStore(f"sqlite:///{tmp_path}/ours.db", str(tmp_path / "a"))
    theirs = SqlAlchemyStore(f"sqlite:///{tmp_path}/theirs.db", str(tmp_path / "b"))
    runs = [s.create_run("0", "user", 1000, [], "run").info.run_id for s in (ours, theirs)]
    return list(zip((ours, theirs), runs))


def test_the_store_writes_what_mlflows_writes(stores):
    metrics = [Metric(*row) for row in ROWS]
    for store, run in stores:
        store.log_batch(run, metrics=metrics[:3], params=[Param("lr", "0.1")],
                        tags=[RunTag("t", "x")])
        store.log_batch(run, metrics=metrics[3:], params=[], tags=[])
    (ours, our_run), (theirs, their_run) = stores
    mine, other = ours.get_run(our_run).data, theirs.get_run(their_run).data
    assert mine.params == other.params == {"lr": "0.1"}
    assert mine.tags["t"] == other.tags["t"] == "x"
    assert set(mine.metrics) == set(other.metrics) == {"loss", "norm", "acc"}
    for key in other.metrics:
        def history(store, run):
            return sorted((m.step, m.timestamp, "nan" if math.isnan(m.value) else m.value)
                          for m in store.get_metric_history(run, key))
        assert history(ours, our_run) == history(theirs, their_run), key


def test_a_row_mlflow_refuses_is_refused_with_its_error(stores):
    bad = [Metric("fine", 1.0, 1000, 0), Metric("../escape", 1.0, 1000, 0)]
    errors = []
    for store, run in stores:
        with pytest.raises(MlflowException) as err:
            store.log_batch(run, metrics=bad, params=[], tags=[])
        errors.append((err.value.error_code, err.value.message))
        assert store.get_run(run).data.metrics == {}
    assert errors[0] == errors[1]


def test_more_than_mlflows_batch_limit_is_refused_as_mlflow_refuses_it(stores):
    many = [Metric("m", 1.0, 1000, i) for i in range(1001)]
    codes = []
    for store, run in stores:
        with pytest.raises(MlflowException) as err:
            store.log_batch(run, metrics=many, params=[], tags=[])
        codes.append(err.value.error_code)
    assert codes[0] == codes[1] == "INVALID_PARAMETER_VALUE"
