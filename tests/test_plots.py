"""runner.plots: what each per-run figure shows, in both renderings, and the envelope."""
import math

import numpy as np
import pytest
from PIL import Image

from runner import plots
from runner.plots import CHEAP, DETAILED


def history(steps=1000, eval_every=10, variables=("conv1/kernel", "conv1/bias")):
    """A seed-000-shaped history with one spike (step 537) and one dip (step 811)."""
    rng = np.random.default_rng(0)
    s = np.arange(1, steps + 1)
    loss = 2.0 * np.exp(-s / 300) + 0.1 + rng.uniform(0, 0.2, steps)
    loss[536], loss[810] = 9.5, 0.001
    norm = np.exp(rng.normal(0, 0.5, steps))
    h = {"train_loss": list(zip(s.tolist(), loss.tolist())),
         "grad_norm": list(zip(s.tolist(), norm.tolist())),
         "grad_norm_clipped": list(zip(s.tolist(), np.minimum(norm, 1.0).tolist())),
         "clip_fraction": list(zip(s.tolist(), rng.uniform(0, 1, steps).tolist())),
         "lr": [(int(i), 0.01) for i in s]}
    evals = np.arange(0, steps + 1, eval_every)
    h["val_loss"] = [(int(e), 2.0 * math.exp(-e / 300) + 0.2) for e in evals]
    h["val_acc"] = [(int(e), 1 - 0.9 * math.exp(-e / 300)) for e in evals]
    h["var_norms"] = [(int(e), {v: 1.0 + i + e / 1000 for i, v in enumerate(variables)})
                      for e in evals[1:]]
    h["var_norms_clipped"] = [(int(e), {v: 0.5 for v in variables}) for e in evals[1:]]
    return h


def by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


# ---------------------------------------------------------------- envelope

def test_envelope_keeps_every_extreme_and_bounds_the_points():
    rng = np.random.default_rng(1)
    steps, values = np.arange(30000), rng.normal(size=30000)
    values[12345], values[20000] = 50.0, -50.0
    kept_steps, kept = plots.envelope(steps, values, 400)
    assert len(kept) <= 400
    assert kept.max() == 50.0 and kept.min() == -50.0
    assert np.all(np.diff(kept_steps) > 0)  # in step order, no duplicates
    # every bucket's own min and max survive, not just the global ones
    for chunk_steps in np.array_split(steps, 200):
        inside = (kept_steps >= chunk_steps[0]) & (kept_steps <= chunk_steps[-1])
        assert kept[inside].max() == values[chunk_steps].max()
        assert kept[inside].min() == values[chunk_steps].min()


def test_envelope_leaves_short_series_and_unlimited_rendering_alone():
    steps, values = np.arange(50), np.linspace(0, 1, 50)
    assert np.array_equal(plots.envelope(steps, values, 400)[1], values)
    long = np.arange(5000.0)
    assert len(plots.envelope(long, long, None)[1]) == 5000


def test_envelope_skips_nan_but_keeps_inf():
    values = np.full(1000, np.nan)
    values[100:200] = 1.0
    values[150] = np.inf
    kept_steps, kept = plots.envelope(np.arange(1000), values, 100)
    assert np.inf in kept and 1.0 in kept


# ---------------------------------------------------------------- figures

@pytest.mark.parametrize("rendering", [CHEAP, DETAILED], ids=["cheap", "detailed"])
def test_curves_show_train_and_validation_loss_and_accuracy(rendering):
    h = history()
    fig = plots.curves(h, rendering=rendering)
    loss_ax, acc_ax = fig.axes
    assert (loss_ax.get_title(), acc_ax.get_title()) == ("loss", "accuracy")
    lines = by_label(loss_ax)
    assert {"train loss", "validation loss"} <= set(lines)
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["train loss",
                                                                         "validation loss"]
    raw = next(l for l in loss_ax.get_lines() if l.get_alpha() == 0.2)  # the per-step band
    assert max(raw.get_ydata()) == 9.5 and min(raw.get_ydata()) == 0.001  # spike and dip kept
    assert len(raw.get_xdata()) <= (rendering.max_points or 1000)
    assert len(lines["validation loss"].get_xdata()) == 101  # every evaluation drawn
    assert list(by_label(acc_ax)["validation accuracy"].get_ydata()) == [v for _, v in
                                                                        h["val_acc"]]
    assert acc_ax.get_ylim() == (0, 1.02)


def test_curves_without_first_evaluations_say_so_and_start_later():
    fig = plots.curves(history(), skip_first=20)
    assert fig.get_suptitle() == "without the first 20 evaluations"
    assert min(by_label(fig.axes[0])["validation loss"].get_xdata()) == 200


def test_grad_norms_log_scale_and_clip_fraction():
    fig = plots.grad_norms(history())
    norm_ax, frac_ax = fig.axes
    assert norm_ax.get_yscale() == "log"
    assert {"before clipping", "after clipping"} <= set(by_label(norm_ax))
    assert frac_ax.get_title() == "clip fraction" and len(frac_ax.get_lines()) == 1
    assert max(by_label(norm_ax)["after clipping"].get_ydata()) == 1.0


def test_grad_norms_per_variable_one_line_per_variable_each_side():
    variables = ("conv1/kernel", "conv1/bias", "fc1/kernel")
    fig = plots.grad_norms_per_variable(history(variables=variables))
    before, after = fig.axes
    assert set(by_label(before)) == set(by_label(after)) == set(variables)
    assert before.get_yscale() == "log"
    assert "before clipping" in before.get_title() and "after clipping" in after.get_title()
    assert list(by_label(before)["fc1/kernel"].get_xdata()) == list(range(10, 1001, 10))


def test_weight_images_keep_matrix_coordinates_when_strided():
    rng = np.random.default_rng(2)
    weights = {"w1": rng.uniform(size=(784, 1500)), "conv": rng.normal(size=(5, 5, 1, 6))}
    fig = plots.weight_images(weights)
    (big,), (small,) = fig.axes[0].get_images(), fig.axes[1].get_images()
    assert max(big.get_array().shape) <= CHEAP.max_image_side
    assert big.get_extent() == [-0.5, 1499.5, 783.5, -0.5]  # ticks read as matrix indices
    assert small.get_array().shape == (25, 6)  # conv kernel: one column per output channel
    assert fig.axes[0].get_title() == "w1 (784, 1500)"
    assert len(fig.axes) == 2  # no empty axes for the unused cells of the grid
    full = plots.weight_images(weights, DETAILED).axes[0].get_images()[0]
    assert full.get_array().shape == (784, 1500)


def test_perplexity_curves_draw_with_a_learning_rate_axis():
    h = history()
    h["train_perplexity"] = [(e, 300.0 / e) for e in range(1, 6)]
    h["valid_perplexity"] = [(e, 320.0 / e) for e in range(1, 6)]
    fig = plots.perplexity_curves(h, test_perplexity=70.0)
    assert fig.axes[0].get_yscale() == "log"
    assert "test 70.0" in by_label(fig.axes[0])
    assert fig.axes[2].get_ylabel() == "learning rate"


@pytest.mark.parametrize("rendering", [CHEAP, DETAILED], ids=["cheap", "detailed"])
def test_png_size_follows_dpi_and_scale(tmp_path, rendering):
    path = tmp_path / "curves.png"
    figure = plots.curves(history(), rendering=rendering)
    figure.savefig(path, **rendering.savefig_kwargs)  # as MLflow's log_figure(save_kwargs=)
    with Image.open(path) as image:
        assert image.size == (round(11 * rendering.scale * rendering.dpi),
                              round(4.2 * rendering.scale * rendering.dpi))
