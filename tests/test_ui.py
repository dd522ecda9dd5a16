"""The MLflow UI as a user sees it, in a real browser: a real 4-job sweep run by the CLI, a real
`mlflow ui` on its store (127.0.0.1, a free port), headless Chromium from Debian's `chromium`
package driven by selenium through Debian's `/usr/bin/chromedriver` (nothing is downloaded).

`make test-ui` installs what this needs and runs it. It follows the README's walkthrough from
the link `make ui` prints and saves the README's screenshots to docs/img/.

Selectors (MLflow 3.17's runs table is an ag-grid whose row ids are run ids): rows
`.ag-pinned-left-cols-container [role=row][row-id=RUN_ID]`, a parent's expander the button in
its `attributes.`Run Name`` cell, cells `[col-id="tags.`outcome`"]`; the run page's tab
`[role=tab][id$=-trigger-artifacts]`; artifact tree nodes
`[data-testid=artifact-tree-node][artifact-name=NAME]`; the HTML viewer
`iframe.mlflow-html-iframe`.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Dict, List

import pytest

from conftest import ROOT, chromium_missing, cli_env, run_cli, runs_of, start_chromium
from runner.report import newest_sweep_links

pytestmark = [pytest.mark.slow, pytest.mark.browser]

if chromium_missing():
    pytest.skip(f"{chromium_missing()} (make test-ui does)", allow_module_level=True)
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# The README's 4-job sweep on a tiny budget; the store is the CLI's default, <cwd>/outputs.
SWEEP = ("-m", "model=mlp", "model.hidden=[16]", "optimizer.lr=0.01,0.001",
         "clipping=none,global_norm", "train.steps=20", "train.eval_every=10",
         "train.eval_size=50")
WAIT = 90  # seconds for a page or a server on a loaded 2-core machine
SHOTS = ROOT / "docs" / "img"
ROWS = ".ag-pinned-left-cols-container [role=row]"
ARTIFACTS_TAB = '[role=tab][id$="-trigger-artifacts"]'
TABLE_COLUMNS = ("optimizer.lr", "clipping.name", "val_loss", "outcome")


@dataclass
class Sweep:
    store: str
    parent_id: str
    outcomes: Dict[str, str]  # child run id -> its outcome tag, as the store has it


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Sweep:
    """A real 4-job sweep run by the CLI in a tmp dir, into its default store."""
    cwd = tmp_path_factory.mktemp("ui_sweep")
    done = run_cli(list(SWEEP), cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    store = f"sqlite:///{cwd}/outputs/mlflow.db"
    _, runs = runs_of(store)
    parents = [r for r in runs if r.data.tags.get("sweeplab.role") == "sweep"]
    assert len(parents) == 1
    parent_id = parents[0].info.run_id
    outcomes = {r.info.run_id: r.data.tags["outcome"] for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent_id}
    assert len(outcomes) == 4
    return Sweep(store, parent_id, outcomes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(sweep, tmp_path_factory) -> str:
    """`mlflow ui` on the sweep's store; its base URL. Stopped (its whole process group)
    when the module is done."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("ui_server") / "mlflow_ui.log", "w")
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "mlflow"), "ui", "--backend-store-uri",
         sweep.store, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # The GenAI job runner (a dozen huey processes) serves nothing this test opens.
        env=cli_env(os.path.dirname(log.name), MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT
        while True:
            assert server.poll() is None, f"mlflow ui exited; see {log.name}"
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"mlflow ui not up in {WAIT} s"
                time.sleep(1)
        yield base
    finally:
        _stop_group(server)
        log.close()


def _stop_group(server: subprocess.Popen) -> None:
    """SIGTERM the server's own process group (uvicorn and its worker), wait, then SIGKILL
    whatever of that group is left."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:  # the whole group is gone already
        pass
    server.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory, monkeypatch_module):
    """Headless Debian Chromium with a fresh profile, driven through Debian's chromedriver."""
    monkeypatch_module.setenv("SE_OFFLINE", "true")  # see start_chromium
    driver = start_chromium(tmp_path_factory.mktemp("chromium"))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


# ---------------------------------------------------------------- page helpers

def _wait(driver, condition, what: str, timeout: float = WAIT):
    """condition(driver)'s first truthy value, or a failure that says what never showed."""
    def probe(d):
        try:
            return condition(d)
        except Exception:  # noqa: BLE001 - a stale or half-rendered element: try again
            return None
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(probe)
    except TimeoutException:
        pytest.fail(f"the MLflow UI never showed {what} in {timeout} s (url {driver.current_url})")


def _links(sweep: Sweep, ui: str) -> Dict[str, str]:
    """{'runs table': url, 'sweep run': url, 'its report': url}: what `make ui` prints."""
    lines = newest_sweep_links(sweep.store, ui)
    links = dict(re.findall(r"^\s+([a-z ]+):\s+(\S+)$", "\n".join(lines), re.M))
    assert set(links) == {"runs table", "sweep run", "its report"}, lines
    assert sweep.parent_id in links["sweep run"]
    return links


def _row_ids(driver) -> List[str]:
    """The runs table's visible rows, top to bottom, as run ids."""
    rows = driver.find_elements(By.CSS_SELECTOR, ROWS)
    return [r.get_attribute("row-id")
            for r in sorted(rows, key=lambda r: int(r.get_attribute("row-index")))]


def _rows_if(driver, accept) -> List[str]:
    """The visible rows' run ids when accept(them) holds, else nothing (wait more)."""
    ids = _row_ids(driver)
    return ids if accept(ids) else []


def _close_assistant(driver) -> None:
    """Close the 'MLflow Assistant' side panel MLflow 3 opens by default (it hides columns)."""
    for button in driver.find_elements(By.CSS_SELECTOR, 'button[aria-label="Close"]'):
        if button.is_displayed():
            button.click()
            return


def _open_runs_table(driver, sweep: Sweep, ui: str) -> None:
    driver.get(_links(sweep, ui)["runs table"])
    _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, _row(sweep.parent_id)),
          "the sweep's parent row")
    _close_assistant(driver)


def _row(run_id: str) -> str:
    return f'{ROWS}[row-id="{run_id}"]'


def _expand(driver, parent_id: str) -> None:
    """Click the [+] before the parent's name, which shows its children under it."""
    driver.find_element(By.CSS_SELECTOR,
                        f'{_row(parent_id)} [col-id="attributes.`Run Name`"] button').click()


def _choose_columns(driver, hide=("Dataset", "Source", "Models"), show=TABLE_COLUMNS) -> None:
    """Columns -> untick `hide`, tick `show` (search box, then the entry), as a user would."""
    driver.find_element(By.XPATH, "//button[.//*[normalize-space(text())='Columns']]").click()
    search = _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR,
                                                    'input[placeholder="Search columns"]'),
                   "the column chooser")
    for name in (*hide, *show):
        search.send_keys(Keys.CONTROL, "a")
        search.send_keys(name)
        entry = _wait(driver, lambda d: d.find_element(
            By.XPATH, f"//span[contains(@class, 'tree-node-content-wrapper')]"
                      f"[normalize-space(.)='{name}']"), f"column {name!r} in the chooser")
        entry.click()
    search.send_keys(Keys.ESCAPE)


def _cell(driver, run_id: str, column: str) -> str:
    return driver.find_element(
        By.CSS_SELECTOR, f'.ag-center-cols-container [role=row][row-id="{run_id}"] '
                         f'[col-id="{column}"]').text.strip()


# ---------------------------------------------------------------- the walkthrough

def test_runs_table_nests_the_jobs_under_the_sweep(sweep, ui, browser):
    """The printed link opens the runs table (not the GenAI overview); the parent row expands
    to exactly its 4 jobs, and the chosen columns show each job's lr, clipping and outcome."""
    _open_runs_table(browser, sweep, ui)
    assert browser.title.startswith("Runs"), browser.title
    assert not set(_row_ids(browser)) & set(sweep.outcomes), "children shown before expanding"

    _expand(browser, sweep.parent_id)
    rows = _wait(browser, lambda d: _rows_if(d, lambda ids: len(ids) == 5),
                 "the parent's 4 children after expanding it")
    assert rows[0] == sweep.parent_id
    assert set(rows[1:]) == set(sweep.outcomes)

    _choose_columns(browser)
    for run_id, outcome in sweep.outcomes.items():
        _wait(browser, lambda d: _cell(d, run_id, "tags.`outcome`") == outcome,
              f"outcome {outcome!r} in the row of {run_id}")
        assert _cell(browser, run_id, "params.`clipping.name`") in ("none", "global_norm")
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / "ui_runs_table.png"))

    browser.find_element(By.CSS_SELECTOR,
                         f'{_row(sweep.parent_id)} a[href$="/runs/{sweep.parent_id}"]').click()
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ARTIFACTS_TAB),
          "the parent's run page after clicking its name")


def test_filter_on_outcome_keeps_those_jobs(sweep, ui, browser):
    """`tags.outcome = '<x>'` in the search box leaves the jobs with that outcome (under
    their parent, which MLflow keeps so they stay nested)."""
    outcome = sorted(sweep.outcomes.values())[0]
    wanted = {run_id for run_id, o in sweep.outcomes.items() if o == outcome}
    _open_runs_table(browser, sweep, ui)
    search = browser.find_element(By.CSS_SELECTOR, 'input[data-testid="search-box"]')
    search.send_keys(f"tags.outcome = '{outcome}'", Keys.ENTER)
    _wait(browser, lambda d: "searchFilter=tags.outcome" in d.current_url, "the filter applied")
    expected = {sweep.parent_id} | wanted
    shown = _wait(browser, lambda d: _rows_if(d, lambda ids: set(ids) <= expected),
                  "the filtered table")
    if shown == [sweep.parent_id]:  # the parent is collapsed (it is, on a first visit)
        _expand(browser, sweep.parent_id)
    _wait(browser, lambda d: set(_row_ids(d)) == expected,
          f"the parent with its {len(wanted)} {outcome!r} children only")


def test_parent_run_report_opens_in_the_artifact_viewer(sweep, ui, browser):
    """The printed sweep-run link -> Artifacts -> report/report.html renders the report: its
    heading, both embedded figures decoded, one table row per job; sweep_map.png previews."""
    links = _links(sweep, ui)
    browser.get(links["sweep run"])
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, ARTIFACTS_TAB),
          "the run page's Artifacts tab").click()
    _close_assistant(browser)
    node = '[data-testid="artifact-tree-node"][artifact-name="{}"]'
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, node.format("report")),
          "the report/ folder in the artifact tree").click()
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, node.format("report.html")),
          "report.html in the artifact tree").click()
    frame = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "iframe.mlflow-html-iframe"),
                  "the HTML viewer")
    browser.switch_to.frame(frame)
    try:
        heading = _wait(browser, lambda d: d.find_element(By.TAG_NAME, "h1"), "the report")
        assert heading.text == "Sweep report"
        widths = browser.execute_script(
            "return Array.from(document.images, i => i.complete ? i.naturalWidth : -1)")
        assert len(widths) == 2 and min(widths) > 100, widths
        # one row per job in the runs table (the configs table above it has one per config)
        assert len(browser.find_elements(By.CSS_SELECTOR, "table.runs tr")) == 1 + len(sweep.outcomes)
    finally:
        browser.switch_to.default_content()
    time.sleep(1)  # let the iframe paint before the screenshot
    browser.save_screenshot(str(SHOTS / "ui_parent_report.png"))

    browser.find_element(By.CSS_SELECTOR, node.format("sweep_map.png")).click()
    # The image viewer's <img> is named after the artifact; naturalWidth > 0 once decoded.
    _wait(browser, lambda d: int(d.find_element(
        By.CSS_SELECTOR, 'img[alt="report/sweep_map.png"]').get_attribute("naturalWidth")) > 100,
        "the sweep_map.png preview")

    browser.get("about:blank")  # a fresh page load, as when the link is opened in a new tab
    browser.get(links["its report"])  # the printed deep link opens the viewer directly
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "iframe.mlflow-html-iframe"),
          "the HTML viewer from the report link")
