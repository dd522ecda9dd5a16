"""`make ui`'s links to the newest sweep (runner.report.newest_sweep_links), against real
sqlite stores; the browser test (test_ui.py) opens them in a real MLflow UI."""
import os

from mlflow.tracking import MlflowClient

from runner.report import newest_sweep_links

UI = "http://127.0.0.1:5099"


def _sweep(client, exp_id, start, name):
    """A parent run tagged as a sweep, with one child, as the runner leaves them."""
    parent = client.create_run(exp_id, run_name=name, start_time=start,
                               tags={"sweeplab.role": "sweep"}).info.run_id
    client.create_run(exp_id, run_name="lr=0.01", start_time=start + 1,
                      tags={"mlflow.parentRunId": parent})
    return parent


def test_links_point_at_the_newest_sweeps_table_run_and_report(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("sweeplab", artifact_location=str(tmp_path / "art"))
    _sweep(client, exp_id, 1_000, "sweep old")
    newest = _sweep(client, exp_id, 5_000, "sweep new")
    client.create_run(exp_id, run_name="a single run", start_time=9_000)  # not a sweep

    lines = newest_sweep_links(uri, UI + "/")
    run_page = f"{UI}/#/experiments/{exp_id}/runs/{newest}"
    assert lines == [
        "Newest sweep: sweep new",
        f"  runs table:  {UI}/#/experiments/{exp_id}/runs?workflowType=machine_learning",
        f"  sweep run:   {run_page}?workflowType=machine_learning",
        f"  its report:  {run_page}/artifacts/report/report.html?workflowType=machine_learning"]


def test_no_store_no_sweep_or_a_broken_store_is_one_line_and_creates_nothing(tmp_path):
    missing = tmp_path / "outputs" / "mlflow.db"
    [line] = newest_sweep_links(f"sqlite:///{missing}", UI)
    assert line.startswith(f"No sweep yet: {missing} does not exist")
    assert not os.path.exists(missing)

    empty = f"sqlite:///{tmp_path}/empty.db"
    MlflowClient(tracking_uri=empty).create_experiment("sweeplab")
    assert newest_sweep_links(empty, UI) == [
        f"No sweep yet in {empty} (`make run` or `sweeplab -m ...` runs one)."]

    (tmp_path / "broken.db").write_text("not a database")
    [line] = newest_sweep_links(f"sqlite:///{tmp_path}/broken.db", UI)
    assert line.startswith("No sweep links:") and "file is not a database" in line
