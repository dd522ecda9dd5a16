"""What a person watching a run or a sweep sees: progress bars on a terminal, a few lines elsewhere.

On a terminal (stderr is a TTY): one bar per job (step, train loss, validation accuracy, ETA)
and, in a sweep, one for the sweep (jobs done / total, ETA). Otherwise (CI, a log file): a
line when a job starts, at 25 / 50 / 75 % of its steps, and when it ends. Every evaluation line
still goes to the job's log file (the `sweeplab.steps` logger, see conf/hydra/job_logging).
One reporter per process (`reporter()`): the sweep callback, the CLI and the tasks share it.
"""
import logging
import os
import sys
import time
from typing import Dict, Optional

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

log = logging.getLogger("sweeplab.progress")
MILESTONES = (0.25, 0.5, 0.75)  # the lines a job prints between start and end without a TTY


class LineReporter:
    """A few log lines per job: for CI and log files, where bars would be noise."""

    def __init__(self):
        self.jobs: Dict[object, dict] = {}  # by a key the task picks per job
        self.total: Optional[int] = None
        self.done = 0
        self.started = time.monotonic()

    def sweep_started(self, total: Optional[int]) -> None:
        self.total, self.done, self.started = total, 0, time.monotonic()

    def job_started(self, key, name: str, steps: int) -> None:
        self.jobs[key] = {"name": name, "steps": steps, "next": 0, "t0": time.monotonic()}
        log.info("job %s: started, %d steps", name, steps)

    def job_step(self, key, step: int, train_loss: float, val_acc: float) -> None:
        job = self.jobs.get(key)
        if job is None or job["next"] >= len(MILESTONES):
            return
        if step >= MILESTONES[job["next"]] * job["steps"]:
            while job["next"] < len(MILESTONES) and step >= MILESTONES[job["next"]] * job["steps"]:
                job["next"] += 1
            log.info("job %s: step %d/%d  train_loss %.4f  val_acc %.4f", job["name"], step,
                     job["steps"], train_loss, val_acc)

    def job_finished(self, key, outcome: str, summary: str) -> None:
        job = self.jobs.pop(key, None)
        if job is None:
            return
        self.done += 1
        of = f" ({self.done}/{self.total} of the sweep)" if self.total else ""
        log.info("job %s: %s in %.1f s, %s%s", job["name"], outcome,
                 time.monotonic() - job["t0"], summary, of)

    def close(self) -> None:
        pass


class BarReporter(LineReporter):
    """rich progress bars on stderr: one per job and one for the sweep."""

    def __init__(self):
        super().__init__()
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                             TextColumn("ETA"), TimeRemainingColumn(),
                             console=Console(stderr=True), transient=False)
        self.sweep_bar = None
        self.job_bars: Dict[object, int] = {}

    def _start(self) -> None:
        if not self.bars.live.is_started:
            self.bars.start()

    def sweep_started(self, total: Optional[int]) -> None:
        super().sweep_started(total)
        self._start()
        self.sweep_bar = self.bars.add_task("sweep", total=total, info="jobs")

    def job_started(self, key, name: str, steps: int) -> None:
        self._start()
        self.jobs[key] = {"name": name, "steps": steps, "next": 0, "t0": time.monotonic()}
        self.job_bars[key] = self.bars.add_task(f"  {name}", total=steps, info="")

    def job_step(self, key, step: int, train_loss: float, val_acc: float) -> None:
        if key in self.job_bars:
            self.bars.update(self.job_bars[key], completed=step,
                             info=f"loss {train_loss:.3f} acc {val_acc:.3f}")

    def job_finished(self, key, outcome: str, summary: str) -> None:
        bar = self.job_bars.pop(key, None)
        job = self.jobs.pop(key, None)
        if bar is not None:
            # A finished job's bar gives way to one line: 28 bars would not fit on a screen.
            self.bars.remove_task(bar)
            self.bars.console.print(f"  {outcome:>9}  {job['name']}: {summary}", highlight=False)
        self.done += 1
        if self.sweep_bar is not None:
            self.bars.update(self.sweep_bar, completed=self.done)

    def close(self) -> None:
        if self.bars.live.is_started:
            self.bars.stop()


class ForwardingReporter:
    """In a worker process: each event goes to the launcher's reporter (`replay` there), so
    one process draws the bars and counts the sweep's jobs. Keys get the worker's pid: two
    workers may pick the same key for different jobs."""

    def __init__(self, send):
        self.send = send

    def sweep_started(self, total: Optional[int]) -> None:
        pass

    def job_started(self, key, name: str, steps: int) -> None:
        self.send(("job_started", ((os.getpid(), key), name, steps)))

    def job_step(self, key, step: int, train_loss: float, val_acc: float) -> None:
        self.send(("job_step", ((os.getpid(), key), step, train_loss, val_acc)))

    def job_finished(self, key, outcome: str, summary: str) -> None:
        self.send(("job_finished", ((os.getpid(), key), outcome, summary)))

    def close(self) -> None:
        pass


def forward_to(send) -> None:
    """This (worker) process reports through `send(event)` instead of drawing anything."""
    global _reporter
    _reporter = ForwardingReporter(send)


def replay(event) -> None:
    """A worker's event, shown by this process's reporter."""
    method, args = event
    if method in ("job_started", "job_step", "job_finished"):
        getattr(reporter(), method)(*args)


_reporter = None


def reporter():
    """This process's reporter: bars when stderr is a terminal, lines otherwise."""
    global _reporter
    if _reporter is None:
        _reporter = BarReporter() if sys.stderr.isatty() else LineReporter()
    return _reporter
