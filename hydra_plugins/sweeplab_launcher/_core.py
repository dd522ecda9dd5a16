"""The stacked launcher at work: set up each job as Hydra does, group them, train, conclude.

Each job is set up by Hydra's own `run_job`, as under the basic launcher (output dir,
`.hydra/*.yaml`, `hydra.job.env_set`), with `runner.jobs.accept` as its task: it validates
the job and builds its context, nothing trains yet. The accepted jobs are grouped by graph
(`runner.grouping`), trained in this process or in worker processes (`runner.pool`), and each job is
concluded (`runner.jobs.conclude`) while Hydra's callbacks hear of it.
"""
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (JobReturn, JobStatus, configure_log, env_override, filter_overrides,
                              run_job, setup_globals)
from hydra.types import HydraContext
from omegaconf import OmegaConf, open_dict

from hydra_plugins.sweeplab_launcher._compose import Composer
from runner.grouping import plan_chunks
from runner import jobs, joblog, pool, tags
from runner.sweep import count_jobs

log = logging.getLogger(__name__)


@dataclass
class Launched:
    """One job on the launcher's side: its full config (with `hydra`), its JobReturn, and the
    accepted job (None if Hydra's `run_job` failed before accepting it)."""
    config: object
    ret: JobReturn
    job: Optional[jobs.Job]

    @property
    def env(self) -> Dict[str, str]:
        return {str(k): str(v) for k, v in self.config.hydra.job.env_set.items()}


class ComposeOnce:
    """The sweeper's config loader, keeping what it composes for the launcher to `take`.

    Hydra's sweeper composes every job of a batch to check it (`validate_batch_is_legal`) and
    throws the result away; the launcher would compose it again. Kept per overrides as a
    list, so a repeated value in a sweep list gets a config of its own. Composing itself is
    `_compose.Composer`'s: once per config-group choice, not once per job.
    """

    def __init__(self, loader) -> None:
        self._loader, self._kept = loader, {}
        self.composer = Composer(loader)

    def load_sweep_config(self, master_config, sweep_overrides):
        config = self.composer.load_sweep_config(master_config, list(sweep_overrides))
        self._kept.setdefault(tuple(sweep_overrides), []).append(config)
        return config

    def take(self, master_config, sweep_overrides):
        kept = self._kept.get(tuple(sweep_overrides))
        return kept.pop(0) if kept else self.composer.load_sweep_config(master_config,
                                                                        list(sweep_overrides))

    def __getattr__(self, name):
        return getattr(self._loader, name)


def check_settings(max_stack, n_workers) -> None:
    """The launcher's own options: a bad one is one line and exit 2 (n_workers null = auto)."""
    for option, value, example in (("max_stack", max_stack, 16), ("n_workers", n_workers, 2)):
        if (value is not None or option == "max_stack") and not (
                isinstance(value, int) and value >= 1):
            print(f"sweeplab: error: hydra.launcher.{option}: must be an integer >= 1, got "
                  f"{value!r}; e.g. hydra.launcher.{option}={example}", file=sys.stderr)
            sys.exit(2)


def logging_conf(config) -> Optional[dict]:
    """Hydra's job logging as a plain dict (runner.joblog's form)."""
    job_logging = config.hydra.job_logging
    return None if job_logging is None else OmegaConf.to_container(job_logging, resolve=False)


def start_pool(config, n_workers: Optional[int]) -> Optional[pool.Pool]:
    """The worker processes (None: train in this process); `n_workers` null = chosen from
    the sweep's size and the idle cores (runner.pool.choose_workers)."""
    steps = None if config.train.get("epochs") else config.train.get("steps")
    n = n_workers or pool.choose_workers(count_jobs(config), steps, pool.idle_cores())
    if n == 1:
        return None
    return pool.Pool(n, jobs.train, jobs.worker_setup,
                     (joblog.console_only(logging_conf(config)),))


def launch(launcher, job_overrides: Sequence[Sequence[str]],
           initial_job_idx: int) -> List[JobReturn]:
    setup_globals()
    config, workers = launcher.config, launcher.pool
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    if config.hydra.job.chdir:
        log.warning("hydra.job.chdir=true is ignored by hydra/launcher=stacked: jobs that share "
                    "a graph share a process, which runs in %s", os.getcwd())
    log.info("Launching %d jobs, up to %d per graph, in %s", len(job_overrides),
             launcher.max_stack, "this process" if workers is None
             else f"{workers.size} worker processes")
    launched = [set_up(launcher, overrides, initial_job_idx + i)
                for i, overrides in enumerate(job_overrides)]
    for one in launched:
        if one.job is not None and one.job.early is not None:  # rejected, or finished before
            finish(launcher, one, one.job.early)
    ready = [one for one in launched if one.job is not None and one.job.early is None]
    twins = jobs.repeats([one.job for one in ready])
    trained = [one for i, one in enumerate(ready) if i not in twins]
    chunks = plan_chunks([one.job.cfg for one in trained], [one.env for one in trained],
                         launcher.max_stack, workers=1 if workers is None else workers.size)
    route = joblog.routing(logging_conf(config))
    members = [[trained[i] for i in chunk.members] for chunk in chunks]
    groups = [jobs.Group([one.job for one in group], chunk.alone, group[0].env, route,
                         {tags.LAUNCHER: "stacked", tags.STACKED: str(len(group))})
              for group, chunk in zip(members, chunks)]
    console = joblog.console_only(logging_conf(config))
    if console is not None:  # a process training several jobs has no one job file
        configure_log(OmegaConf.create(console), config.hydra.verbose)

    def done(index: int, results: list) -> None:
        for one, result in zip(members[index], results):
            finish(launcher, one, result)

    if workers is None:
        for index, group in enumerate(groups):
            done(index, jobs.train(group))
    else:
        launcher.pool = None  # its workers end with this batch
        workers.run(groups, done, lambda i, why: done(i, [jobs.Lost(why)] * len(members[i])))
    for i, twin in twins.items():
        finish(launcher, ready[i], next(one.ret.return_value for one in ready
                                        if one.job is twin))
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    return [one.ret for one in launched]


def set_up(launcher, overrides: Sequence[str], idx: int) -> Launched:
    """Compose the job's config and let Hydra's `run_job` set it up, as BasicLauncher does."""
    log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
    context = launcher.hydra_context
    config = context.config_loader.take(launcher.config, list(overrides))
    with open_dict(config):
        config.hydra.job.id = idx
        config.hydra.job.num = idx
    # Hydra's callbacks hear of the job once it is concluded (`finish`), not now.
    later = SimpleNamespace(on_job_start=lambda **_: None, on_job_end=lambda **_: None)
    ret = run_job(hydra_context=HydraContext(config_loader=context.config_loader,
                                             callbacks=later),
                  task_function=jobs.accept, config=config, job_dir_key="hydra.sweep.dir",
                  job_subdir_key="hydra.sweep.subdir", configure_logging=False)
    return Launched(config, ret, ret.return_value if ret.status == JobStatus.COMPLETED
                    else None)


@contextmanager
def job_config(config):
    """Hydra's config of one job while the launcher acts for it (as inside `run_job`)."""
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(config)
    try:
        yield
    finally:
        HydraConfig.instance().cfg = previous


def finish(launcher, one: Launched, result) -> None:
    """The job's JobReturn from its result; Hydra's callbacks hear of the job.

    on_job_start and on_job_end come as a pair per job, once it is concluded: callbacks keep
    state from a job's start to its end (PickleJobInfoCallback keeps the output dir), which
    jobs started together would overwrite.
    """
    callbacks = launcher.hydra_context.callbacks
    with job_config(one.config), env_override(one.env):
        callbacks.on_job_start(config=one.config, task_function=launcher.task_function)
        one.ret.return_value = jobs.conclude(one.job, result, in_sweep=True).value
        callbacks.on_job_end(config=one.config, job_return=one.ret)
