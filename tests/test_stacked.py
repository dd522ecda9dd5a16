"""Jobs stacked into one network (runner/stacked.py) train exactly as they train alone."""
import keras
import numpy as np
import pytest

from conftest import compose_cfg
from runner import data
from runner.config import validate
from runner.stacked import supports
from runner.tasks import image

LENET = ("experiment=lenet_clip", "dataset=mnist_5k", "train.eval_every=50")
MLP = ("model=mlp", "model.hidden=[32,16]", "dataset=mnist_5k", "train.batch_size=16",
       "train.eval_every=30")


def train(cfgs, steps):
    """Intervals of `steps` updates and test (loss, acc), as image.run_variants trains them."""
    keras.backend.clear_session()
    for cfg in cfgs:
        validate(cfg)
    splits = data.load(cfgs[0].dataset, cfgs[0].seed)
    plan = image.plan(cfgs[0].train, len(splits.train.y))
    batches = image.ShuffledBatches(splits.train, cfgs[0].train.batch_size, cfgs[0].seed)
    variants = [image.build_variant(cfg, splits, plan, batches) for cfg in cfgs]
    train_steps, evaluate, _ = image.engine(cfgs, variants, batches)
    intervals = train_steps(steps)
    train_steps.finish()
    return intervals, evaluate(splits.test.x, splits.test.y), [v.model for v in variants]


def assert_same_as_alone(cfgs, steps):
    together, tests, models = train(cfgs, steps)
    for cfg, stacked, test, model in zip(cfgs, together, tests, models):
        (alone,), (solo_test,), (solo_model,) = train([cfg], steps)
        assert stacked.applied == alone.applied and stacked.diverged == alone.diverged
        np.testing.assert_allclose(stacked.series["train_loss"], alone.series["train_loss"],
                                   rtol=1e-4)
        for key in ("grad_norm", "grad_norm_clipped", "lr"):
            np.testing.assert_allclose(stacked.series[key], alone.series[key], rtol=1e-3,
                                       err_msg=key)
        # An element on the clip boundary may fall either side: one in LeNet's 61,706 is 1.6e-5.
        np.testing.assert_allclose(stacked.series["clip_fraction"], alone.series["clip_fraction"],
                                   atol=1e-4)
        assert test == pytest.approx(solo_test, rel=1e-4)
        for mine, theirs in zip(model.get_weights(), solo_model.get_weights()):
            np.testing.assert_allclose(mine, theirs, rtol=1e-2, atol=1e-4)
    return together


@pytest.mark.parametrize("mode", ["none", "value", "norm", "global_norm"])
def test_seed_000_jobs_stacked_equal_their_solo_runs(mode):
    # The mission's sweep: one clipping mode at several learning rates, 50 steps of LeNet.
    cfgs = [compose_cfg(*LENET, f"clipping={mode}", f"optimizer.lr={lr}", "clipping.clip_norm=1")
            for lr in (0.01, 0.0005)]
    together = assert_same_as_alone(cfgs, 50)
    assert not np.allclose(together[0].series["train_loss"], together[1].series["train_loss"])


@pytest.mark.parametrize("optimizer", [
    ("optimizer=sgd", "optimizer.lr=0.05"),
    ("optimizer=momentum", "optimizer.lr=0.01", "optimizer.nesterov=true"),
    ("optimizer=momentum", "optimizer.lr=0.01"),
    ("optimizer=rmsprop", "optimizer.lr=0.0005"),
    ("optimizer=adam", "optimizer.lr=0.001", "optimizer.beta1=0.8"),
], ids=lambda o: " ".join(o))
def test_every_optimizer_and_penalty_stacked_equals_solo(optimizer):
    cfgs = [compose_cfg(*MLP, *optimizer, *job) for job in (
        ("regularizer=l2", "regularizer.strength=0.001", "clipping=norm", "clipping.clip_norm=1"),
        ("regularizer=l1", "regularizer.strength=0.0001", "regularizer.include_biases=false"),
        ("regularizer=none", "clipping=value", "clipping.min=-0.01", "clipping.max=0.01"))]
    assert_same_as_alone(cfgs, 30)


def test_a_diverging_job_is_masked_and_the_others_go_on():
    # Seed 002 without clipping explodes within a few steps; with global-norm 15 it trains.
    cfgs = [compose_cfg("experiment=mlp_explode", f"clipping={mode}",
                        "train.eval_every=20") for mode in ("none", "global_norm")]
    unclipped, clipped = assert_same_as_alone(cfgs, 20)
    assert unclipped.diverged and 0 < unclipped.applied < 20
    assert not clipped.diverged and clipped.applied == 20


def test_what_cannot_stack_says_why():
    assert supports(compose_cfg("experiment=lenet_clip")) is None
    assert supports(compose_cfg("model=mlp")) is None
    assert "one per graph" in supports(compose_cfg("experiment=alexnet_mnist"))
    assert "LSTM" in supports(compose_cfg("experiment=ptb_lstm"))
