"""The sweep report against a real MLflow sqlite store: a parent run with real children.

The sweep is built with MlflowClient exactly as the jobs write it (params are the real
composed config, flattened as tracking.py logs it), so collect() reads what a sweep leaves.
"""
import base64
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
from matplotlib.image import imread
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from conftest import ROOT, compose_cfg
from runner import report, report_plots
from runner.store import CHECK_SECONDS, check as check_store
from runner.results import (JobRecord, axis_values, default_metric, facets, grid, map_axes,
                            ranked, swept_axes)
from runner.tracking import flatten

LRS = ("0.0001", "0.001", "0.01", "0.05")
CLIPS = ("none", "value")
DIVERGED_JOB = ("0.05", "none")  # blows up at step 37
COLLAPSED_JOB = ("0.05", "value")  # stays at chance


@functools.lru_cache(maxsize=None)
def _params(lr: str, clip: str, *extra: str):
    cfg = compose_cfg("experiment=lenet_clip", f"optimizer.lr={lr}", f"clipping={clip}", *extra)
    return flatten(OmegaConf.to_container(cfg, resolve=True))


def _job_numbers(lr: str, clip: str, steps: int = 100):
    """A plausible val_loss curve per eval (every 10 steps) and final metrics for one job."""
    evals = list(range(0, steps + 1, 10))
    if (lr, clip) == COLLAPSED_JOB:
        loss = [math.log(10) - 0.0002 * k for k in range(len(evals))]
        return evals, loss, {"test_acc": 0.098, "test_loss": 2.302}, "collapsed"
    final = 0.15 + 0.3 * abs(math.log10(float(lr)) + 2.5) + (0.04 if clip == "value" else 0)
    loss = [final + (math.log(10) - final) * math.exp(-s / 30) for s in evals]
    if (lr, clip) == DIVERGED_JOB:
        return evals[:4], loss[:4], {"diverged_at_step": 37}, "diverged"
    return evals, loss, {"test_acc": 1 - final / 3, "test_loss": final * 1.05}, "ok"


def make_sweep(client, exp_id, sweep_dir, start, lrs=LRS, clips=CLIPS, extra=()):
    """A parent tagged as a sweep and one FINISHED child per (lr, clipping); returns ids."""
    parent = client.create_run(exp_id, run_name="sweep experiment=lenet_clip", start_time=start,
                               tags={"sweeplab.role": "sweep", "sweeplab.sweep_dir": sweep_dir,
                                     "sweeplab.overrides": "experiment=lenet_clip"}).info.run_id
    children = {}
    for k, (clip, lr) in enumerate((c, lr) for c in clips for lr in lrs):
        evals, loss, final, outcome = _job_numbers(lr, clip)
        child = client.create_run(exp_id, run_name=f"lr={lr},clipping={clip}",
                                  start_time=start + k + 1,
                                  tags={"mlflow.parentRunId": parent, "outcome": outcome,
                                        "sweeplab.sweep_id": parent}).info.run_id
        params = [Param(k_, v) for k_, v in _params(lr, clip, *extra).items()]
        metrics = ([Metric("val_loss", v, 0, s) for s, v in zip(evals, loss)]
                   + [Metric("val_acc", 1 - v / 3, 0, s) for s, v in zip(evals, loss)]
                   + [Metric(n, v, 0, 0) for n, v in final.items()])
        client.log_batch(child, metrics=metrics, params=params)
        client.set_terminated(child, "FINISHED")
        children[(lr, clip)] = child
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
    diverged = [r for r in records if r.outcome == "diverged"]
    assert [r.diverged_at for r in diverged] == [37]


def test_collect_gives_back_infinities_mlflow_clamped(tmp_path, empty_store):
    uri, client = fresh_client(empty_store, tmp_path)
    exp_id = client.create_experiment("sweeplab", artifact_location=str(tmp_path / "art"))
    parent, children = make_sweep(client, exp_id, str(tmp_path), 1_000, lrs=("0.001",))
    child = children[("0.001", "none")]
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
    jobs = [JobRecord(f"r{k}", f"r{k}", _params(lr, clip), "ok", {"val_loss": 1.0})
            for k, (lr, clip) in enumerate((lr, c) for c in ("none", "norm", "global_norm")
                                           for lr in ("0.001", "0.01"))]
    assert len({j.params["clipping.clip_norm"] for j in jobs}) == 2
    assert swept_axes(jobs) == ["optimizer.lr", "clipping.name"]
    # A key set on its own in a sweep is an axis even inside the group.
    tuned = [JobRecord(f"r{n}", f"r{n}", _params("0.01", "norm", f"clipping.clip_norm={n}"),
                       "ok", {}) for n in (0.5, 1.0, 2.0)]
    assert swept_axes(tuned) == ["clipping.clip_norm"]


def test_a_partial_grid_keeps_axes_of_different_groups():
    # Two jobs of an lr x clipping sweep: lr and clipping move together, both stay axes.
    jobs = [JobRecord("a", "a", _params("0.001", "none"), "ok", {}),
            JobRecord("b", "b", _params("0.01", "value"), "ok", {})]
    assert swept_axes(jobs) == ["optimizer.lr", "clipping.name"]


def test_grid_cells_equal_each_childs_metric(records):
    for metric in ("val_loss", "test_acc"):
        cells = grid(records, metric)
        assert cells.values.shape == (len(CLIPS), len(LRS))
        for record in records:
            i = CLIPS.index(record.params["clipping.name"])
            j = LRS.index(record.params["optimizer.lr"])
            assert cells.jobs[i][j] is record
            expected = record.metrics.get(metric, math.nan)
            assert cells.values[i, j] == pytest.approx(expected, nan_ok=True)
    cells = grid(records, "val_loss")
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
    cells = grid(records, "val_loss")
    for i, clip in enumerate(CLIPS):
        for j, lr in enumerate(LRS):
            job = cells.jobs[i][j]
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


def test_one_swept_axis_is_a_line_and_a_third_axis_makes_facets(records):
    one_axis = [r for r in records if r.params["clipping.name"] == "value"]
    fig = report_plots.sweep_map(one_axis, "val_loss")
    assert len(fig.axes) == 1 and fig.axes[0].get_xscale() == "log"
    line = fig.axes[0].lines[0]
    finite = [r.value("val_loss") for r in one_axis]
    assert list(line.get_ydata()) == pytest.approx(finite)
    three = [JobRecord(r.run_id + s, r.name, {**r.params, "seed": s}, r.outcome, r.metrics,
                       r.histories) for s in ("0", "1", "2") for r in records]
    assert swept_axes(three) == ["optimizer.lr", "clipping.name", "seed"]
    assert [label for label, _ in facets(three, ["seed"])] == ["seed=0", "seed=1", "seed=2"]
    fig = report_plots.sweep_map(three, "val_loss")
    maps = [ax for ax in fig.axes if ax.get_title().startswith("seed=")]
    assert len(maps) == 3
    for ax, (_, jobs) in zip(maps, facets(three, ["seed"])):  # each facet shows its own jobs
        assert len(ax.texts) == len(jobs) == len(records)


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
    lines = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert len(lines) == len(records)
    best = ranked(records, "test_acc")
    assert [line.split(" | ")[1] for line in lines] == [r.name for r in best]
    diverged_row = lines[-1].split(" | ")
    assert diverged_row[-3] == "diverged" and diverged_row[-1].rstrip(" |") == "37"


def test_log_report_puts_four_artifacts_on_the_parent(store):
    where = report.log_report(store["client"], store["parent"])
    assert where.metric == "val_loss"
    names = {a.path for a in store["client"].list_artifacts(store["parent"], "report")}
    assert names == {"report/sweep_map.png", "report/sweep_curves.png", "report/report.html",
                     "report/report.md"}
    assert where.local_dir and os.path.isdir(where.local_dir)
    assert imread(os.path.join(where.local_dir, "sweep_map.png")).shape[0] > 100
    assert store["client"].get_run(store["parent"]).data.tags["sweeplab.report_metric"] == \
        "val_loss"
    for child in store["children"].values():  # children untouched
        assert not store["client"].list_artifacts(child)


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
    assert two_sweeps["new"] in out and "jobs: 2 (" in out and "swept: clipping.name\n" in out
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
    assert client.get_run(old).data.tags["sweeplab.report_metric"] == "val_loss"
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
    assert "best first" in done.stdout
    table = [line for line in done.stdout.splitlines() if "0.0001" in line and "none" in line]
    assert len(table) == 1 and " ok " in table[0]
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
