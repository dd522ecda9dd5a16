"""The two kinds of run sweeplab trains: image classification and the language model.

Light on purpose (no TensorFlow): the CLI and the stacked launcher pick a task from the config
before TensorFlow loads. The training code of each task is in its own module:
`runner.tasks.image` and `runner.tasks.language_model`.
"""
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence

from runner import data, tags


@dataclass(frozen=True)
class TaskSpec:
    name: str  # the MLflow tag tags.TASK
    # The metric a run is judged on: its last value is what the task returns to Hydra (a
    # sweeper minimises it), and a sweep's report ranks by it unless told otherwise.
    objective: str
    # What a sweep's report ranks configs by: a metric every child run logs, chosen to be less
    # noisy than one evaluation (the image task's val_loss is a 100-example window).
    ranking: str


IMAGE = TaskSpec("image_classification", objective="val_loss", ranking="val_loss_tail")
LANGUAGE_MODEL = TaskSpec("language_model", objective="valid_perplexity",
                          ranking="valid_perplexity")
TASKS = {spec.name: spec for spec in (IMAGE, LANGUAGE_MODEL)}
# The task modules (runner/tasks/image.py, language_model.py) still import this name; new code
# uses tags.TASK.
TAG_TASK = tags.TASK


def spec_for(model_cfg) -> TaskSpec:
    """The task that trains `model_cfg`: the LSTM reads word sequences, the rest images."""
    return LANGUAGE_MODEL if model_cfg.name == "lstm_lm" else IMAGE


def spec_of_run(run_tags: Mapping[str, str]) -> TaskSpec:
    """The task that produced an MLflow run (image classification if it predates the tag)."""
    return TASKS.get(run_tags.get(tags.TASK, ""), IMAGE)


# Sequential nets of the layers runner.stacked's `_forward` knows.
STACKABLE_MODELS = ("lenet", "mlp")


def supports(cfg) -> Optional[str]:
    """None if this job can train stacked with others (runner.stacked), else a one-line reason
    why not."""
    if spec_for(cfg.model) is not IMAGE:
        return "the language model carries per-job LSTM state: it trains one per graph"
    if cfg.model.name not in STACKABLE_MODELS:
        return (f"model {cfg.model.name!r} has dropout/normalisation layers whose random draws "
                f"would differ from a solo run: it trains one per graph")
    return None


def run_group(cfgs: Sequence, contexts: Sequence) -> List[float]:
    """Train validated jobs that may share one graph (or a single job); each job's objective.

    The one entry point into training, for the CLI's job and the launcher's groups alike.
    """
    # Imported here, after validation, so that `--help` and a bad value answer in a second
    # instead of waiting for TensorFlow to load.
    data.read_ahead(cfgs[0])  # a damaged data file: one line, before TensorFlow's start-up
    if spec_for(cfgs[0].model) is LANGUAGE_MODEL:
        from runner.tasks import language_model as task
    else:
        from runner.tasks import image as task
    return task.run_group(cfgs, contexts)
