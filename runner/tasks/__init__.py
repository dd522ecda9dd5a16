"""The two kinds of run sweeplab trains, and what their runs are compared on.

Light on purpose (no TensorFlow): the CLI picks a task from the config before TensorFlow
loads, and the sweep summary, which runs in the launcher's process, asks a finished run's task
which curves and final numbers to show. The training code of each task is in its own module:
`runner.tasks.image` and `runner.tasks.language_model`.
"""
from dataclasses import dataclass
from typing import Mapping, Tuple


@dataclass(frozen=True)
class TaskSpec:
    name: str  # the MLflow tag `sweeplab.task`
    curves: Tuple[str, ...]  # per-evaluation metrics a sweep overlays
    final: Tuple[str, ...]  # final metrics in the sweep's summary table
    objective: str  # what the task returns to Hydra (a sweeper minimises it): its last value


IMAGE = TaskSpec("image_classification", curves=("val_loss", "val_acc"),
                 final=("val_loss", "val_acc", "test_loss", "test_acc", "diverged_at_step"),
                 objective="val_loss")
LANGUAGE_MODEL = TaskSpec("language_model", curves=("valid_perplexity",),
                          final=("valid_perplexity", "test_perplexity", "diverged_at_step"),
                          objective="valid_perplexity")
TASKS = {spec.name: spec for spec in (IMAGE, LANGUAGE_MODEL)}
TAG_TASK = "sweeplab.task"


def spec_for(model_cfg) -> TaskSpec:
    """The task that trains `model_cfg`: the LSTM reads word sequences, the rest images."""
    return LANGUAGE_MODEL if model_cfg.name == "lstm_lm" else IMAGE


def spec_of_run(tags: Mapping[str, str]) -> TaskSpec:
    """The task that produced an MLflow run (image classification if the run predates the tag)."""
    return TASKS.get(tags.get(TAG_TASK, ""), IMAGE)
