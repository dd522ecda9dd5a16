"""models.build: shapes, parameter counts by hand, initialisers, seeding; bad model options are
rejected by runner.config.validate before any builder runs."""
import math
import re

import keras
import numpy as np
import pytest

import models
from conftest import compose_cfg
from runner.config import ACTIVATIONS, INITS, ConfigError, validate
from runner.data import DataInfo

INFO = DataInfo(input_shape=(28, 28, 1), num_classes=10, source="test")


def model_cfg(*overrides):
    cfg = compose_cfg(*overrides)
    validate(cfg)  # what the CLI does before any model is built
    return cfg.model


def build(*overrides, seed=0):
    keras.utils.set_random_seed(seed)
    return models.build(model_cfg(*overrides), INFO)


def kernels(model):
    return [v.numpy() for v in model.trainable_variables if len(v.shape) > 1]


def biases(model):
    return [v.numpy() for v in model.trainable_variables if len(v.shape) == 1]


def dense_params(sizes):
    """Weights plus biases of fully connected layers sizes[0] -> sizes[1] -> ..."""
    return sum(n_in * n_out + n_out for n_in, n_out in zip(sizes, sizes[1:]))


# ---------------------------------------------------------------- LeNet

def test_lenet_parameter_count_by_hand():
    conv1 = 5 * 5 * 1 * 6 + 6  # 28x28 padded to 32x32 -> 28x28x6 -> pool 14x14x6
    conv2 = 5 * 5 * 6 * 16 + 16  # -> 10x10x16 -> pool 5x5x16
    dense = dense_params([5 * 5 * 16, 120, 84, 10])
    assert conv1 + conv2 + dense == 61_706
    model = build("model=lenet")
    assert model.count_params() == conv1 + conv2 + dense
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == 61_706


def test_lenet_output_shape_and_padding():
    model = build("model=lenet")
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    logits = model(x, training=False)
    assert tuple(logits.shape) == (3, 10)
    assert np.all(np.isfinite(logits.numpy()))
    assert tuple(model.get_layer("pad").output.shape) == (None, 32, 32, 1)
    assert tuple(model.get_layer("pool2").output.shape) == (None, 5, 5, 16)


def test_lenet_follows_num_classes():
    keras.utils.set_random_seed(0)
    model = models.build(model_cfg("model=lenet"), DataInfo((28, 28, 1), 7, "test"))
    assert tuple(model(np.zeros((2, 28, 28, 1), np.float32)).shape) == (2, 7)


# ---------------------------------------------------------------- MLP

@pytest.mark.parametrize("hidden", [[512, 256], [32], [64, 32, 16]])
def test_mlp_parameter_count_by_hand(hidden):
    model = build("model=mlp", f"model.hidden=[{','.join(map(str, hidden))}]")
    assert model.count_params() == dense_params([28 * 28, *hidden, 10])
    assert [v.shape[-1] for v in model.trainable_variables if len(v.shape) == 2] == [*hidden, 10]
    logits = model(np.zeros((4, 28, 28, 1), np.float32))
    assert tuple(logits.shape) == (4, 10)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_mlp_activation_is_used(activation):
    model = build("model=mlp", "model.hidden=[8]", f"model.activation={activation}")
    layer = model.get_layer("fc1")
    x = np.linspace(-3, 3, 8, dtype=np.float32)[None, :]
    np.testing.assert_allclose(layer.activation(x), getattr(keras.activations, activation)(x),
                               rtol=1e-6)
    assert model.get_layer("logits").activation is keras.activations.linear


# ---------------------------------------------------------------- initialisers

def truncated_std_factor(k=2.0):
    """Std of a standard normal truncated to [-k, k] (redraws beyond k std)."""
    phi = math.exp(-k * k / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(k / math.sqrt(2))
    return math.sqrt(1 - 2 * k * phi / mass)


def test_truncated_normal_init():
    mean, std = 0.5, 0.05
    model = build("model=lenet", "model.init=truncated_normal", f"model.init_mean={mean}",
                  f"model.init_std={std}", "model.bias_init=0.3")
    for w in kernels(model):
        assert np.all(np.abs(w - mean) <= 2 * std + 1e-6)
    w = np.concatenate([k.ravel() for k in kernels(model)])
    assert w.mean() == pytest.approx(mean, abs=0.1 * std)
    assert w.std() == pytest.approx(std * truncated_std_factor(), rel=0.03)
    for b in biases(model):
        np.testing.assert_array_equal(b, np.float32(0.3))


def test_normal_init_is_not_truncated():
    mean, std = -0.2, 0.1
    model = build("model=lenet", "model.init=normal", f"model.init_mean={mean}",
                  f"model.init_std={std}")
    w = np.concatenate([k.ravel() for k in kernels(model)])
    assert w.mean() == pytest.approx(mean, abs=0.005)
    assert w.std() == pytest.approx(std, rel=0.03)
    # A normal puts 4.55% of its mass beyond 2 std (the truncated one puts none there).
    beyond = np.mean(np.abs(w - mean) > 2 * std)
    assert beyond == pytest.approx(1 - math.erf(2 / math.sqrt(2)), abs=0.005)
    for b in biases(model):
        np.testing.assert_array_equal(b, 0.0)


def test_uniform_init_covers_biases():
    model = build("model=mlp", "model.hidden=[256,128]", "model.init=uniform")
    for v in model.trainable_variables:
        values = v.numpy()
        assert values.min() >= 0.0 and values.max() < 1.0, v.path
    w = np.concatenate([k.ravel() for k in kernels(model)])
    assert w.mean() == pytest.approx(0.5, abs=0.01)
    b = np.concatenate(biases(model))
    assert len(np.unique(b)) > len(b) // 2  # drawn, not a constant


def test_glorot_init():
    model = build("model=mlp", "model.hidden=[300,100]", "model.init=glorot",
                  "model.bias_init=0.1")
    for w in kernels(model):
        fan_in, fan_out = w.shape
        limit = math.sqrt(6 / (fan_in + fan_out))
        assert np.abs(w).max() <= limit
        assert np.abs(w).max() > 0.95 * limit  # uniform on [-limit, limit]
        assert w.std() == pytest.approx(limit / math.sqrt(3), rel=0.05)
    for b in biases(model):
        np.testing.assert_allclose(b, 0.1)


@pytest.mark.parametrize("init", INITS)
def test_same_seed_same_weights_other_seed_other_weights(init):
    overrides = ("model=mlp", "model.hidden=[16,16]", f"model.init={init}")
    first = build(*overrides, seed=3)
    again = build(*overrides, seed=3)
    other = build(*overrides, seed=4)
    for a, b in zip(first.trainable_variables, again.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(kernels(first)[0], kernels(other)[0])


@pytest.mark.parametrize("init", INITS)
def test_layers_get_independent_draws(init):
    # Same-shaped layers must not share values (one shared unseeded Keras initialiser did that).
    model = build("model=mlp", "model.hidden=[16,16,16]", f"model.init={init}")
    fc2, fc3 = model.get_layer("fc2").kernel.numpy(), model.get_layer("fc3").kernel.numpy()
    assert not np.array_equal(fc2, fc3)
    lenet = build("model=lenet", f"model.init={init}")
    conv1, conv2 = lenet.get_layer("conv1").kernel.numpy(), lenet.get_layer("conv2").kernel.numpy()
    assert not np.allclose(conv1.ravel(), conv2.ravel()[:conv1.size])
    if init == "uniform":
        b1, b2 = model.get_layer("fc1").bias.numpy(), model.get_layer("fc2").bias.numpy()
        assert not np.array_equal(b1, b2)


# ---------------------------------------------------------------- bad options

def rejected(*overrides):
    """validate's one-line message for a composed config (no model is built)."""
    with pytest.raises(ConfigError) as error:
        validate(compose_cfg(*overrides))
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("model", ["lenet", "mlp"])
def test_bad_init_names_the_option(model):
    assert re.match(r"model\.init: .*xavier.*use one of", rejected(f"model={model}",
                                                                   "model.init=xavier"))


@pytest.mark.parametrize("std", [0.0, -0.1])
def test_non_positive_std_names_the_option(std):
    message = rejected("model=lenet", "model.init=normal", f"model.init_std={std}")
    assert message.startswith("model.init_std:") and "e.g. model.init_std=" in message


def test_bad_activation_names_the_option():
    assert re.match(r"model\.activation: .*swish", rejected("model=mlp", "model.activation=swish"))


@pytest.mark.parametrize("hidden", ["[]", "[16,0]", "[-4]"])
def test_bad_hidden_names_the_option(hidden):
    assert rejected("model=mlp", f"model.hidden={hidden}").startswith("model.hidden:")


def test_unknown_model_names_the_option():
    assert re.match(r"model\.name: .*resnet", rejected("model=mlp", "model.name=resnet"))


def test_builders_check_nothing_themselves():
    # One place checks: a builder handed an unvalidated bad value does not raise ConfigError.
    node = compose_cfg("model=mlp", "model.hidden=[8]").model
    node.name = "resnet"
    with pytest.raises(KeyError):
        models.build(node, INFO)
