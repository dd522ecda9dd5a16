"""The sweep report against a real MLflow sqlite store: a parent run with real children.

The sweep is built with MlflowClient exactly as the jobs write it (params are the real
composed config, flattened as tracking.py logs it; the replicate tag from
tracking.replicate_hash), so collect() reads what a sweep leaves. One store has one seed per
config, another five; the statistics of the second are checked against SciPy called here.
"""
import base64
import csv
import functools
import math
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.stats
from matplotlib.image import imread
from matplotlib.patches import Rectangle
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from conftest import ROOT, TINY, compose_cfg, run_cli
from runner import report, report_plots, stats
from runner.results import (JobRecord, axis_values, config_axes, configs, default_metric,
                            facets, grid, map_axes, map_cells, ranked, replicate_groups,
                            summary_rows, swept_axes)
from runner.store import CHECK_SECONDS, check as check_store
from runner.tags import REPLICATE
from runner.tracking import flatten, replicate_hash

LRS = ("0.0001", "0.001", "0.01", "0.05")
CLIPS = ("none", "value")
DIVERGED_JOB = ("0.05", "none")  # blows up at step 37
COLLAPSED_JOB = ("0.05", "value")  # stays at chance
SEEDS = ("0", "1", "2", "3", "4")
# The replicated sweep: a seed moves every config alike (its data split and initial weights),
# plus a little of its own; (0.05, none) survives one seed of five; (0.0001, value) lost its
# last seed (killed: no final metrics), so the best cannot be paired with it.
SEED_EFFECT = {"0": 0.0, "1": 0.03, "2": -0.02, "3": 0.05, "4": -0.04}
JITTER = (0.3, -0.5, 0.1, 0.8, -0.2, -0.6, 0.4)
SURVIVES = "3"  # the one seed on which DIVERGED_JOB does not diverge
KILLED = (("0.0001", "value"), "4")


@functools.lru_cache(maxsize=None)
def _params(lr: str, clip: str, *extra: str):
    cfg = compose_cfg("experiment=lenet_clip", f"optimizer.lr={lr}", f"clipping={clip}", *extra)
    return flatten(OmegaConf.to_container(cfg, resolve=True)), replicate_hash(cfg)


def _job_numbers(lr: str, clip: str, seed: str = "0", replicated: bool = False,
                 steps: int = 100):
    """A plausible val_loss curve per eval (every 10 steps) and final metrics for one job."""
    evals = list(range(0, steps + 1, 10))
    if (lr, clip) == COLLAPSED_JOB:
        loss = [math.log(10) - 0.0002 * k - 0.001 * int(seed) for k in range(len(evals))]
        return evals, loss, {"test_acc": 0.098, "test_loss": 2.302,
                             "val_loss_tail": float(np.mean(loss[-10:]))}, "collapsed"
    final = 0.15 + 0.3 * abs(math.log10(float(lr)) + 2.5) + (0.04 if clip == "value" else 0)
    if replicated:
        k = LRS.index(lr) * 2 + CLIPS.index(clip)
        final += SEED_EFFECT[seed] + 0.01 * JITTER[(k * 5 + int(seed)) % len(JITTER)]
    loss = [final + (math.log(10) - final) * math.exp(-s / 30) for s in evals]
    if (lr, clip) == DIVERGED_JOB and not (replicated and seed == SURVIVES):
        return evals[:4], loss[:4], {"diverged_at_step": 37}, "diverged"
    if replicated and ((lr, clip), seed) == KILLED:
        return evals[:6], loss[:6], {}, "killed"
    return evals, loss, {"test_acc": 1 - final / 3, "test_loss": final * 1.05,
                         "val_loss_tail": float(np.mean(loss[-10:]))}, "ok"


def make_sweep(client, exp_id, sweep_dir, start, lrs=LRS, clips=CLIPS, extra=(),
               seeds=("0",)):
    """A parent tagged as a sweep and one FINISHED child per (lr, clipping, seed), tagged with
    its replicate group; returns (parent id, {(lr, clipping, seed): child id})."""
    overrides = "experiment=lenet_clip" + (f" seed={','.join(seeds)}" if len(seeds) > 1 else "")
    parent = client.create_run(exp_id, run_name="sweep experiment=lenet_clip", start_time=start,
                               tags={"sweeplab.role": "sweep", "sweeplab.sweep_dir": sweep_dir,
                                     "sweeplab.overrides": overrides}).info.run_id
    children = {}
    jobs = [(c, lr, s) for c in clips for lr in lrs for s in seeds]
    for k, (clip, lr, seed) in enumerate(jobs):
        evals, loss, final, outcome = _job_numbers(lr, clip, seed, len(seeds) > 1)
        params, replicate = _params(lr, clip, f"seed={seed}", *extra)
        name = f"lr={lr},clipping={clip}" + (f",seed={seed}" if len(seeds) > 1 else "")
        child = client.create_run(exp_id, run_name=name, start_time=start + k + 1,
                                  tags={"mlflow.parentRunId": parent, "outcome": outcome,
                                        "sweeplab.sweep_id": parent,
                                        "sweeplab.task": "image_classification",
                                        REPLICATE: replicate}).info.run_id
        metrics = ([Metric("val_loss", v, 0, s) for s, v in zip(evals, loss)]
                   + [Metric("val_acc", 1 - v / 3, 0, s) for s, v in zip(evals, loss)]
                   + [Metric(n, v, 0, 0) for n, v in final.items()])
        client.log_batch(child, metrics=metrics,
                         params=[Param(k_, v) for k_, v in params.items()])
        client.set_terminated(child, "KILLED" if outcome == "killed" else "FINISHED")
        children[(lr, clip, seed)] = child
    client.set_terminated(parent, "FINISHED")
    return parent, children


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """A migrated, empty sqlite store; copying it saves MLflow's schema set-up per test."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def fresh_client(empty_store, folder):
    shutil.copy(empty_store, folder / "mlflow.db")
    uri = f"sqlite:///{folder}/mlflow.db"
    return uri, MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def store(tmp_path_factory, empty_store):
    """One store holding one 8-job sweep, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("store")
    uri, client = fresh_client(empty_store, folder)
    exp_id = client.create_experiment("sweeplab", artifact_location=str(folder / "mlartifacts"))
    sweep_dir = str(folder / "sweeps" / "2024-01-01" / "12-00-00")
    parent, children = make_sweep(client, exp_id, sweep_dir, start=1_000)
    return {"uri": uri, "client": client, "exp_id": exp_id, "parent": parent,
            "children": children, "sweep_dir": sweep_dir, "folder": folder}


@pytest.fixture(scope="module")
def records(store):
    return report.collect(store["client"], store["parent"])


# ---------------------------------------------------------------- reading the store

def test_collect_reads_every_child_with_params_outcomes_and_histories(store, records):
    assert [r.run_id for r in records] == list(store["children"].values())  # start order
    for record in records:
        lr, clip = record.params["optimizer.lr"], record.params["clipping.name"]
        evals, loss, final, outcome = _job_numbers(lr, clip)
        assert record.name == f"lr={lr},clipping={clip}"
        assert record.outcome == outcome
        assert record.histories["val_loss"] == list(zip(evals, loss))
        assert record.value("val_loss") == pytest.approx(loss[-1])  # the last eval is final
        assert record.value("test_acc") == pytest.approx(final.get("test_acc", math.nan),
                                                         nan_ok=True)
        assert "valid_perplexity" not in record.histories
        assert record.tags[REPLICATE] == _params(lr, clip, "seed=0")[1]
    diverged = [r for r in records if r.outcome == "diverged"]
    assert [r.diverged_at for r in diverged] == [37]


def test_collect_gives_back_infinities_mlflow_clamped(tmp_path, empty_store):
    uri, client = fresh_client(empty_store, tmp_path)
    exp_id = client.create_experiment("sweeplab", artifact_location=str(tmp_path / "art"))
    parent, children = make_sweep(client, exp_id, str(tmp_path), 1_000, lrs=("0.001",))
    child = children[("0.001", "none", "0")]
    client.log_batch(child, metrics=[Metric("val_loss", math.inf, 0, 200),
                                     Metric("test_loss", -math.inf, 0, 1)])
    assert client.get_run(child).data.metrics["val_loss"] == sys.float_info.max  # the clamp
    record = next(r for r in report.collect(client, parent) if r.run_id == child)
    assert record.value("val_loss") == math.inf and record.value("test_loss") == -math.inf
    assert record.histories["val_loss"][-1] == (200, math.inf)
    assert "inf" not in report_plots._fmt(record.value("val_loss"))  # drawn as "—"


def test_swept_axes_are_exactly_the_params_that_vary(records):
    assert swept_axes(records) == ["optimizer.lr", "clipping.name"]
    assert map_axes(records) == ("optimizer.lr", "clipping.name", [])
    assert axis_values(records, "optimizer.lr") == list(LRS)  # numeric order
    assert axis_values(records, "clipping.name") == list(CLIPS)  # the order they ran


def test_a_group_option_absorbs_the_params_it_implies():
    # clipping none vs norm also changes clipping.clip_norm (5.0 vs 1.0): not an axis of its own.
    jobs = [JobRecord(f"r{k}", f"r{k}", _params(lr, clip)[0], "ok", {"val_loss": 1.0})
            for k, (lr, clip) in enumerate((lr, c) for c in ("none", "norm", "global_norm")
                                           for lr in ("0.001", "0.01"))]
    assert len({j.params["clipping.clip_norm"] for j in jobs}) == 2
    assert swept_axes(jobs) == ["optimizer.lr", "clipping.name"]
    # A key set on its own in a sweep is an axis even inside the group.
    tuned = [JobRecord(f"r{n}", f"r{n}", _params("0.01", "norm", f"clipping.clip_norm={n}")[0],
                       "ok", {}) for n in (0.5, 1.0, 2.0)]
    assert swept_axes(tuned) == ["clipping.clip_norm"]


def test_a_partial_grid_keeps_axes_of_different_groups():
    # Two jobs of an lr x clipping sweep: lr and clipping move together, both stay axes.
    jobs = [JobRecord("a", "a", _params("0.001", "none")[0], "ok", {}),
            JobRecord("b", "b", _params("0.01", "value")[0], "ok", {})]
    assert swept_axes(jobs) == ["optimizer.lr", "clipping.name"]


def _grid(records, metric):
    x_axis, y_axis, _ = map_axes(records)
    return grid(map_cells(records, metric), metric, x_axis, y_axis)


def test_grid_cells_equal_each_childs_metric(records):
    for metric in ("val_loss_tail", "val_loss", "test_acc"):
        cells = _grid(records, metric)
        assert cells.values.shape == (len(CLIPS), len(LRS))
        for record in records:
            i = CLIPS.index(record.params["clipping.name"])
            j = LRS.index(record.params["optimizer.lr"])
            assert cells.cells[i][j].jobs == [record]  # one seed: one run per config
            # A diverged run's last value predates its blow-up: no value in the map.
            expected = (math.nan if record.outcome == "diverged"
                        else record.metrics.get(metric, math.nan))
            assert cells.values[i, j] == pytest.approx(expected, nan_ok=True)
    cells = _grid(records, "val_loss")
    assert cells.outcome(CLIPS.index("none"), LRS.index("0.05")) == "diverged"
    assert cells.outcome(CLIPS.index("value"), LRS.index("0.05")) == "collapsed"
    assert cells.outcome(0, 0) == "ok"


def test_best_first_follows_the_metrics_direction(records):
    by_loss = ranked(records, "val_loss")
    finite = [r for r in by_loss if r.outcome != "diverged"]
    assert [r.value("val_loss") for r in finite] == sorted(r.value("val_loss") for r in finite)
    assert by_loss[-1].outcome == "diverged"  # its last value predates the blow-up
    by_acc = ranked(records, "test_acc")
    accs = [r.value("test_acc") for r in by_acc if not math.isnan(r.value("test_acc"))]
    assert accs == sorted(accs, reverse=True) and len(accs) == len(records) - 1
    assert by_acc[0] is by_loss[0]  # here the lowest loss also has the best accuracy
    assert by_acc[-1].outcome == "diverged"


# ---------------------------------------------------------------- figures

def _texts(ax):
    return {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text()
            for t in ax.texts}


def test_map_annotates_every_cell_and_flags_diverged_and_collapsed(records):
    fig = report_plots.sweep_map(records, "val_loss")
    ax = fig.axes[0]
    texts = _texts(ax)
    cells = _grid(records, "val_loss")
    for i, clip in enumerate(CLIPS):
        for j, lr in enumerate(LRS):
            job = cells.cells[i][j].jobs[0]
            if job.outcome == "diverged":
                assert texts[(j, i)] == "diverged\n@ 37"
            elif job.outcome == "collapsed":
                assert texts[(j, i)].endswith("\ncollapsed")
                assert float(texts[(j, i)].split("\n")[0]) == pytest.approx(
                    job.value("val_loss"), rel=5e-3)
            else:
                assert float(texts[(j, i)]) == pytest.approx(job.value("val_loss"), rel=5e-3)
    hatches = {p.get_hatch() for p in ax.patches if p.get_hatch()}
    assert hatches == {report_plots.DIVERGED_HATCH, report_plots.COLLAPSED_HATCH}
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("diverged" in t for t in legend) and any("collapsed" in t for t in legend)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.0001", "0.001", "0.01", "0.05"]
    # One seed: the best outlined, nothing tested, and the title says why.
    assert len([p for p in ax.patches if p.get_linewidth() == 2.5]) == 1
    assert not [line for line in ax.lines if line.get_marker() == "o"]
    assert "One seed per config" in fig._suptitle.get_text()


def test_one_swept_axis_is_a_line_and_a_third_axis_makes_facets(records):
    one_axis = [r for r in records if r.params["clipping.name"] == "value"]
    fig = report_plots.sweep_map(one_axis, "val_loss")
    assert len(fig.axes) == 1 and fig.axes[0].get_xscale() == "log"
    line = fig.axes[0].lines[0]
    finite = [r.value("val_loss") for r in one_axis]
    assert list(line.get_ydata()) == pytest.approx(finite)
    three = [JobRecord(r.run_id + b, r.name, {**r.params, "train.batch_size": b}, r.outcome,
                       r.metrics, r.histories) for b in ("8", "16", "32") for r in records]
    assert swept_axes(three) == ["optimizer.lr", "clipping.name", "train.batch_size"]
    assert [label for label, _ in facets(three, ["train.batch_size"])] == [
        "train.batch_size=8", "train.batch_size=16", "train.batch_size=32"]
    fig = report_plots.sweep_map(three, "val_loss")
    maps = [ax for ax in fig.axes if ax.get_title().startswith("train.batch_size=")]
    assert len(maps) == 3
    for ax, (_, jobs) in zip(maps, facets(three, ["train.batch_size"])):  # its own jobs
        assert len(ax.texts) == len(jobs) == len(records)
    # `seed` is no axis of the map: the same jobs over seeds are replicates of 8 configs.
    seeded = [JobRecord(r.run_id + s, r.name, {**r.params, "seed": s}, r.outcome, r.metrics,
                        r.histories) for s in ("0", "1", "2") for r in records]
    assert swept_axes(seeded) == ["optimizer.lr", "clipping.name", "seed"]
    assert map_axes(seeded) == ("optimizer.lr", "clipping.name", [])
    assert [len(c.jobs) for c in configs(seeded, "val_loss")] == [3] * len(records)


def test_curves_one_panel_per_row_value_labelled_at_line_ends(records):
    fig = report_plots.sweep_curves(records, "val_loss")
    panels = [ax for ax in fig.axes if ax.lines]
    assert [ax.get_title() for ax in panels] == [f"clipping.name={c}" for c in CLIPS]
    for ax, clip in zip(panels, CLIPS):
        labels = sorted(t.get_text() for t in ax.texts)
        expected = sorted(lr + {"diverged": " diverged", "collapsed": " collapsed"}.get(
            r.outcome, "") for r in records if r.params["clipping.name"] == clip
            for lr in [r.params["optimizer.lr"]])
        assert labels == expected
        heights = sorted(t.get_position()[1] for t in ax.texts)
        assert min(np.diff(heights)) > 0.03  # spread apart: no two labels on top of each other
    assert not any(ax.get_legend() for ax in fig.axes)


def test_sixteen_job_grid_renders_quickly_and_reads(tmp_path):
    """The mission's 4 lr x 4 clipping grid: both PNGs written and of a sane size."""
    lrs, clips = ("5e-05", "0.0005", "0.005", "0.05"), ("none", "value", "norm", "global_norm")
    rng = np.random.default_rng(0)
    jobs = []
    for clip in clips:
        for lr in lrs:
            evals = list(range(0, 1001, 10))
            dead = lr == "0.05" and clip != "value"
            final = 2.30 if dead else 0.1 + 0.4 * abs(math.log10(float(lr)) + 2.3)
            loss = [final + (2.303 - final) * math.exp(-s / 150) + rng.normal(0, 0.02)
                    for s in evals]
            outcome = "collapsed" if dead else "ok"
            metrics = {"val_loss": loss[-1], "test_acc": 0.1 if dead else 0.97}
            if lr == "0.05" and clip == "global_norm":
                outcome, evals, loss = "diverged", evals[:13], loss[:13]
                metrics = {"val_loss": loss[-1], "diverged_at_step": 127}
            jobs.append(JobRecord(f"{lr}{clip}", f"lr={lr},clipping={clip}",
                                  {"optimizer.lr": lr, "clipping.name": clip}, outcome,
                                  metrics, {"val_loss": list(zip(evals, loss))}))
    started = time.perf_counter()
    pngs = {"map": report._png(report_plots.sweep_map(jobs, "val_loss")),
            "curves": report._png(report_plots.sweep_curves(jobs, "val_loss"))}
    print(f"16-job report figures rendered in {time.perf_counter() - started:.2f} s")
    for name, data in pngs.items():
        (tmp_path / f"{name}.png").write_bytes(data)
        height, width, _ = imread(tmp_path / f"{name}.png").shape
        assert 300 <= height <= 1000 and 500 <= width <= 1800  # small: dpi 100


def test_language_model_sweep_defaults_to_perplexity():
    jobs = [JobRecord(f"r{k}", f"r{k}", {"optimizer.lr": lr, "clipping.name": clip},
                      "collapsed" if clip == "none" else "ok",
                      {"valid_perplexity": ppl, "test_perplexity": ppl * 0.98},
                      {"valid_perplexity": [(e, ppl * (4 - e)) for e in range(1, 4)]})
            for k, (lr, clip, ppl) in enumerate([("1.0", "none", 8.7e4), ("1.0", "global_norm", 70.3),
                                                 ("0.5", "none", 9e3), ("0.5", "global_norm", 80.)])]
    assert default_metric(jobs) == "valid_perplexity"
    assert [j.value("valid_perplexity") for j in ranked(jobs, "valid_perplexity")] == [
        70.3, 80.0, 9e3, 8.7e4]
    fig = report_plots.sweep_curves(jobs, "valid_perplexity")
    assert {ax.get_xlabel() for ax in fig.axes if ax.lines} == {"epoch"}


# ---------------------------------------------------------------- the report files

def test_html_is_self_contained_with_every_run(store, records):
    parent = store["client"].get_run(store["parent"])
    pngs = {"a.png": report._png(report_plots.sweep_map(records, "val_loss"))}
    page = report.html_page(parent, records, "val_loss", pngs)
    for record in records:
        assert record.name in page
    assert page.count("data:image/png;base64,") == 1
    encoded = page.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(encoded) == pngs["a.png"]
    assert "src=\"http" not in page and "<link" not in page  # nothing fetched from elsewhere
    rows = page.split("<tr class=")[1:]
    assert len(rows) == len(records)
    assert rows[0].startswith('"ok"') and rows[-1].startswith('"diverged"')


def test_markdown_table_lists_every_job_best_first(store, records):
    parent = store["client"].get_run(store["parent"])
    text = report.markdown(parent, records, "test_acc")
    lines = [line for line in text.split("## Every run")[1].splitlines()
             if line.startswith("| ")][1:]
    assert len(lines) == len(records)
    best = ranked(records, "test_acc")
    assert [line.split(" | ")[1] for line in lines] == [r.name for r in best]
    diverged_row = lines[-1].split(" | ")
    assert diverged_row[-3] == "diverged" and diverged_row[-1].rstrip(" |") == "37"


def test_log_report_puts_five_artifacts_on_the_parent(store):
    where = report.log_report(store["client"], store["parent"])
    assert where.metric == "val_loss_tail"  # the image task's ranking metric
    names = {a.path for a in store["client"].list_artifacts(store["parent"], "report")}
    assert names == {"report/sweep_map.png", "report/sweep_curves.png", "report/report.html",
                     "report/report.md", "report/summary.csv"}
    assert where.local_dir and os.path.isdir(where.local_dir)
    assert imread(os.path.join(where.local_dir, "sweep_map.png")).shape[0] > 100
    assert store["client"].get_run(store["parent"]).data.tags["sweeplab.report_metric"] == \
        "val_loss_tail"
    for child in store["children"].values():  # children untouched
        assert not store["client"].list_artifacts(child)


# ---------------------------------------------------------------- replicates: five seeds

@pytest.fixture(scope="module")
def replicated(tmp_path_factory, empty_store):
    """One store holding the same 8-config sweep over 5 seeds (40 jobs)."""
    folder = tmp_path_factory.mktemp("replicated")
    uri, client = fresh_client(empty_store, folder)
    exp_id = client.create_experiment("sweeplab", artifact_location=str(folder / "mlartifacts"))
    parent, children = make_sweep(client, exp_id, str(folder / "sweep"), start=1_000,
                                  seeds=SEEDS)
    where = report.log_report(client, parent)
    return {"uri": uri, "client": client, "parent": parent, "children": children,
            "where": where, "records": report.collect(client, parent)}


def _expected(client, parent):
    """Each config's statistics computed here, from the store, with SciPy directly: groups
    by params minus seed, t.interval over scipy.stats.sem, Holm as sequential rejection."""
    runs = client.search_runs([client.get_run(parent).info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent}'", max_results=1000)
    groups = {}
    for run in runs:
        p = run.data.params
        groups.setdefault((p["optimizer.lr"], p["clipping.name"]), []).append(run)
    out = {}
    for key, group in groups.items():
        kept = [r for r in group if r.data.tags["outcome"] != "diverged"
                and math.isfinite(r.data.metrics.get("val_loss_tail", math.nan))]
        x = np.array([r.data.metrics["val_loss_tail"] for r in kept])
        seeds = [r.data.params["seed"] for r in kept]
        row = {"n": len(x), "x": dict(zip(seeds, x)), "outcomes": [
            r.data.tags["outcome"] for r in group]}
        row["mean"] = x.mean() if len(x) else math.nan
        row["sd"] = x.std(ddof=1) if len(x) > 1 else math.nan
        row["ci"] = (scipy.stats.t.interval(0.95, len(x) - 1, loc=x.mean(),
                                            scale=scipy.stats.sem(x))
                     if len(x) > 1 else (math.nan, math.nan))
        out[key] = row
    best = min((k for k in out if out[k]["n"] >= 2), key=lambda k: out[k]["mean"])
    tests = {}
    for key, row in out.items():
        if key == best or row["n"] < 2:
            continue
        a, b = out[best]["x"], row["x"]
        if set(a) == set(b):
            tests[key] = ("paired t-test", scipy.stats.ttest_rel(
                [a[s] for s in sorted(a)], [b[s] for s in sorted(a)]).pvalue)
        else:
            tests[key] = ("Welch t-test", scipy.stats.ttest_ind(
                list(a.values()), list(b.values()), equal_var=False).pvalue)
    order = sorted(tests, key=lambda k: tests[k][1])
    rejected = set()
    for rank, key in enumerate(order):  # Holm: reject while p_(k) <= alpha / (m - k)
        if tests[key][1] > 0.05 / (len(order) - rank):
            break
        rejected.add(key)
    for key, row in out.items():
        row["best"] = key == best
        row["test"] = tests.get(key, ("", None))[0]
        row["tied"] = ("" if key == best else "untestable" if key not in tests
                       else "false" if key in rejected else "true")
    return out


def _summary_csv(where):
    with open(os.path.join(where.local_dir, "summary.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_summary_csv_is_scipy_over_each_configs_seeds(replicated):
    rows = _summary_csv(replicated["where"])
    assert list(rows[0]) == ["optimizer.lr", "clipping.name", "metric", "n", "mean", "sd",
                             "ci95_low", "ci95_high", "ok", "diverged", "collapsed", "best",
                             "tied_with_best", "test", "p", "p_holm"]
    expected = _expected(replicated["client"], replicated["parent"])
    assert len(rows) == len(expected) == len(LRS) * len(CLIPS)
    assert rows[0]["best"] == "true" and [r["best"] for r in rows].count("true") == 1
    for row in rows:
        want = expected[(row["optimizer.lr"], row["clipping.name"])]
        assert row["metric"] == "val_loss_tail"
        assert int(row["n"]) == want["n"]
        for column, value in (("mean", want["mean"]), ("sd", want["sd"]),
                              ("ci95_low", want["ci"][0]), ("ci95_high", want["ci"][1])):
            assert float(row[column]) == pytest.approx(value, rel=1e-9, nan_ok=True), column
        for name in ("ok", "diverged", "collapsed"):
            assert int(row[name]) == want["outcomes"].count(name)
        assert row["best"] == ("true" if want["best"] else "false")
        assert row["tied_with_best"] == want["tied"]
        assert row["test"] == want["test"]
    # The fixture exercises every verdict and both tests.
    assert {r["tied_with_best"] for r in rows} == {"", "true", "false", "untestable"}
    assert {r["test"] for r in rows} == {"", "paired t-test", "Welch t-test"}
    assert any(r["diverged"] == "4" and r["n"] == "1" for r in rows)  # 1 of 5 survived
    # Higher is better for accuracy: the best is the highest mean, listed first.
    by_acc = summary_rows(configs(replicated["records"], "test_acc"), ["optimizer.lr"])
    means = [r["mean"] for r in by_acc if r["n"] >= 2]
    assert by_acc[0]["best"] == "true" and by_acc[0]["mean"] == max(means)
    assert means == sorted(means, reverse=True)


def test_replicated_map_marks_the_best_and_its_ties(replicated):
    records = replicated["records"]
    fig = report_plots.sweep_map(records, "val_loss_tail")
    ax = fig.axes[0]
    rows = _summary_csv(replicated["where"])
    cells = _grid(records, "val_loss_tail")
    texts = _texts(ax)
    outlined = [(round(p.get_x() + 0.47), round(p.get_y() + 0.47)) for p in ax.patches
                if isinstance(p, Rectangle) and p.get_linewidth() == 2.5]
    dots = {(round(line.get_xdata()[0] - 0.36), round(line.get_ydata()[0] + 0.3))
            for line in ax.lines if line.get_marker() == "o"}
    for row in rows:
        i, j = CLIPS.index(row["clipping.name"]), LRS.index(row["optimizer.lr"])
        assert cells.cells[i][j].summary.n == int(row["n"])
        text = texts[(j, i)].split("\n")
        if int(row["n"]) >= 2:  # mean, then ± half of the 95 % interval
            assert float(text[0]) == pytest.approx(float(row["mean"]), rel=5e-3)
            half = (float(row["ci95_high"]) - float(row["ci95_low"])) / 2
            assert float(text[1].lstrip("±")) == pytest.approx(half, rel=5e-3)
        elif int(row["n"]) == 1:
            assert text[1] == "n=1"
        if int(row["diverged"]):
            assert f"{row['diverged']}/5 div" in text
        assert ((j, i) in outlined) == (row["best"] == "true")
        assert ((j, i) in dots) == (row["tied_with_best"] == "true")
    assert len(outlined) == 1
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert ("cannot be told apart from the best:\npaired t-test (same seeds) / Welch,\n"
            "Holm-corrected, α = 0.05") in legend  # this sweep has ties: no "(none here)"
    assert any(t.startswith("n=1") and "untestable" in t for t in legend)
    assert "mean over seeds ± half of its 95 %" in fig._suptitle.get_text().replace("\n", " ")


def test_replicated_curves_are_means_with_a_band(replicated):
    records = replicated["records"]
    fig = report_plots.sweep_curves(records, "val_loss_tail")
    panels = [ax for ax in fig.axes if ax.lines]
    assert [ax.get_title() for ax in panels] == [f"clipping.name={c}" for c in CLIPS]
    for ax, clip in zip(panels, CLIPS):
        bands = ax.collections  # fill_between: one band per config with >= 2 live seeds
        live = {lr: [r for r in records if r.params["clipping.name"] == clip
                     and r.params["optimizer.lr"] == lr and r.outcome != "diverged"]
                for lr in LRS}
        assert len(bands) == sum(len(jobs) >= 2 for jobs in live.values())
        solid = [line for line in ax.lines if line.get_linewidth() == 1.4]
        assert len(solid) == len(LRS)  # one mean line per config
        jobs = live["0.001"]
        steps = [s for s, _ in jobs[0].histories["val_loss"]]
        expected = np.mean([[v for _, v in j.histories["val_loss"]] for j in jobs], axis=0)
        assert any(list(line.get_xdata()) == steps and np.allclose(line.get_ydata(), expected)
                   for line in solid)
    assert "band = ±1 sd" in fig._suptitle.get_text()


def test_replicated_report_files_and_terminal(replicated, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert report.main([replicated["parent"], "--tracking-uri", replicated["uri"]]) == 0
    out = capsys.readouterr().out
    assert "val_loss_tail (lower is better) per config, best first" in out
    assert "mean of the last 10 evaluations" in out and "too noisy" in out
    assert "seeds: 0, 1, 2, 3, 4" in out
    assert "Holm-corrected over 6 comparisons, α = 0.05" in out  # 8 - best - n=1
    assert "One seed per config" not in out
    assert "summary.csv:" in out and "sweep_map.png:" in out
    rows = _summary_csv(replicated["where"])
    table = [line for line in out.splitlines() if line.startswith("│")]
    assert len(table) == len(rows)
    for line, row in zip(table, rows):  # the same rows, in the same order
        cells = [c.strip() for c in line.strip("│").split("│")]
        assert cells[:2] == [row["optimizer.lr"], row["clipping.name"]]
        assert cells[2] == f"{row['n']}/5"
        verdict = cells[-1]
        assert verdict.split(" ")[0] == {"": "best", "true": "tied", "false": "differs",
                                         "untestable": "untestable"}[row["tied_with_best"]]
    # The answer in words: the best row's config, then every tied row's config.
    best = next(r for r in rows if r["best"] == "true")
    answer = [line for line in out.splitlines() if line.startswith("answer: best ")]
    assert len(answer) == 1
    assert f"optimizer.lr={best['optimizer.lr']}, clipping.name={best['clipping.name']} " in \
        answer[0]
    tied = [r for r in rows if r["tied_with_best"] == "true"]
    apart = [line for line in out.splitlines() if "cannot be told apart from it" in line]
    assert (f"({len(tied)})" in apart[0]) if tied else not apart
    for row in tied:
        assert f"optimizer.lr={row['optimizer.lr']}, clipping.name={row['clipping.name']} " in \
            apart[0]
    text = (replicated["where"].local_dir and open(os.path.join(
        replicated["where"].local_dir, "report.md"), encoding="utf-8").read())
    assert "## Configs, best first" in text and "(summary.csv)" in text


def test_configs_group_by_the_replicate_tag_else_by_params_minus_seed(replicated):
    records = replicated["records"]
    by_tag = replicate_groups(records)
    assert len(by_tag) == len(LRS) * len(CLIPS) and {len(g) for g in by_tag} == {5}
    untagged = [JobRecord(r.run_id, r.name, r.params, r.outcome, r.metrics, r.histories,
                          tags={}) for r in records]
    assert [[j.run_id for j in g] for g in replicate_groups(untagged)] == \
        [[j.run_id for j in g] for g in by_tag]
    # Old runs mixed with new ones: params for all, so no config splits in two.
    mixed = untagged[:3] + records[3:]
    assert [[j.run_id for j in g] for g in replicate_groups(mixed)] == \
        [[j.run_id for j in g] for g in by_tag]
    # A tag that differs where the params agree (another code version) keeps them apart.
    retagged = [JobRecord(r.run_id, r.name, r.params, r.outcome, r.metrics,
                          tags={REPLICATE: r.tags[REPLICATE] + ("x" if k % 2 else "")})
                for k, r in enumerate(records[:4])]
    assert len(replicate_groups(retagged)) == 2


def test_default_metric_is_the_tasks_ranking_metric():
    image = {"sweeplab.task": "image_classification"}
    tail = [JobRecord("a", "a", {}, "ok", {"val_loss": 1.0, "val_loss_tail": 1.1}, tags=image)]
    old = [JobRecord("a", "a", {}, "ok", {"val_loss": 1.0, "test_acc": 0.9})]
    lm = [JobRecord("a", "a", {}, "ok", {"valid_perplexity": 90.0},
                    tags={"sweeplab.task": "language_model"})]
    assert default_metric(tail) == "val_loss_tail"
    assert default_metric(old) == "val_loss"  # runs that predate val_loss_tail
    assert default_metric(lm) == "valid_perplexity"  # runs that predate valid_loss
    lm[0].metrics["valid_loss"] = 4.5
    assert default_metric(lm) == "valid_loss"  # log perplexity: what the statistics run on


def test_a_sweep_over_seeds_alone_shows_each_seed_and_their_mean():
    jobs = [JobRecord(f"r{s}", f"seed={s}", {"seed": str(s), "optimizer.lr": "0.01"}, "ok",
                      {"val_loss_tail": v}, {"val_loss": [(0, 2.3), (10, v)]})
            for s, v in enumerate((0.30, 0.34, 0.28, 0.31))]
    assert config_axes(jobs) == [] and map_axes(jobs) == ("seed", None, [])
    cells = configs(jobs, "val_loss_tail")
    assert len(cells) == 1 and cells[0].summary.n == 4
    assert cells[0].verdict.verdict == stats.BEST
    fig = report_plots.sweep_map(jobs, "val_loss_tail")
    ax = fig.axes[0]
    assert list(ax.lines[0].get_ydata()) == pytest.approx([0.30, 0.34, 0.28, 0.31])
    band = [t.get_text() for t in ax.texts if t.get_text().startswith("mean ")]
    half = stats.summarise([0.30, 0.34, 0.28, 0.31]).half_width
    assert band == [f"mean {report_plots._fmt(0.3075)} ± {report_plots._fmt(half)} "
                    f"(95 %, n=4)"]
    header, rows = report.summary_table(cells, config_axes(jobs))
    assert header[0] == "n" and rows == [["4/4", "0.3075", f"{half:.4g}",
                                          f"{cells[0].summary.sd:.4g}", "4", "0", "0", "best"]]
    report_plots.sweep_curves(jobs, "val_loss_tail")  # draws: one line per seed


@pytest.mark.slow  # about 40 s on 2 busy cores: four real LeNet jobs
def test_a_real_two_seed_sweep_reports_its_configs(tmp_path, capsys, monkeypatch):
    """`python -m runner -m experiment=lenet_clip seed=0,1`: 2 configs x 2 seeds, tiny budget;
    the report the sweep logs pools the seeds of each config (same seeds: paired)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    started = time.monotonic()
    done = run_cli(["-m", "experiment=lenet_clip", "seed=0,1", *TINY], tmp_path, store)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"4-job sweep in {time.monotonic() - started:.1f} s")
    client = MlflowClient(tracking_uri=store)
    parent = next(r for r in client.search_runs(
        [client.get_experiment_by_name("sweeplab").experiment_id],
        "tags.`sweeplab.role` = 'sweep'"))
    records = report.collect(client, parent.info.run_id)
    assert len(records) == 4 and len({r.tags[REPLICATE] for r in records}) == 2
    folder = parent.info.artifact_uri.removeprefix("file://")
    with open(os.path.join(folder, "report", "summary.csv"), newline="") as f:
        rows = list(csv.DictReader(f))  # logged by the sweep itself, at its end
    assert [r["clipping.name"] for r in rows] != [] and len(rows) == 2
    assert {r["n"] for r in rows} == {"2"} and rows[0]["best"] == "true"
    for row in rows:
        tails = [r.value(row["metric"]) for r in records
                 if r.params["clipping.name"] == row["clipping.name"]]
        assert float(row["mean"]) == pytest.approx(np.mean(tails), rel=1e-9)
    if rows[1]["tied_with_best"] != "untestable":  # both seeds finite in both configs
        assert rows[1]["test"] == "paired t-test"
    assert report.main([parent.info.run_id, "--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "val_loss_tail (lower is better) per config, best first" in out


# ---------------------------------------------------------------- `sweeplab report`

@pytest.fixture
def two_sweeps(tmp_path, empty_store):
    """A fresh store with an older and a newer sweep (the newer has 2 jobs)."""
    uri, client = fresh_client(empty_store, tmp_path)
    exp_id = client.create_experiment("sweeplab", artifact_location=str(tmp_path / "art"))
    old_dir, new_dir = tmp_path / "sweeps" / "old", tmp_path / "sweeps" / "new"
    old_dir.mkdir(parents=True), new_dir.mkdir(parents=True)
    old, old_children = make_sweep(client, exp_id, str(old_dir), start=1_000)
    new, _ = make_sweep(client, exp_id, str(new_dir), start=5_000, lrs=("0.001",))
    return {"uri": uri, "client": client, "old": old, "new": new, "old_dir": old_dir,
            "new_dir": new_dir, "old_child": next(iter(old_children.values())),
            "tmp": tmp_path}


def _reported(client, run_id) -> bool:
    return bool(client.list_artifacts(run_id, "report"))


def test_main_defaults_to_the_newest_sweep(two_sweeps, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = report.main(["--tracking-uri", two_sweeps["uri"]])
    out = capsys.readouterr().out
    assert code == 0
    assert _reported(two_sweeps["client"], two_sweeps["new"])
    assert not _reported(two_sweeps["client"], two_sweeps["old"])
    assert two_sweeps["new"] in out and "jobs: 2 (" in out
    assert "swept: clipping.name; seeds: 0\n" in out
    assert f"#/experiments/1/runs/{two_sweeps['new']}" in out
    assert "http://127.0.0.1:5000/#/experiments/" in out
    assert "report.html" in out and str(two_sweeps["tmp"] / "art") in out


def test_main_takes_a_run_id_a_child_id_or_a_sweep_dir(two_sweeps, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, client, old = two_sweeps["uri"], two_sweeps["client"], two_sweeps["old"]
    assert report.main([old, "--tracking-uri", uri, "--metric", "test_acc"]) == 0
    out = capsys.readouterr().out
    assert "test_acc (higher is better)" in out and "diverged" in out and "collapsed" in out
    assert client.get_run(old).data.tags["sweeplab.report_metric"] == "test_acc"
    assert not _reported(client, two_sweeps["new"])
    assert report.main([two_sweeps["old_child"], "--tracking-uri", uri]) == 0  # its parent
    assert client.get_run(old).data.tags["sweeplab.report_metric"] == "val_loss_tail"
    monkeypatch.chdir(two_sweeps["tmp"])
    assert report.main([os.path.join("sweeps", "new"), "--tracking-uri", uri]) == 0
    assert _reported(client, two_sweeps["new"])


def test_main_store_from_env_then_option(two_sweeps, capsys, monkeypatch, tmp_path_factory):
    empty = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(empty)  # no outputs/mlflow.db here: the default store does not exist
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert report.main([]) == 2
    assert "outputs/mlflow.db" in capsys.readouterr().err
    assert not (empty / "outputs").exists()  # never creates a store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", two_sweeps["uri"])
    assert report.main([]) == 0
    assert _reported(two_sweeps["client"], two_sweeps["new"])
    assert f"mlflow ui --backend-store-uri {two_sweeps['uri']}" in capsys.readouterr().out
    # --tracking-uri wins over the variable.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{empty}/nothing.db")
    assert report.main([two_sweeps["old"], "--tracking-uri", two_sweeps["uri"]]) == 0
    assert _reported(two_sweeps["client"], two_sweeps["old"])


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweeplab: error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize("args, says", [
    (["0123456789abcdef0123456789abcdef"], "SWEEP: no run '0123456789abcdef0123456789abcdef'"),
    (["not-a-run"], "SWEEP: no run 'not-a-run'"),
    (["/no/such/sweep/dir"], "SWEEP: no sweep ran in /no/such/sweep/dir"),
    (["--metric", "accuracy"], "--metric: unknown metric 'accuracy'"),
    (["--metric", "valid_perplexity"], "--metric: no job of this sweep logged valid_perplexity"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_main_bad_input_is_one_line_and_exit_2(store, capsys, monkeypatch, args, says):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert report.main(args + ["--tracking-uri", store["uri"]]) == 2
    assert says in _one_error_line(capsys)


def test_main_broken_store_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlflow.db").write_text("not a database")
    assert report.main(["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 2
    assert "file is not a database" in _one_error_line(capsys)
    assert report.main(["--tracking-uri", f"file://{tmp_path}/none"]) == 2
    assert f"no MLflow store at {tmp_path}/none" in _one_error_line(capsys)


def test_main_unreachable_server_fails_fast(capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    assert report.main(["--tracking-uri", f"http://127.0.0.1:{port}"]) == 2
    assert time.monotonic() - started < CHECK_SECONDS + 2
    assert "--tracking-uri: no MLflow server answers at" in _one_error_line(capsys)


def test_main_in_a_subprocess(two_sweeps):
    command = [sys.executable, "-c", "import sys; from runner.report import main; "
               "sys.exit(main(sys.argv[1:]))"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": two_sweeps["uri"],
           "COLUMNS": "160"}
    done = subprocess.run(command + [two_sweeps["old"]], env=env, cwd=two_sweeps["tmp"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "per config, best first" in done.stdout
    table = [line for line in done.stdout.splitlines() if "0.0001" in line and "none" in line]
    assert len(table) == 1 and "untestable (n=1)" in table[0]
    assert "One seed per config" in done.stdout and "seed=0,1,2,3,4" in done.stdout
    bad = subprocess.run(command + ["ffffffffffffffffffffffffffffffff"], env=env,
                         cwd=two_sweeps["tmp"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("sweeplab: error: SWEEP: no run")
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


@pytest.mark.slow
def test_main_against_a_real_tracking_server(tmp_path, empty_store, capsys, monkeypatch):
    """`sweeplab report --tracking-uri http://...`: a real `mlflow server` on 127.0.0.1."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--host",
         "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
         "--artifacts-destination", str(tmp_path / "served")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                check_store(uri, "--tracking-uri", write=False)
                break
            except Exception:
                assert time.monotonic() < deadline and server.poll() is None, "no server"
                time.sleep(0.5)
        client = MlflowClient(tracking_uri=uri)
        exp_id = client.create_experiment("sweeplab")
        parent, _ = make_sweep(client, exp_id, str(tmp_path / "sweep"), start=1_000,
                               lrs=("0.001", "0.05"))
        assert report.main(["--tracking-uri", uri]) == 0
        out = capsys.readouterr().out
        assert f"MLflow UI: {uri}/#/experiments/{exp_id}/runs/{parent}" in out
        assert "collapsed" in out and "diverged" in out
        names = {a.path for a in client.list_artifacts(parent, "report")}
        assert "report/report.html" in names and "report/sweep_map.png" in names
        served = list((tmp_path / "served").rglob("report.html"))
        assert len(served) == 1 and parent in str(served[0])
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
