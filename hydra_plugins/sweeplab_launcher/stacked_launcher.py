"""`hydra/launcher=stacked` (the default for `-m`): jobs that share a graph's shapes train side by
side, in one compiled call.

Hydra imports this module in every Hydra app of the environment while it scans for plugins,
so it holds only the launcher's config and class; the work is in `_core` (a leading `_`:
the scan skips it), imported when the launcher runs — the layout of Hydra's own launchers.

    python -m runner -m experiment=lenet_clip \
        optimizer.lr=0.00005,0.0005,0.005,0.05 clipping=none,value,norm,global_norm
"""
import atexit
from dataclasses import dataclass
from typing import Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.sweeplab_launcher.stacked_launcher.StackedLauncher"
    # Jobs trained in one compiled graph at most; a bigger group is split into even chunks.
    max_stack: int = 16
    # Processes that train groups of jobs; 1 = in the launching process. null = chosen so a
    # sweep never pays for workers it cannot use (runner/pool.py, choose_workers): at most
    # one per core idle at launch (CPU time sampled for 0.3 s) (a busy machine gets 1), one per
    # two jobs, one per 1000 job-steps (jobs x train.steps), and 4 (each holds ~1 GB).
    n_workers: Optional[int] = None


ConfigStore.instance().store(group="hydra/launcher", name="stacked", node=StackedLauncherConf,
                             provider="sweeplab")


class StackedLauncher(Launcher):
    def __init__(self, max_stack: int = 16, n_workers: Optional[int] = None) -> None:
        self.max_stack, self.n_workers = max_stack, n_workers
        self.pool = None  # worker processes, started by `setup`, ended by `launch`
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        from hydra_plugins.sweeplab_launcher import _core

        _core.check_settings(self.max_stack, self.n_workers)
        # Shared with the sweeper, which composes each job once to check it: keep that one.
        hydra_context.config_loader = _core.ComposeOnce(hydra_context.config_loader)
        # Workers start now, so that they load TensorFlow while the jobs are composed.
        self.pool = _core.start_pool(config, self.n_workers)
        if self.pool is not None:
            atexit.register(self.pool.close)  # no batch came (every job resumed as done)

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra_plugins.sweeplab_launcher import _core

        return _core.launch(self, job_overrides, initial_job_idx)
