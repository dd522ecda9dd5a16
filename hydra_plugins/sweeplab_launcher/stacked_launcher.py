"""`hydra/launcher=stacked`: a sweep's jobs that share a graph's shapes train side by side.

Hydra imports this module in every Hydra app of the environment while it scans for plugins,
so it holds only the launcher's config and class; the work is in `_core` (a leading `_`:
the scan skips it), imported when the launcher runs — the layout of Hydra's own launchers.

    python -m runner -m hydra/launcher=stacked experiment=lenet_clip \
        optimizer.lr=0.00005,0.0005,0.005,0.05 clipping=none,value,norm,global_norm
"""
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
    # Processes that train chunks (each takes whole chunks); 1 = in the launching process.
    n_workers: int = 1


ConfigStore.instance().store(group="hydra/launcher", name="stacked", node=StackedLauncherConf,
                             provider="sweeplab")


class StackedLauncher(Launcher):
    def __init__(self, max_stack: int = 16, n_workers: int = 1) -> None:
        self.max_stack, self.n_workers = max_stack, n_workers
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra_plugins.sweeplab_launcher import _core  # TensorFlow and MLflow load here

        return _core.launch(self, job_overrides, initial_job_idx)
