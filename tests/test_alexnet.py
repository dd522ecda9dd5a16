"""AlexNet (seed 001): shapes and parameter counts by hand, options, init, and the preset's
sweep end to end (sigma=1 diverges at the first step, sigma=0.01 trains) on a tiny budget."""
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from mlflow.tracking import MlflowClient

import models
from conftest import ROOT, compose_cfg
from models.alexnet import LocalResponseNorm
from runner import data
from runner.config import (ALEXNET_MIN_INPUT_SIZE, ALEXNET_NORMS, ConfigError,
                           alexnet_pool5_side, validate)
from runner.engine import seed_everything
from runner.tasks.image import PER_EXAMPLE_LOSSES

INFO = data.DataInfo(input_shape=(28, 28, 1), num_classes=10, source="test")
SMALL = ("model.input_size=67", "model.fc_units=64")


def build(*overrides, seed=0):
    cfg = compose_cfg("model=alexnet", *overrides)
    validate(cfg)  # what the CLI does before any model is built
    keras.utils.set_random_seed(seed)
    return models.build(cfg.model, INFO)


def kernel_size(model, layer):
    return int(np.prod(model.get_layer(layer).kernel.shape))


def params_by_hand(pool5, fc, groups=1, classes=10):
    """conv1 11x11x1x96, conv2 5x5x96x256, conv3 3x3x256x384, conv4/conv5 3x3 on
    384/groups input channels, then fc pool5^2*256 -> fc -> fc -> classes; weights + biases."""
    convs = [(11 * 11 * 1, 96), (5 * 5 * 96, 256), (3 * 3 * 256, 384),
             (3 * 3 * 384 // groups, 384), (3 * 3 * 384 // groups, 256)]
    dense = [(pool5 * pool5 * 256, fc), (fc, fc), (fc, classes)]
    return sum(n_in * n_out + n_out for n_in, n_out in convs + dense)


# ---------------------------------------------------------------- shapes and parameters

@pytest.mark.parametrize("size, pool5, fc", [
    (99, 2, 4096),
    (67, 1, 64),  # the smallest resize; what the end-to-end test runs
])
def test_output_shape_and_parameter_count_by_hand(size, pool5, fc):
    model = build(f"model.input_size={size}", f"model.fc_units={fc}")
    assert model.count_params() == params_by_hand(pool5, fc)
    assert tuple(model.get_layer("resize").output.shape) == (None, size, size, 1)
    assert tuple(model.get_layer("pool5").output.shape) == (None, pool5, pool5, 256)
    assert alexnet_pool5_side(size) == pool5  # config.py's arithmetic matches the built model
    logits = model(np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32))
    assert tuple(logits.shape) == (2, 10) and np.all(np.isfinite(logits.numpy()))


def test_the_write_ups_feature_map_sizes_and_parameters_at_227():
    model = build()  # conf/model/alexnet.yaml: input_size 227, fc 4096
    sides = {name: model.get_layer(name).output.shape[1]
             for name in ("conv1", "pool1", "conv2", "pool2", "conv5", "pool5")}
    assert sides == {"conv1": 55, "pool1": 27, "conv2": 27, "pool2": 13, "conv5": 13, "pool5": 6}
    assert model.count_params() == params_by_hand(6, 4096) == 58_299_082  # fc1: 6*6*256 in
    assert tuple(model.output_shape) == (None, 10)


def test_min_input_size_is_where_pool5_becomes_empty():
    assert ALEXNET_MIN_INPUT_SIZE == 67
    assert alexnet_pool5_side(66) == 0 and alexnet_pool5_side(67) == 1
    assert alexnet_pool5_side(227) == 6
    # The arithmetic in runner.config agrees with Keras at the edge: pool5 is 1x1 at 67.
    model = build(f"model.input_size={ALEXNET_MIN_INPUT_SIZE}", "model.fc_units=8")
    assert tuple(model.get_layer("pool5").output.shape) == (None, 1, 1, 256)


def test_groups_2_halves_conv4_and_conv5_kernels_only():
    one, two = build(*SMALL), build(*SMALL, "model.groups=2")
    for layer in ("conv4", "conv5"):
        assert kernel_size(two, layer) * 2 == kernel_size(one, layer)
        assert two.get_layer(layer).groups == 2
    for layer in ("conv1", "conv2", "conv3", "fc1", "fc2", "logits"):
        assert kernel_size(two, layer) == kernel_size(one, layer)
    assert two.count_params() == params_by_hand(1, 64, groups=2)


def test_groups_2_keeps_the_two_halves_apart():
    # conv4's first 192 output channels must not depend on conv3's last 192 channels.
    model = build(*SMALL, "model.groups=2")
    conv4 = model.get_layer("conv4")
    x = tf.random.normal([1, 3, 3, 384])
    changed = tf.concat([x[..., :192], x[..., 192:] + 1.0], axis=-1)
    before, after = conv4(x).numpy(), conv4(changed).numpy()
    np.testing.assert_allclose(before[..., :192], after[..., :192], rtol=1e-5, atol=1e-6)
    assert not np.allclose(before[..., 192:], after[..., 192:])


def layer_types(model):
    return [type(layer).__name__ for layer in model.layers]


def test_norm_options_pick_lrn_batchnorm_or_neither():
    assert set(ALEXNET_NORMS) == {"lrn", "batch", "none"}  # each one is checked below
    lrn, batch, none = (build(*SMALL, f"model.norm={n}") for n in ("lrn", "batch", "none"))
    assert layer_types(lrn).count("LocalResponseNorm") == 2  # after conv1 and conv2
    assert "BatchNormalization" not in layer_types(lrn)
    # Batch norm after each of the 5 convs and 2 hidden fcs, before the ReLU; no LRN.
    assert layer_types(batch).count("BatchNormalization") == 7
    assert "LocalResponseNorm" not in layer_types(batch)
    assert batch.get_layer("conv1").activation is keras.activations.linear
    names = [layer.name for layer in batch.layers]
    assert names[names.index("conv1"):names.index("conv1") + 3] == ["conv1", "bn1", "relu1"]
    assert not {"LocalResponseNorm", "BatchNormalization"} & set(layer_types(none))
    assert none.count_params() == lrn.count_params() == params_by_hand(1, 64)
    bn_params = 4 * (96 + 256 + 384 + 384 + 256 + 64 + 64)  # gamma, beta, moving mean/var
    assert batch.count_params() == params_by_hand(1, 64) + bn_params


def test_lrn_layer_matches_the_formula():
    # b_c = a_c / (bias + alpha * sum_{|d - c| <= 2} a_d^2) ** beta, the write-up's constants.
    a = np.random.default_rng(1).normal(0, 30, size=(1, 2, 2, 7)).astype(np.float32)
    squares = np.square(a)
    window = np.stack([squares[..., max(0, c - 2):c + 3].sum(-1) for c in range(7)], -1)
    expected = a / (1.0 + 2e-05 * window) ** 0.75
    np.testing.assert_allclose(LocalResponseNorm()(a).numpy(), expected, rtol=1e-5)


# ---------------------------------------------------------------- initialisation

def test_default_init_is_the_write_ups_experiment_2():
    model = build(*SMALL)
    w = model.get_layer("conv3").kernel.numpy().ravel()
    truncated = math.sqrt(1 - 4 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(math.sqrt(2)))
    assert np.abs(w).max() <= 0.02 + 1e-7  # truncated at 2 std
    assert w.std() == pytest.approx(0.01 * truncated, rel=0.03)
    b = np.concatenate([model.get_layer(n).bias.numpy() for n in ("conv2", "conv3", "conv4")])
    assert b.mean() == pytest.approx(0.005, abs=0.01)
    assert np.abs(b - 0.005).max() <= 0.2 + 1e-6 and b.std() > 0.05  # drawn, not constant


def test_constant_biases_when_bias_init_std_is_0():
    model = build(*SMALL, "model.bias_init=0.1", "model.bias_init_std=0")
    for layer in ("conv1", "conv5", "fc1", "logits"):
        np.testing.assert_allclose(model.get_layer(layer).bias.numpy(), 0.1)


def test_models_without_bias_init_std_keep_constant_biases():
    keras.utils.set_random_seed(0)
    lenet = models.build(compose_cfg("model=lenet", "model.bias_init=0.2").model, INFO)
    np.testing.assert_allclose(lenet.get_layer("fc1").bias.numpy(), 0.2)


@pytest.mark.parametrize("bias_overrides", [
    ("model.bias_init=0.1", "model.bias_init_std=0"),  # experiment 1 exactly
    (),  # the sweep's sigma=1 job keeps experiment 2's biases
])
def test_sigma_1_makes_the_naive_loss_nan_on_the_first_batch(bias_overrides):
    # Logits of ~1e9 make softmax underflow to exactly 0, and 0 * log(0) = NaN.
    cfg = compose_cfg("experiment=alexnet_mnist", *SMALL, "model.init_std=1", *bias_overrides)
    seed_everything(cfg.seed)
    splits = data.load(cfg.dataset, cfg.seed)
    model = models.build(cfg.model, splits.info)
    logits = model(splits.train.x[:50], training=True)
    assert float(tf.reduce_max(tf.abs(logits))) > 1e6
    losses = PER_EXAMPLE_LOSSES[cfg.train.loss](splits.train.y[:50], logits)
    assert math.isnan(float(tf.reduce_mean(losses)))


# ---------------------------------------------------------------- bad options

@pytest.mark.parametrize("override, option", [
    ("model.groups=3", "model.groups"),
    ("model.groups=0", "model.groups"),
    ("model.norm=layer", "model.norm"),
    (f"model.input_size={ALEXNET_MIN_INPUT_SIZE - 1}", "model.input_size"),
    ("model.dropout=1", "model.dropout"),
    ("model.fc_units=0", "model.fc_units"),
    ("model.bias_init_std=-0.1", "model.bias_init_std"),
    ("model.init_std=0", "model.init_std"),
    ("model.init=xavier", "model.init"),
])
def test_bad_options_raise_one_line_naming_the_option(override, option):
    with pytest.raises(ConfigError) as error:
        validate(compose_cfg("model=alexnet", override))  # before any model is built
    message = str(error.value)
    assert message.startswith(option) and "\n" not in message
    assert "e.g." in message or "use one of" in message


# ---------------------------------------------------------------- end to end

def run_cli(args, cwd, store):
    """`python -m runner ARGS` in `cwd` (as in tests/test_e2e.py); never raises."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), KERAS_HOME=str(cwd / "keras_home"))
    return subprocess.run([sys.executable, "-m", "runner", *args,
                           f"mlflow.tracking_uri={store}"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # tens of seconds: `make test-slow`
def test_preset_sweep_sigma_1_diverges_sigma_001_trains(tmp_path):
    # The preset's own sweep (model.init_std=1,0.01) at the smallest resize, 4 steps of 50.
    store = f"sqlite:///{tmp_path}/mlflow.db"
    tiny = [*SMALL, "train.epochs=null", "train.steps=4", "train.batch_size=50",
            "train.eval_every=2", "train.eval_size=100", "train.eval_batch_size=500"]
    done = run_cli(["-m", "experiment=alexnet_mnist", *tiny], tmp_path, store)
    assert done.returncode == 0, done.stderr[-3000:]

    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("sweeplab").experiment_id])
    children = {float(r.data.params["model.init_std"]): r for r in runs
                if "mlflow.parentRunId" in r.data.tags}
    assert set(children) == {1.0, 0.01}
    for run in children.values():
        assert run.info.status == "FINISHED"
        assert run.data.params["model.name"] == "alexnet"
        assert run.data.params["model.input_size"] == "67"
        assert run.data.params["train.loss"] == "cross_entropy_naive"
        assert run.data.params["train.loss_reduction"] == "sum"
        assert run.data.params["optimizer.name"] == "sgd"
        assert "plots/curves.png" in {a.path for a in client.list_artifacts(run.info.run_id,
                                                                            "plots")}

    diverged = children[1.0]  # NaN loss on the very first batch, like the write-up's exp 1
    assert diverged.data.tags["outcome"] == "diverged"
    assert diverged.data.metrics["diverged_at_step"] == 1
    assert "test_acc" not in diverged.data.metrics

    ok = children[0.01]
    assert ok.data.tags["outcome"] in ("ok", "collapsed")  # 4 steps: finite, maybe still chance
    assert "diverged_at_step" not in ok.data.metrics
    for key in ("val_loss", "val_acc", "test_loss", "test_acc", "train_loss", "lr"):
        assert key in ok.data.metrics, key
    history = {key: sorted((m.step, m.value) for m in
                           client.get_metric_history(ok.info.run_id, key))
               for key in ("train_loss", "val_loss", "lr")}
    assert [s for s, _ in history["train_loss"]] == [1, 2, 3, 4]
    assert [s for s, _ in history["val_loss"]] == [0, 2, 4]
    assert all(v == pytest.approx(1e-4) for _, v in history["lr"])
    # Small weights: the softmax is near uniform, so the loss per example sits at ln 10,
    # as in the write-up's first epochs ("loss 2299" summed over 1000 test images).
    for _, value in history["train_loss"] + history["val_loss"]:
        assert value == pytest.approx(math.log(10), abs=0.05)
