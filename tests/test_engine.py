"""The engine (runner/engine.py): the divergence guard, the per-step series, and
`diverged_at_step` independent of how often the task evaluates."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import compose_cfg, runs_of
from runner import engine
from runner.engine import seed_everything
from runner.nets import KerasNet
from runner.tasks import image
from runner.tracking import JobContext


class FixedBatch:
    """A batch source that always yields the same inputs."""

    def __init__(self, x):
        self.x = tf.constant(x, tf.float32)

    def next(self):
        return self.x, tf.zeros((1,), tf.int32)


def sqrt_objective(net, batch):
    # sqrt(w * x) at w = 0: the loss is a finite 0, its gradient +inf.
    x, _ = batch
    loss = tf.reduce_sum(tf.sqrt(net(x)), axis=[1, 2])
    return loss, loss, lambda applied: None


def square_objective(net, batch):
    x, _ = batch
    loss = tf.reduce_sum(tf.square(net(x) - 1.0), axis=[1, 2])
    return loss, loss, lambda applied: None


def scalar_model(initial):
    return keras.Sequential([keras.Input((1,)),
                             keras.layers.Dense(1, use_bias=False,
                                                kernel_initializer=keras.initializers.Constant(
                                                    initial))])


def train_steps(model, objective, batches, capacity, lr=0.1):
    cfg = compose_cfg("optimizer=sgd", f"optimizer.lr={lr}")
    net = KerasNet(model)
    update = engine.make_update(net, [cfg], steps_per_epoch=1, steps=100)
    return engine.make_train_steps(net, update, batches, objective, capacity=capacity)


def test_an_update_with_a_finite_loss_but_an_inf_gradient_is_not_applied():
    model = scalar_model(0.0)
    (interval,) = train_steps(model, sqrt_objective, FixedBatch([[1.0]]), 5)(5)
    assert interval.diverged and interval.applied == 0
    assert float(model.trainable_variables[0].numpy().item()) == 0.0  # the weight never moved


def test_a_finite_run_trains_every_step_and_reports_each():
    model = scalar_model(0.0)
    (interval,) = train_steps(model, square_objective, FixedBatch([[1.0]]), 10)(10)
    assert not interval.diverged and interval.applied == 10
    # SGD on (w - 1)^2 from 0 with lr 0.1: w_k = 1 - 0.8^k, loss before step k (1 - w)^2.
    assert float(model.trainable_variables[0].numpy().item()) == pytest.approx(1 - 0.8 ** 10,
                                                                               1e-5)
    np.testing.assert_allclose(interval.series["train_loss"], 0.64 ** np.arange(10), rtol=1e-5)
    assert interval.var_norms.shape == (10, 1)


def test_a_diverged_job_stops_the_call_and_trains_no_further():
    model = scalar_model(0.0)
    steps = train_steps(model, sqrt_objective, FixedBatch([[1.0]]), 5)
    (first,) = steps(5)
    (second,) = steps(5)
    assert first.diverged and not second.diverged  # diverged once, at its first bad step
    assert second.applied == 0 and float(model.trainable_variables[0].numpy().item()) == 0.0


def diverged_at(tmp_path, eval_every):
    store = f"sqlite:///{tmp_path}/mlflow-{eval_every}.db"
    cfg = compose_cfg("experiment=mlp_explode", "clipping=none", "train.steps=40",
                      f"train.eval_every={eval_every}", "train.eval_size=100",
                      f"mlflow.tracking_uri={store}")
    seed_everything(cfg.seed)
    assert image.run(cfg, JobContext()) == float("inf")
    _, (run,) = runs_of(store)
    assert run.data.tags["outcome"] == "diverged"
    return run.data.metrics["diverged_at_step"]


def test_diverged_at_step_is_the_first_bad_step_whatever_eval_every(tmp_path):
    # Seed 002 without clipping: a step whose loss is still finite has Inf gradients.
    every_step, every_ten = diverged_at(tmp_path, 1), diverged_at(tmp_path, 10)
    assert every_step == every_ten
    assert 1 < every_step <= 40


def test_graphs_trained_one_after_another_print_no_retracing_warning(caplog):
    # A worker trains graph after graph; each traces its own loop once. TensorFlow counts
    # those first traces together and warned of "retracing" in every multi-graph sweep.
    with caplog.at_level("WARNING", logger="tensorflow"):
        for _ in range(7):
            train_steps(scalar_model(0.0), square_objective, FixedBatch([[1.0]]), 2)(2)
        tf.get_logger().warning("another TensorFlow warning")
    messages = [r.getMessage() for r in caplog.records if r.name == "tensorflow"]
    assert messages == ["another TensorFlow warning"]  # the filter keeps every other one
