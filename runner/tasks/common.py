"""What every task does around the engine, for one job or several in one graph.

A task's `run_group` reads as: plan -> build -> open the jobs' runs -> fit (engine calls and
evaluations) -> finish each job. The steps that are the same for images and the language
model live here: a job's state during training (`Job`), opening its run (`open_jobs`),
recording an engine interval (`advance`) and closing the run (`close_job`).
"""
import logging
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from runner import progress
from runner.engine import Interval, Stopwatch, record_interval
from runner.tracking import JobContext, TrackedRun

log = logging.getLogger(__name__)
# Every evaluation's line: to the job's log file (conf/hydra/job_logging), not the console.
steps_log = logging.getLogger("sweeplab.steps")


@dataclass
class Job:
    """One job in the loop: its config, model, run and what it has done so far."""
    cfg: object
    model: object  # its Keras model (holds its final weights after training)
    variable_names: List[str]
    tracked: TrackedRun
    history: dict = field(default_factory=lambda: defaultdict(list))
    step: int = 0
    diverged_at: Optional[int] = None
    label: str = ""  # prefix of its progress lines when several jobs train together
    log: logging.Logger = steps_log

    @property
    def alive(self) -> bool:
        return self.diverged_at is None


def open_jobs(stack: ExitStack, cfgs: Sequence, contexts: Sequence[JobContext], models,
              names: List[str], task_tags: Dict[str, str], derived: Dict[str, int]) -> List[Job]:
    """Each job's MLflow run (closed by `stack`), its derived numbers and its progress bar."""
    jobs = []
    for cfg, context, model in zip(cfgs, contexts, models):
        tracked = stack.enter_context(TrackedRun(cfg, context, task_tags))
        tracked.log_derived(derived)
        jobs.append(Job(cfg, model, names, tracked,
                        label=f"[{tracked.name}] " if len(cfgs) > 1 else "",
                        log=logging.getLogger(context.logger_name or steps_log.name)))
        progress.reporter().job_started(id(tracked), tracked.name, derived["steps"])
    return jobs


def advance(job: Job, interval: Interval, log_every: int) -> None:
    """One engine call's result into the job's history and run; a refused update marks the
    job diverged at that step (its first NaN/Inf step), and it trains no further."""
    record_interval(job.history, job.tracked, interval, job.step, log_every, job.variable_names)
    job.step += interval.applied
    if interval.diverged:
        job.diverged_at = job.step + 1
        log.warning("%sdiverged at step %d (loss or gradient NaN/Inf): update not applied, "
                    "run stopped, marked diverged", job.label, job.diverged_at)


def close_job(job: Job, final: Dict[str, float], outcome: str, figures: Callable,
              watch: Stopwatch, share: int, summary: str) -> None:
    """Final metrics, outcome, figures and timings: what ends one job's run.

    Jobs trained side by side share every training call: each is charged its share of the
    time, and its steps per second are those of the shared calls.
    """
    timings = watch.summary()
    train_seconds = timings.get("time/train", 0.0) + timings.get("time/trace", 0.0)
    final = {**final, "train_seconds": train_seconds / share,
             "steps_per_second": job.step / max(train_seconds, 1e-9)}
    started = time.perf_counter()
    job.tracked.finish(final, outcome=outcome)
    tracking_seconds = time.perf_counter() - started
    started = time.perf_counter()
    figures(job)
    plot_seconds = time.perf_counter() - started
    job.tracked.log_metrics({**{k: v / share for k, v in timings.items()},
                             "time/tracking": tracking_seconds, "time/plots": plot_seconds},
                            step=0)
    job.tracked.flush()
    progress.reporter().job_finished(id(job.tracked), outcome, summary)
