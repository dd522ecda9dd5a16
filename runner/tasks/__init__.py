"""The two kinds of run sweeplab trains: image classification and the language model.

Light on purpose (no TensorFlow): the CLI and the stacked launcher pick a task from the config
before TensorFlow loads. The training code of each task is in its own module:
`runner.tasks.image` and `runner.tasks.language_model`.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str  # the MLflow tag `sweeplab.task`
    report_metric: str  # what a sweep of this task is judged on by default


IMAGE = TaskSpec("image_classification", report_metric="val_loss")
LANGUAGE_MODEL = TaskSpec("language_model", report_metric="valid_perplexity")
TAG_TASK = "sweeplab.task"


def spec_for(model_cfg) -> TaskSpec:
    """The task that trains `model_cfg`: the LSTM reads word sequences, the rest images."""
    return LANGUAGE_MODEL if model_cfg.name == "lstm_lm" else IMAGE
