"""The stacked launcher at work: set up every job, plan the chunks, train them, report.

Setting up a job is Hydra's own `run_job`, as under the basic launcher — output dir,
`.hydra/{config,hydra,overrides}.yaml`, `hydra.job.env_set` — except that its task only
validates the config and builds the job's context (`runner.cli`); training comes afterwards, a
chunk of jobs per compiled graph, in this process or in worker processes. Each job keeps its
own log file, MLflow child run and `JobReturn`, and Hydra's callbacks hear of each job.
"""
import logging
import multiprocessing
import os
import queue
import sys
import traceback
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from hydra._internal.callbacks import Callbacks
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (JobReturn, JobStatus, configure_log, env_override, filter_overrides,
                              run_job, setup_globals)
from hydra.types import HydraContext
from omegaconf import OmegaConf, open_dict

from hydra_plugins.sweeplab_launcher._plan import Chunk, plan_chunks
from runner import cli, progress, signals, tags, tasks
from runner.config import ConfigError, validate
from runner.tracking import JobContext, Stopped, recorded_run

log = logging.getLogger(__name__)

HYDRA_FILE_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's default
STEPS_LOGGER = "sweeplab.steps"  # the tasks' per-evaluation lines (runner.tasks.image)
POLL_SECONDS = 1.0  # how often the launcher checks that its workers are alive


@dataclass
class Job:
    """One job on the launcher's side: its full config (with `hydra`), its JobReturn and, once
    it is accepted, the resolved task config and context it trains with."""
    num: int
    config: object
    ret: JobReturn
    cfg: object = None
    context: Optional[JobContext] = None


@dataclass
class Work:
    """A chunk as a worker receives it (picklable): what to train and where its lines go."""
    jobs: List[Tuple[int, object, JobContext]]  # (job number, resolved cfg, context)
    alone: Optional[str]  # why a single job trains alone; None = stacked
    env: Dict[str, str]
    file_format: str
    file_loggers: List[str]  # the loggers Hydra's job logging gives the job's file ("" = root)


class WorkerDied(RuntimeError):
    """The worker process training a chunk died (e.g. killed by the OOM killer)."""


@dataclass
class Rejected:
    """A ConfigError found while training (e.g. a batch larger than the data)."""
    message: str


def launch(launcher, job_overrides: Sequence[Sequence[str]],
           initial_job_idx: int) -> List[JobReturn]:
    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    check_settings(launcher.max_stack, launcher.n_workers)
    pool = launcher.pool
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    if config.hydra.job.chdir:
        log.warning("hydra.job.chdir=true is ignored by hydra/launcher=stacked: jobs that share "
                    "a graph share a process, which runs in %s", os.getcwd())
    log.info("Launching %d jobs, up to %d per graph, in %s", len(job_overrides),
             launcher.max_stack, "this process" if pool is None
             else f"{len(pool.processes)} worker processes")
    jobs = [set_up(launcher, overrides, initial_job_idx + i)
            for i, overrides in enumerate(job_overrides)]
    accepted = [job for job in jobs if job.cfg is not None]
    chunks = plan_chunks([job.cfg for job in accepted], [env_of(job) for job in accepted],
                         launcher.max_stack, workers=1 if pool is None else len(pool.processes))
    members = [[accepted[i] for i in chunk.members] for chunk in chunks]
    works = [work_of(group, chunk, config.hydra.job_logging)
             for group, chunk in zip(members, chunks)]
    console = console_logging(config.hydra.job_logging)
    if console is not None:
        configure_log(console, config.hydra.verbose)

    def done(index: int, results: list) -> None:
        finish(members[index], works[index], results, launcher.hydra_context.callbacks,
               launcher.task_function)

    if pool is None:
        for index, work in enumerate(works):
            done(index, run_work(work))
    else:
        launcher.pool = None  # its workers end with this batch
        pool.run(works, done)
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    return [job.ret for job in jobs]


def check_settings(max_stack: int, n_workers: Optional[int]) -> None:
    """The launcher's own options: a bad one is the CLI's one line and exit 2."""
    for option, value, example in (("max_stack", max_stack, 16), ("n_workers", n_workers, 2)):
        if option == "n_workers" and value is None:  # auto
            continue
        if not isinstance(value, int) or value < 1:
            print(f"sweeplab: error: hydra.launcher.{option}: must be an integer >= 1, got "
                  f"{value!r}; e.g. hydra.launcher.{option}={example}", file=sys.stderr,
                  flush=True)
            sys.exit(2)


# ---------------------------------------------------------------- setting up each job

class ComposeOnce:
    """The sweeper's config loader, composing each job once instead of twice.

    Hydra's sweeper composes every job of a batch to check it (`validate_batch_is_legal`) and
    throws the result away; the launcher then composes it again (~0.15 s a job). The first
    composition is kept here and handed to the launcher's `set_up`, which owns it from then on.
    """

    def __init__(self, loader) -> None:
        self._loader, self._kept = loader, {}

    def load_sweep_config(self, master_config, sweep_overrides):
        key = (id(master_config), tuple(sweep_overrides))
        if key in self._kept:
            return self._kept.pop(key)
        config = self._loader.load_sweep_config(master_config, list(sweep_overrides))
        self._kept[key] = config
        return config

    def __getattr__(self, name):
        return getattr(self._loader, name)


def set_up(launcher, overrides: Sequence[str], idx: int) -> Job:
    """Compose the job's config and let Hydra's `run_job` set it up, as BasicLauncher does."""
    log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
    context = launcher.hydra_context
    config = context.config_loader.load_sweep_config(launcher.config, list(overrides))
    with open_dict(config):
        config.hydra.job.id = idx
        config.hydra.job.num = idx
    # No callbacks yet: they hear of the job once it has trained (`finish`).
    quiet = HydraContext(config_loader=context.config_loader, callbacks=Callbacks())
    ret = run_job(hydra_context=quiet, task_function=accept, config=config,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir",
                  configure_logging=False)
    job = Job(num=idx, config=config, ret=ret)
    if ret.status == JobStatus.COMPLETED and isinstance(ret.return_value, tuple):
        job.cfg, job.context = ret.return_value
    return job


def accept(cfg):
    """Run by `run_job` inside the job's Hydra config: (resolved cfg, context), or the CLI's
    answer to a bad config (one line, the job marked rejected, NaN)."""
    try:
        validate(cfg)
    except ConfigError as err:
        return cli.reject(err)
    context = cli.job_context()
    done = cli.finished_value(cfg, context)  # a resumed sweep: this config has its run
    if done is not None:
        return done
    resolved = deepcopy(cfg)  # `${hydra:...}` resolves only here, inside the job's config
    OmegaConf.resolve(resolved)
    return resolved, context


def env_of(job: Job) -> Dict[str, str]:
    return {str(k): str(v) for k, v in job.config.hydra.job.env_set.items()}


def work_of(jobs: List[Job], chunk: Chunk, job_logging) -> Work:
    launched = {tags.LAUNCHER: "stacked", tags.STACKED: str(len(jobs))}
    return Work(jobs=[(job.num, job.cfg, replace(job.context, extra_tags=launched))
                      for job in jobs],
                alone=chunk.alone, env=env_of(jobs[0]), file_format=file_format(job_logging),
                file_loggers=file_loggers(job_logging))


# ---------------------------------------------------------------- logging

def _file_handlers(conf: dict) -> set:
    return {name for name, h in (conf.get("handlers") or {}).items()
            if "FileHandler" in str(h.get("class", ""))}


def _container(job_logging) -> dict:
    return OmegaConf.to_container(job_logging, resolve=False) if job_logging is not None else {}


def console_logging(job_logging):
    """Hydra's job logging without its file handlers: a process training several jobs has no
    one job file for every line; each job's file gets its own lines (`job_logs`)."""
    if job_logging is None:
        return None
    conf = _container(job_logging)
    files = _file_handlers(conf)
    for name in files:
        del conf["handlers"][name]
    for node in [conf.get("root") or {}, *(conf.get("loggers") or {}).values()]:
        if node.get("handlers"):
            node["handlers"] = [h for h in node["handlers"] if h not in files]
    return OmegaConf.create(conf)


def file_loggers(job_logging) -> List[str]:
    """The loggers whose lines Hydra's job logging writes to the job's file ("" = root)."""
    conf = _container(job_logging)
    files = _file_handlers(conf)
    named = {"": conf.get("root") or {}, **(conf.get("loggers") or {})}
    return [name for name, node in named.items() if files & set(node.get("handlers") or ())]


def file_format(job_logging) -> str:
    """The line format Hydra's job logging gives a job's log file."""
    conf = _container(job_logging)
    for name in sorted(_file_handlers(conf)):
        formatter = (conf.get("formatters") or {}).get(conf["handlers"][name].get("formatter"))
        return (formatter or {}).get("format", HYDRA_FILE_FORMAT)
    return HYDRA_FILE_FORMAT


@contextmanager
def job_logs(work: Work):
    """Each job's log file gets its own lines; yields the contexts the task should use.

    A job alone in the process gets what `run_job` would give its file. Jobs sharing a graph
    each get a logger of their own (`JobContext.logger_name`) that writes to their file; it is
    a child of `sweeplab.steps`, the tasks' per-evaluation logger, so its lines also go where
    the job logging sends that one's (conf/hydra/job_logging/sweeplab.yaml: the file only).
    """
    formatter = logging.Formatter(work.file_format)
    attached, contexts = [], []
    for num, _, context in work.jobs:
        handler = logging.FileHandler(context.log_file)
        handler.setFormatter(formatter)
        if work.alone is not None:
            loggers = [logging.getLogger(name or None) for name in work.file_loggers]
        else:
            loggers = [logging.getLogger(f"{STEPS_LOGGER}.job{num}")]
            context = replace(context, logger_name=loggers[0].name)
        for logger in loggers:
            logger.addHandler(handler)
            attached.append((logger, handler))
        contexts.append(context)
    try:
        yield contexts
    finally:
        for logger, handler in attached:
            logger.removeHandler(handler)
            handler.close()


# ---------------------------------------------------------------- training a chunk

def run_work(work: Work) -> list:
    """Train one chunk; per job its value, a `Rejected` or the exception that stopped it."""
    cfgs = [cfg for _, cfg, _ in work.jobs]
    with env_override(work.env), job_logs(work) as contexts:
        try:
            if work.alone is not None:
                log.info("job #%d trains alone: %s", work.jobs[0][0], work.alone)
                return [cli.run_task(cfgs[0], contexts[0])]
            nums = ", ".join(f"#{num}" for num, _, _ in work.jobs)
            log.info("jobs %s train stacked in one graph", nums)
            for context in contexts:
                logging.getLogger(context.logger_name).info(
                    "stacked: %d jobs (%s) train in one graph", len(contexts), nums)
            # TensorFlow loads here, not in a launcher process that only hands out chunks.
            return tasks.run_group(cfgs, contexts)
        except ConfigError as err:
            return [Rejected(str(err))] * len(cfgs)
        except Stopped as stop:  # SIGINT/SIGTERM: the chunk's runs are closed KILLED
            return [stop] * len(cfgs)
        except Exception as err:  # the chunk's jobs fail; the sweep's other chunks go on
            log.error("jobs %s failed:\n%s", [num for num, _, _ in work.jobs],
                      traceback.format_exc())
            if recorded_run(err) is None:  # it broke before the jobs' runs were opened
                for cfg, context in zip(cfgs, contexts):
                    cli.record_failed_job(cfg, context, err)
            return [err] * len(cfgs)


@contextmanager
def job_config(config):
    """Hydra's config of one job while the launcher acts for it (as inside `run_job`)."""
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(config)
    try:
        yield
    finally:
        HydraConfig.instance().cfg = previous


def finish(jobs: List[Job], work: Work, results: list, callbacks, task_function) -> None:
    """Each job's JobReturn from its result; the callbacks hear of the job.

    Callbacks get on_job_start and on_job_end as a pair per job, once its chunk is done: Hydra's
    callbacks keep state from a job's start to its end (PickleJobInfoCallback keeps the output
    dir), which jobs started together would overwrite.
    """
    for job, result in zip(jobs, results):
        with job_config(job.config), env_override(work.env):
            callbacks.on_job_start(config=job.config, task_function=task_function)
            if isinstance(result, Rejected):
                job.ret.return_value = cli.reject(ConfigError(result.message))
            elif isinstance(result, WorkerDied):  # no run could be closed: lost later
                job.ret.status, job.ret.return_value = JobStatus.FAILED, result
            elif isinstance(result, Stopped):  # its run closed KILLED; the sweep says why
                job.ret.return_value = float("nan")
            elif isinstance(result, BaseException):  # its run is FAILED; the sweep exits 1
                cli.say_failed(job.context, result)
                job.ret.return_value = float("nan")
            else:
                job.ret.return_value = result
            callbacks.on_job_end(config=job.config, job_return=job.ret)


# ---------------------------------------------------------------- worker processes

def default_workers(config) -> int:
    """`hydra.launcher.n_workers: null`: one worker per usable core (at most 4: each holds its
    own TensorFlow, ~1 GB), fewer when the sweep has fewer than two jobs per worker; 1 = train
    in the launching process."""
    from runner.sweep import count_jobs

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    jobs = count_jobs(config) or 2
    return max(1, min(cores or 1, 4, jobs // 2))


def worker(todo, results, console, launcher: int) -> None:
    """A worker process: load TensorFlow at once (the launcher is still composing the jobs),
    then train chunks until told to stop; report each chunk as it starts and ends. It exits
    when its launcher does, even one killed outright."""
    configure_log(console)
    signals.prepare_worker(launcher)  # stoppable, and gone with its launcher, from the start
    # Bars and job counts are drawn by the launcher, from what the workers send it.
    progress.forward_to(lambda event: results.put(("progress", None, event)))
    from runner.tasks import image  # noqa: F401  (TensorFlow: the slow import, done early)

    while True:
        item = todo.get()
        if item is None:
            return
        index, work = item
        results.put(("start", index, os.getpid()))
        with signals.job():  # SIGINT/SIGTERM stop the chunk's runs KILLED
            values = ([Stopped(signals.received())] * len(work.jobs) if signals.received()
                      else run_work(work))
        # An exception may not pickle; its text does (the traceback is in the worker's log).
        results.put(("done", index, [v if isinstance(v, (Rejected, Stopped))
                                     else RuntimeError(f"{type(v).__name__}: {v}")
                                     if isinstance(v, BaseException) else v for v in values]))


class WorkerPool:
    """Spawned processes that train chunks, started when the launcher is set up: each loads
    TensorFlow (~5 s) while the launcher composes and sets up the jobs, instead of after."""

    def __init__(self, n_workers: int, job_logging) -> None:
        spawn = multiprocessing.get_context("spawn")
        self.todo, self.results = spawn.Queue(), spawn.Queue()
        self.processes = [spawn.Process(target=worker, name=f"sweeplab-worker-{i}",
                                        args=(self.todo, self.results,
                                              console_logging(job_logging), os.getpid()))
                          for i in range(n_workers)]
        for process in self.processes:
            process.start()
        self.closed = False

    def close(self) -> None:
        """Workers finish what they hold and exit (also when no batch ever came)."""
        if self.closed:
            return
        self.closed = True
        for _ in self.processes:
            self.todo.put(None)
        for process in self.processes:
            process.join(timeout=60)
            if process.is_alive():
                process.terminate()

    def run(self, works: List[Work], done) -> None:
        """The chunks to the workers; `done(index, results)` as each chunk ends.

        A worker that dies fails the jobs of the chunk it held (and, once no worker is left,
        the chunks nobody took): the launcher never waits for a dead process.
        """
        for item in enumerate(works):
            self.todo.put(item)
        for _ in self.processes:
            self.todo.put(None)  # each worker exits once the chunks are taken
        self.closed = True
        held: Dict[int, int] = {}  # chunk index -> pid of the worker training it
        pending = set(range(len(works)))

        def handle(message):
            kind, index, payload = message
            if kind == "progress":
                progress.replay(payload)
            elif kind == "start":
                held[index] = payload
            elif index in pending:
                pending.discard(index)
                done(index, payload)

        def fail(index, why):
            pending.discard(index)
            log.error("jobs %s failed: %s", [num for num, _, _ in works[index].jobs], why)
            done(index, [WorkerDied(why)] * len(works[index].jobs))

        while pending:
            try:
                handle(self.results.get(timeout=POLL_SECONDS))
                continue
            except queue.Empty:
                pass
            dead = {p.pid: p.exitcode for p in self.processes if not p.is_alive()}
            if not dead:
                continue
            drain(self.results, handle)  # what a worker sent just before it exited
            for index, pid in held.items():
                if pid in dead and index in pending:
                    fail(index, f"its worker process {pid} died (exit code {dead[pid]})")
            if len(dead) == len(self.processes):
                for index in sorted(pending):
                    fail(index, "no worker process is left to train it")
        for process in self.processes:
            process.join()


def drain(results, handle) -> None:
    while True:
        try:
            handle(results.get_nowait())
        except queue.Empty:
            return
