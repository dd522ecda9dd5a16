"""A job's lifecycle, written once: accept -> train a group -> conclude.

- `accept`: validate the config (before TensorFlow loads), skip a job whose config already has
  a FINISHED run in this sweep, resolve the config and build the job's `JobContext`.
- `train`: a group of accepted jobs through `runner.tasks.run_group`, the one entry into
  training (one job, or several sharing a graph); whatever stops the group becomes each job's
  result: a value, `Rejected`, `Failed`, `Killed`. `Lost` is what a launcher gives the jobs of
  a worker process that died.
- `conclude`: each result becomes the job's return value, its one line and its exit code. A
  job that failed for a full disk stops the sweep there (`sweep.Abandoned`): its other jobs
  would fail the same way, and Hydra's set-up of the next one raises.

The CLI's task function runs one job through all three in Hydra's job; the stacked launcher
accepts every job of a batch, trains them in groups (in worker processes, runner/pool.py) and
concludes each. A job never raises into Hydra: a failure ends its run FAILED and the sweep
goes on.
"""
import logging
import logging.config
import math
import socket
import sys
from contextlib import nullcontext
from copy import deepcopy
from dataclasses import dataclass, field, replace
from typing import Dict, List, NamedTuple, Optional, Sequence, Union

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import env_override
from omegaconf import OmegaConf

from runner import data, joblog, resume, signals, store, sweep, tags, tasks
from runner.config import ConfigError, validate
from runner.outbox import one_line
from runner.tracking import (JobContext, Stopped, config_hash, experiment_id, record_failure,
                             recorded_run, tracking_uri)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- results

@dataclass(frozen=True)
class Rejected:
    """A bad config value: one line naming the option and the fix."""
    message: str


@dataclass(frozen=True)
class Failed:
    """The job raised; `run` is its FAILED run (None: its run, id unknown here)."""
    error: str
    run: Optional[str] = None
    disk_full: bool = False  # no room to write: the sweep stops here


@dataclass(frozen=True)
class Killed:
    """A signal stopped the job (its run is KILLED) or came before it started."""
    signum: int


@dataclass(frozen=True)
class Lost:
    """The process training the job died without closing its run."""
    why: str


Result = Union[float, Rejected, Failed, Killed, Lost]


class Concluded(NamedTuple):
    value: float  # what Hydra gets as the job's return value (NaN if it did not train)
    exit_code: int  # 0; 1 failed or lost; 2 rejected; 128 + signal


# ---------------------------------------------------------------- accept

@dataclass
class Job:
    """A job as its lifecycle sees it. `early` is set when accepting already concluded it
    (Rejected, or the objective of its FINISHED run); otherwise it trains."""
    cfg: object
    context: JobContext
    num: int = 0  # hydra.job.num: names its logger when it shares a process
    early: Optional[Result] = None

    @property
    def name(self) -> str:
        return " ".join(self.context.overrides) or "(defaults)"


def context_from_hydra() -> JobContext:
    """This job's overrides, log file and (in a sweep) parent run, from Hydra's job config."""
    if not HydraConfig.initialized():
        return JobContext(should_stop=signals.received)
    hydra_cfg = HydraConfig.get()
    parent, common, uri = sweep.job_sweep_context()
    output_dir = hydra_cfg.runtime.output_dir
    return JobContext(overrides=tuple(hydra_cfg.overrides.task), parent_run_id=parent,
                      common_overrides=tuple(common),
                      log_file=f"{output_dir}/{hydra_cfg.job.name}.log", output_dir=output_dir,
                      should_stop=signals.received, tracking_uri=uri)


def accept(cfg, context: Optional[JobContext] = None, check_store: bool = False) -> Job:
    """Validate (and with `check_store`, check the store: a sweep checks it once, before its
    first job), skip a finished job, resolve the config. Inside Hydra's job by default."""
    context = context or context_from_hydra()
    # hydra.job.num exists in a multirun only
    num = HydraConfig.get().job.get("num") if HydraConfig.initialized() else None
    try:
        validate(cfg)
        if check_store:
            store.check_store(cfg.mlflow)
    except ConfigError as err:
        return Job(cfg, context, num or 0, early=Rejected(str(err)))
    done = resume.finished_value(cfg, context)
    if done is not None:
        return Job(cfg, context, num or 0, early=done)
    resolved = deepcopy(cfg)  # `${hydra:...}` resolves only here, inside the job's config
    OmegaConf.resolve(resolved)
    return Job(resolved, context, num or 0)


def repeats(jobs: Sequence[Job]) -> Dict[int, Job]:
    """{index of a job: the earlier job of the batch with the same config}: a repeated value
    in a sweep list (lr=0.01,0.001,0.01) trains once, as the basic launcher trains it once
    and then finds it finished."""
    first: Dict[str, Job] = {}
    found = {}
    for i, job in enumerate(jobs):
        if job.early is None:
            twin = first.setdefault(config_hash(job.cfg), job)
            if twin is not job:
                found[i] = twin
                print(f"job #{job.num} repeats the config of job #{twin.num}: trained once, "
                      f"both get its result", flush=True)
    return found


# ---------------------------------------------------------------- train

@dataclass
class Group:
    """Accepted jobs trained together (picklable: a worker process receives it)."""
    jobs: List[Job]
    alone: Optional[str] = None  # why a job trains alone (None: stacked, or the CLI's job)
    env: Dict[str, str] = field(default_factory=dict)  # the jobs' hydra.job.env_set
    # Set when the process is not the jobs' own (a launcher's): where each one's lines go.
    route: Optional[joblog.Routing] = None
    tags: Dict[str, str] = field(default_factory=dict)  # on each job's run, e.g. how it trained


def train(group: Group) -> List[Result]:
    """Train the group; one result per job, in order. Never raises (but KeyboardInterrupt)."""
    if signals.received():
        for job in group.jobs:
            print(f"sweeplab: skipped (stopping on {signals.name(signals.received())}): "
                  f"{job.name}", file=sys.stderr, flush=True)
        return [Killed(signals.received())] * len(group.jobs)
    # The process: lets resume see it died.
    extra = {**group.tags, tags.PROCESS: resume.this_process()}
    contexts = [replace(job.context, extra_tags={**(job.context.extra_tags or {}), **extra})
                for job in group.jobs]
    shared = group.alone is None and len(group.jobs) > 1
    routed = (nullcontext(contexts) if group.route is None else joblog.job_files(
        group.route, [(job.num, c) for job, c in zip(group.jobs, contexts)], shared))
    with env_override(group.env), routed as contexts:
        _say_how(group, contexts, shared)
        cfgs = [job.cfg for job in group.jobs]
        try:
            # The group's dataset (one for all: it is part of the graph), read before
            # TensorFlow loads: a damaged file is one line, not TensorFlow's start-up first.
            data.read_ahead(cfgs[0])
            return [float(value) for value in tasks.run_group(cfgs, contexts)]
        except ConfigError as err:  # found while training, e.g. a batch larger than the data
            return [Rejected(str(err))] * len(cfgs)
        except Stopped as stop:  # SIGINT/SIGTERM: the runs are closed KILLED
            return [Killed(stop.signum)] * len(cfgs)
        except Exception as err:  # this group's jobs fail; the sweep's other groups go on
            # The traceback is in each FAILED run's error.txt; the console gets one line.
            full = store.is_disk_full(err)
            if recorded_run(err) is None:  # it broke before the jobs' runs were opened
                return [Failed(one_line(err), _record_failure(cfg, c, err), full)
                        for cfg, c in zip(cfgs, contexts)]
            return [Failed(one_line(err), recorded_run(err) if len(cfgs) == 1 else None, full)
                    for _ in cfgs]


def worker_setup(console: Optional[dict]) -> None:
    """In a worker process, while its launcher composes the jobs: the console logging of a
    process that trains several jobs (runner.joblog), then TensorFlow, the slow import."""
    if console is not None:
        logging.config.dictConfig(console)
    import tensorflow  # noqa: F401  (here, not at the top: the CLI's --help must stay fast)


def _say_how(group: Group, contexts: List[JobContext], shared: bool) -> None:
    """Which jobs share a graph, or why one trains alone (a launcher's groups only)."""
    if group.route is None:
        return
    if not shared:
        log.info("job #%d trains alone: %s", group.jobs[0].num, group.alone)
        return
    nums = ", ".join(f"#{job.num}" for job in group.jobs)
    log.info("jobs %s train stacked in one graph", nums)
    for context in contexts:
        logging.getLogger(context.logger_name).info(
            "stacked: %d jobs (%s) train in one graph", len(contexts), nums)


def _record_failure(cfg, context: JobContext, err: BaseException) -> str:
    """A FAILED run for a job that broke before its run existed (best effort)."""
    try:
        return record_failure(cfg, context, err)
    except Exception as tracking_err:
        return f"(not recorded: {one_line(tracking_err)})"


# ---------------------------------------------------------------- conclude

def conclude(job: Job, result: Result, in_sweep: bool) -> Concluded:
    """The job's return value and exit code from its result; its one line on stderr."""
    if isinstance(result, Rejected):
        print(f"sweeplab: error: {store.redact(result.message)}", file=sys.stderr, flush=True)
        if in_sweep and job.context.output_dir:  # the sweep exits 2 at its end
            sweep.mark_rejected(job.context.output_dir, result.message)
        return Concluded(math.nan, 2)
    if isinstance(result, Failed):
        line = (f"job {job.name} failed: {result.error}; "
                f"{f'run {result.run}' if result.run else 'its run'} is FAILED, traceback in "
                f"its error.txt")
        if result.disk_full and in_sweep:  # the sweep's one line, once its parent is closed
            raise sweep.Abandoned(f"{line}; the disk is full: the sweep stops, its other "
                                  f"jobs are not run")
        print(f"sweeplab: error: {line}", file=sys.stderr, flush=True)
        return Concluded(math.nan, 1)
    if isinstance(result, Lost):
        run = close_lost(job, result.why)
        print(f"sweeplab: error: job {job.name} lost: {result.why}; {run} is FAILED "
              f"(outcome=lost)", file=sys.stderr, flush=True)
        return Concluded(math.nan, 1)
    if isinstance(result, Killed):  # its run is KILLED; the sweep (or main) reports the signal
        return Concluded(math.nan, 128 + result.signum)
    return Concluded(float(result), 0)


def close_lost(job: Job, why: str) -> str:
    """Close the RUNNING runs a dead process left for this job FAILED (`outcome=lost`), or
    record a FAILED run if it died before making one; says which run(s)."""
    try:
        uri = job.context.tracking_uri or tracking_uri(job.cfg.mlflow)
        client = store.open_client(uri)
        query = (f"tags.`{tags.CONFIG_HASH}` = '{config_hash(job.cfg)}' and "
                 f"attributes.status = 'RUNNING'")
        if job.context.parent_run_id:
            query += f" and tags.`{tags.PARENT_RUN}` = '{job.context.parent_run_id}'"
        left = [run for run in client.search_runs(
                    [experiment_id(client, job.cfg.mlflow, uri)], query, max_results=100)
                if resume.process_gone(run.data.tags.get(tags.PROCESS, ""))]
        for run in left:
            store.close_lost(client, run.info.run_id, f"lost: {why} on {socket.gethostname()}")
        if left:
            return "run " + ", ".join(run.info.run_id for run in left)
        run_id = record_failure(job.cfg, job.context, RuntimeError(f"lost: {why}"))
        client.set_tag(run_id, tags.OUTCOME, "lost")
        return f"run {run_id}"
    except Exception as err:  # the store is gone too: its heartbeat marks it lost later
        return f"its run (not closed: {one_line(err)})"
