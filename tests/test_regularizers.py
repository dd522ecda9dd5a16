"""runner.regularizers.penalty on small hand-computed variables."""
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from runner import regularizers
from runner.regularizers import TERMS, PenaltyTable


def penalty(variables, node):
    """One job's penalty: its variables seen as [1, ...] (as the engine sees a solo run)."""
    return regularizers.penalty([tf.convert_to_tensor(v)[None] for v in variables],
                                PenaltyTable([node]))[0]

# Two weight matrices and one bias vector with easy numbers.
W1 = [[1.0, -2.0], [3.0, 0.5]]  # squares 1 + 4 + 9 + 0.25 = 14.25, |.| 6.5
B1 = [1.0, -1.0]  # squares 2, |.| 2
W2 = [[-0.5], [2.0]]  # squares 0.25 + 4 = 4.25, |.| 2.5


@pytest.fixture
def variables():
    return [tf.Variable(W1, name="w1"), tf.Variable(B1, name="b1"), tf.Variable(W2, name="w2")]


def cfg(name, strength=0.1, include_biases=True):
    return SimpleNamespace(name=name, strength=strength, include_biases=include_biases)


def test_every_option_has_a_penalty():
    assert set(TERMS) == {"none", "l1", "l2"}


def test_jobs_of_one_graph_get_their_own_penalties(variables):
    nodes = [cfg("l2"), cfg("l1", strength=0.2, include_biases=False), cfg("none")]
    stacked = [tf.stack([tf.convert_to_tensor(v)] * 3) for v in variables]
    together = regularizers.penalty(stacked, PenaltyTable(nodes)).numpy()
    np.testing.assert_allclose(together, [float(penalty(variables, n)) for n in nodes], rtol=1e-6)


def test_l2_with_biases_by_hand(variables):
    # 0.1 * (14.25 + 2 + 4.25) / 2
    assert float(penalty(variables, cfg("l2"))) == pytest.approx(1.025)


def test_l2_without_biases_by_hand(variables):
    # 0.1 * (14.25 + 4.25) / 2: the 1-D bias is left out
    assert float(penalty(variables, cfg("l2", include_biases=False))) == pytest.approx(0.925)


def test_l2_equals_strength_times_sum_of_tf_l2_loss(variables):
    strength = 0.0005
    expected = strength * sum(float(tf.nn.l2_loss(v)) for v in variables)
    assert float(penalty(variables, cfg("l2", strength))) == pytest.approx(expected, rel=1e-6)


def test_l1_by_hand(variables):
    assert float(penalty(variables, cfg("l1"))) == pytest.approx(0.1 * (6.5 + 2 + 2.5))
    assert float(penalty(variables, cfg("l1", include_biases=False))) == pytest.approx(
        0.1 * (6.5 + 2.5))


@pytest.mark.parametrize("include_biases", [True, False])
def test_none_is_zero(variables, include_biases):
    assert float(penalty(variables, cfg("none", include_biases=include_biases))) == 0.0


@pytest.mark.parametrize("name", ["l1", "l2"])
def test_only_biases_and_biases_excluded_is_zero(name):
    assert float(penalty([tf.Variable(B1)], cfg(name, include_biases=False))) == 0.0


def test_strength_scales_linearly(variables):
    small = float(penalty(variables, cfg("l2", strength=0.01)))
    large = float(penalty(variables, cfg("l2", strength=0.03)))
    assert large == pytest.approx(3 * small)


def test_l2_gradient_is_strength_times_weights(variables):
    # d/dw strength * w**2 / 2 = strength * w; an excluded bias gets no gradient at all.
    with tf.GradientTape() as tape:
        value = penalty(variables, cfg("l2", strength=0.1, include_biases=False))
    grads = tape.gradient(value, variables)
    np.testing.assert_allclose(grads[0].numpy(), 0.1 * np.array(W1), rtol=1e-6)
    assert not np.any(grads[1].numpy())
    np.testing.assert_allclose(grads[2].numpy(), 0.1 * np.array(W2), rtol=1e-6)


def test_l1_gradient_is_strength_times_sign(variables):
    with tf.GradientTape() as tape:
        value = penalty(variables, cfg("l1", strength=0.2))
    grads = tape.gradient(value, variables)
    for g, v in zip(grads, (W1, B1, W2)):
        np.testing.assert_allclose(g.numpy(), 0.2 * np.sign(v), rtol=1e-6)


def test_on_a_keras_layers_variables():
    # The train step passes model.trainable_variables (Keras variables): kernel 2-D, bias 1-D.
    layer = keras.layers.Dense(3, bias_initializer="ones")
    layer.build((None, 4))
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
    with_b = float(penalty(layer.trainable_variables, cfg("l2", strength=0.5)))
    without_b = float(penalty(layer.trainable_variables, cfg("l2", strength=0.5,
                                                             include_biases=False)))
    assert with_b == pytest.approx(0.5 * (np.sum(kernel ** 2) + np.sum(bias ** 2)) / 2, rel=1e-5)
    assert without_b == pytest.approx(0.5 * np.sum(kernel ** 2) / 2, rel=1e-5)
    assert with_b - without_b == pytest.approx(0.5 * 3 / 2, rel=1e-5)  # three biases of 1
