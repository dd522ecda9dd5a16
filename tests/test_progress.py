"""runner/progress.py in-process: the lines without a terminal, the bars' one line per finished
job, and a worker's events replayed by the launcher."""
import io
import logging

import pytest
from rich.console import Console

from runner import progress


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="sweeplab.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "sweeplab.progress"]


def test_a_job_prints_its_start_three_milestones_and_its_end(lines):
    reporter = progress.LineReporter()
    reporter.sweep_started(2)
    reporter.job_started("a", "lr=0.1", 100)
    for step in range(1, 101):
        reporter.job_step("a", step, 1.0 / step, 0.5)
    reporter.job_finished("a", "ok", "val_loss 0.1")
    printed = lines()
    assert printed[0] == "job lr=0.1: started, 100 steps"
    assert [line.split(":")[1].split()[1] for line in printed[1:4]] == \
        ["25/100", "50/100", "75/100"]
    assert printed[1].endswith("train_loss 0.0400  val_acc 0.5000")
    assert printed[4].startswith("job lr=0.1: ok in ") and printed[4].endswith(
        "val_loss 0.1 (1/2 of the sweep)")
    assert len(printed) == 5


def test_a_big_step_passes_several_milestones_with_one_line(lines):
    reporter = progress.LineReporter()
    reporter.job_started("a", "x", 100)
    reporter.job_step("a", 80, 0.5, 0.5)
    reporter.job_step("a", 90, 0.5, 0.5)
    assert len(lines()) == 2  # the start, and one line at step 80 for 25, 50 and 75 %


def test_events_of_unknown_jobs_are_ignored(lines):
    reporter = progress.LineReporter()
    reporter.job_step("nobody", 5, 0.1, 0.1)
    reporter.job_finished("nobody", "ok", "")
    assert lines() == [] and reporter.done == 0


def test_bars_leave_one_line_per_finished_job_and_count_the_sweep():
    reporter = progress.BarReporter()
    out = io.StringIO()
    reporter.bars.live.console = Console(file=out, force_terminal=False, width=100)
    reporter.sweep_started(3)
    reporter.job_started("a", "lr=0.1", 10)
    reporter.job_step("a", 5, 0.3, 0.7)
    reporter.job_finished("a", "ok", "val_loss 0.2")
    assert reporter.done == 1
    assert reporter.bars.tasks[0].completed == 1 and len(reporter.bars.tasks) == 1
    reporter.close()
    assert "ok  lr=0.1: val_loss 0.2" in out.getvalue()


def test_a_workers_events_reach_the_launchers_reporter_keyed_by_pid(monkeypatch, lines):
    sent = []
    forwarding = progress.ForwardingReporter(sent.append)
    forwarding.job_started("k", "lr=0.1", 4)
    forwarding.job_finished("k", "ok", "done")
    monkeypatch.setattr(progress, "_reporter", progress.LineReporter())
    for event in sent:
        progress.replay(event)
    assert lines()[0] == "job lr=0.1: started, 4 steps"
    assert lines()[1].startswith("job lr=0.1: ok in ")
    assert sent[0][1][0][1] == "k"  # (pid, key)
