"""runner.clipping.clip against the tf.clip_by_* reference ops and numpy-computed stats."""
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from runner import clipping
from runner.clipping import MODES, ClipTable


def clip(grads, node):
    """One job's clipping: its gradients seen as [1, ...] (as the engine sees a solo run)."""
    clipped, stats = clipping.clip([tf.convert_to_tensor(g)[None] for g in grads],
                                   ClipTable([node]))
    return [c[0] for c in clipped], {k: v[0] for k, v in stats.items()}

SHAPES = [(3, 4), (5,), (2, 3, 4), (1,), (6, 1)]


def random_grads(seed, scales=(0.1, 3.0, 0.5, 2.0, 1.0)):
    """Gradients of several shapes and very different sizes (so some get clipped, some not)."""
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, s, size=shape).astype(np.float32) for shape, s in zip(SHAPES, scales)]


def cfg(name, **fields):
    base = dict(name=name, min=-1.0, max=1.0, clip_norm=5.0)
    return SimpleNamespace(**{**base, **fields})


def np_norms(arrays):
    per_var = np.array([np.sqrt(np.sum(a.astype(np.float64) ** 2)) for a in arrays])
    return per_var, float(np.sqrt(np.sum(per_var ** 2)))


def run_clip(arrays, node):
    clipped, stats = clip([tf.constant(a) for a in arrays], node)
    return [c.numpy() for c in clipped], {k: v.numpy() for k, v in stats.items()}


def assert_stats(before, after, stats):
    """The norm stats describe `before` and `after` (numpy, float64)."""
    var_norms, grad_norm = np_norms(before)
    var_norms_clipped, grad_norm_clipped = np_norms(after)
    np.testing.assert_allclose(stats["grad_norm"], grad_norm, rtol=1e-5)
    np.testing.assert_allclose(stats["grad_norm_clipped"], grad_norm_clipped, rtol=1e-5)
    assert stats["var_norms"].shape == (len(before),)
    assert stats["var_norms_clipped"].shape == (len(before),)
    np.testing.assert_allclose(stats["var_norms"], var_norms, rtol=1e-5)
    np.testing.assert_allclose(stats["var_norms_clipped"], var_norms_clipped, rtol=1e-5)


def test_every_mode_has_a_clipper():
    assert set(MODES) == {"none", "value", "norm", "global_norm"}


def test_jobs_of_one_graph_clip_their_own_way():
    nodes = [cfg("none"), cfg("value", min=-0.5, max=0.5), cfg("norm", clip_norm=1.0),
             cfg("global_norm", clip_norm=1.0)]
    grads = random_grads(3)
    stacked = [tf.constant(np.stack([g] * len(nodes))) for g in grads]
    together, stats = clipping.clip(stacked, ClipTable(nodes))
    for j, node in enumerate(nodes):
        alone, alone_stats = run_clip(grads, node)
        for t, a in zip(together, alone):
            np.testing.assert_allclose(t.numpy()[j], a, rtol=1e-6)
        for key, value in alone_stats.items():
            np.testing.assert_allclose(stats[key].numpy()[j], value, rtol=1e-6, err_msg=key)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_none_returns_the_gradients_unchanged(seed):
    grads = random_grads(seed)
    clipped, stats = run_clip(grads, cfg("none"))
    assert len(clipped) == len(grads)
    for c, g in zip(clipped, grads):
        np.testing.assert_array_equal(c, g)
    assert stats["clip_fraction"] == 0.0
    assert_stats(grads, grads, stats)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("low,high", [(-1.0, 1.0), (-0.05, 0.2), (-10.0, 10.0)])
def test_value_matches_tf_clip_by_value(seed, low, high):
    grads = random_grads(seed)
    clipped, stats = run_clip(grads, cfg("value", min=low, max=high))
    reference = [tf.clip_by_value(g, low, high).numpy() for g in grads]
    for c, r, g in zip(clipped, reference, grads):
        assert c.shape == g.shape
        np.testing.assert_array_equal(c, r)
        assert c.min() >= low and c.max() <= high
    # Share of elements outside [min, max], i.e. elements the clip changed.
    flat = np.concatenate([g.ravel() for g in grads])
    changed = np.concatenate([(c != g).ravel() for c, g in zip(clipped, grads)])
    expected_fraction = np.mean((flat < low) | (flat > high))
    assert np.mean(changed) == pytest.approx(expected_fraction)
    assert stats["clip_fraction"] == pytest.approx(expected_fraction, abs=1e-7)
    assert_stats(grads, reference, stats)


def test_value_fraction_by_hand():
    # 3 of the 6 elements are outside [-1, 1]; the boundary values -1 and 1 are not clipped.
    grads = [np.array([[0.5, -2.0], [1.0, 3.0]], np.float32), np.array([-1.0, -1.5], np.float32)]
    clipped, stats = run_clip(grads, cfg("value", min=-1.0, max=1.0))
    np.testing.assert_array_equal(clipped[0], [[0.5, -1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(clipped[1], [-1.0, -1.0])
    assert stats["clip_fraction"] == pytest.approx(3 / 6)
    assert stats["grad_norm"] == pytest.approx(np.sqrt(0.25 + 4 + 1 + 9 + 1 + 2.25))
    assert stats["grad_norm_clipped"] == pytest.approx(np.sqrt(0.25 + 1 + 1 + 1 + 1 + 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_norm_matches_tf_clip_by_norm(seed):
    grads = random_grads(seed)
    var_norms, _ = np_norms(grads)
    # Between the smallest and the largest tensor norm: some tensors are cut, some are not.
    clip_norm = float(np.median(var_norms))
    clipped, stats = run_clip(grads, cfg("norm", clip_norm=clip_norm))
    reference = [tf.clip_by_norm(g, clip_norm).numpy() for g in grads]
    for c, r in zip(clipped, reference):
        np.testing.assert_allclose(c, r, rtol=1e-6, atol=1e-7)
    expected_fraction = np.mean(var_norms > clip_norm)
    assert 0 < expected_fraction < 1
    assert stats["clip_fraction"] == pytest.approx(expected_fraction)
    assert_stats(grads, reference, stats)
    # Each cut tensor now has norm clip_norm; the others kept theirs.
    np.testing.assert_allclose(stats["var_norms_clipped"], np.minimum(var_norms, clip_norm),
                               rtol=1e-5)


def test_norm_fraction_by_hand():
    # Norms 5 (3-4-5 triangle), 1 and 13 (5-12-13); clip_norm 2 cuts two of the three tensors.
    grads = [np.array([3.0, 4.0], np.float32), np.array([[1.0]], np.float32),
             np.array([5.0, 12.0], np.float32)]
    clipped, stats = run_clip(grads, cfg("norm", clip_norm=2.0))
    np.testing.assert_allclose(clipped[0], [1.2, 1.6], rtol=1e-6)
    np.testing.assert_array_equal(clipped[1], [[1.0]])
    np.testing.assert_allclose(clipped[2], [10 / 13, 24 / 13], rtol=1e-6)
    assert stats["clip_fraction"] == pytest.approx(2 / 3)
    np.testing.assert_allclose(stats["var_norms"], [5.0, 1.0, 13.0], rtol=1e-6)
    np.testing.assert_allclose(stats["var_norms_clipped"], [2.0, 1.0, 2.0], rtol=1e-6)
    assert stats["grad_norm"] == pytest.approx(np.sqrt(25 + 1 + 169))
    assert stats["grad_norm_clipped"] == pytest.approx(3.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ratio", [0.3, 2.0])
def test_global_norm_matches_tf_clip_by_global_norm(seed, ratio):
    grads = random_grads(seed)
    _, global_norm = np_norms(grads)
    clip_norm = ratio * global_norm  # ratio < 1: everything scaled; > 1: nothing changes
    clipped, stats = run_clip(grads, cfg("global_norm", clip_norm=clip_norm))
    reference, ref_norm = tf.clip_by_global_norm([tf.constant(g) for g in grads], clip_norm)
    reference = [r.numpy() for r in reference]
    assert float(ref_norm) == pytest.approx(global_norm, rel=1e-5)
    for c, r in zip(clipped, reference):
        np.testing.assert_allclose(c, r, rtol=1e-6, atol=1e-7)
    assert stats["clip_fraction"] == (1.0 if ratio < 1 else 0.0)
    assert_stats(grads, reference, stats)
    assert stats["grad_norm_clipped"] == pytest.approx(min(global_norm, clip_norm), rel=1e-5)
    if ratio > 1:
        for c, g in zip(clipped, grads):
            np.testing.assert_array_equal(c, g)
    else:
        # One common factor: every tensor keeps its direction and its share of the norm.
        var_norms, _ = np_norms(grads)
        np.testing.assert_allclose(stats["var_norms_clipped"], var_norms * ratio, rtol=1e-5)


@pytest.mark.parametrize("node", [cfg("none"), cfg("value", min=-0.5, max=0.5),
                                  cfg("norm", clip_norm=1.0), cfg("global_norm", clip_norm=1.0)],
                         ids=lambda c: c.name)
def test_clip_inside_tf_function_matches_eager(node):
    # The train step calls clip inside a tf.function: the graph must give the eager results.
    grads = [tf.constant(g) for g in random_grads(7)]
    eager_clipped, eager_stats = clip(grads, node)
    graph_clipped, graph_stats = tf.function(lambda gs: clip(gs, node))(grads)
    for e, g in zip(eager_clipped, graph_clipped):
        np.testing.assert_allclose(e.numpy(), g.numpy(), rtol=1e-6)
    assert set(graph_stats) == {"grad_norm", "grad_norm_clipped", "clip_fraction",
                                "var_norms", "var_norms_clipped"}
    for key in eager_stats:
        np.testing.assert_allclose(eager_stats[key].numpy(), graph_stats[key].numpy(), rtol=1e-6)
