"""Seed presets 002 and 003 end to end through the CLI: each run does what its write-up asks."""
import pytest

from conftest import children_of, run_cli, runs_of


def sweep(tmp_path, *args):
    """Run a multirun through the real CLI; return the client and {child run name: run}."""
    store = f"sqlite:///{tmp_path}/mlflow.db"
    done = run_cli(["-m", *args], tmp_path, store)
    assert done.returncode == 0, done.stderr[-3000:]
    client, runs = runs_of(store)
    return client, children_of(runs)


def test_mlp_explode_diverges_without_clipping_and_global_norm_caps_at_15(tmp_path):
    client, runs = sweep(tmp_path, "experiment=mlp_explode", "clipping=none,global_norm",
                         "train.steps=40", "train.eval_every=20")
    none, clipped = runs["clipping=none"], runs["clipping=global_norm"]
    # Inputs / 50 make the unclipped gradients explode to NaN within a few steps (seed 002).
    assert none.data.tags["outcome"] == "diverged"
    assert none.data.metrics["diverged_at_step"] <= 40
    assert clipped.data.tags["outcome"] != "diverged"  # 40 steps: finite, maybe not yet learned
    before = client.get_metric_history(clipped.info.run_id, "grad_norm")
    after = client.get_metric_history(clipped.info.run_id, "grad_norm_clipped")
    assert max(m.value for m in before) > 15  # clipping had work to do
    assert max(m.value for m in after) <= 15 * (1 + 1e-5)
    # Every variable's gradient norm is logged before and after clipping.
    per_variable = [k for k in clipped.data.metrics if k.startswith("grad_norm/")]
    assert len(per_variable) == 6  # w1, b1, w2, b2, w3, b3
    for key in per_variable:
        assert key.replace("grad_norm/", "grad_norm_clipped/") in clipped.data.metrics
    plots = {a.path for a in client.list_artifacts(clipped.info.run_id, "plots")}
    assert "plots/grad_norms_per_variable.png" in plots


@pytest.mark.slow  # tens of seconds: `make test-slow`
def test_mlp_lr_l2_l2_shrinks_weights_and_reports_best_accuracy(tmp_path):
    client, runs = sweep(tmp_path, "experiment=mlp_lr_l2", "optimizer.lr=0.005",
                         "regularizer=none,l2", "train.steps=200", "train.eval_every=50",
                         "plots.skip_first=1")
    plain, l2 = runs["regularizer=none"], runs["regularizer=l2"]
    for run in (plain, l2):
        metrics = run.data.metrics
        assert {"best_val_acc", "best_val_acc_step", "final_minus_best_val_acc",
                "test_acc"} <= set(metrics)
        assert metrics["final_minus_best_val_acc"] <= 0
        assert metrics["best_val_acc"] >= metrics["val_acc"]
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/curves.png", "plots/curves_skip1.png", "plots/weights.png"} <= plots
    sizes = {"fc1": 784 * 1500, "fc2": 1500 * 1000, "fc3": 1000 * 500, "logits": 500 * 10}
    keys = {layer: f"weights/mlp/{layer}/kernel/mean_abs" for layer in sizes}
    assert set(keys.values()) <= set(l2.data.metrics)  # w1..w4

    def total_abs(run):
        return sum(run.data.metrics[keys[layer]] * size for layer, size in sizes.items())

    # Same seed, same steps: the L2 penalty leaves the weights smaller overall. (Per matrix it
    # need not: with Adam's normalised steps, 200 steps shrink mostly w1, the largest.)
    assert total_abs(l2) < total_abs(plain)
    assert l2.data.metrics[keys["fc1"]] < plain.data.metrics[keys["fc1"]]
    assert max(m.value for m in client.get_metric_history(l2.info.run_id, "penalty")) > 0
    assert max(m.value for m in client.get_metric_history(plain.info.run_id, "penalty")) == 0
