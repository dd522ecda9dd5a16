"""The two kinds of run sweeplab trains: image classification and the language model.

Light on purpose (no TensorFlow): the CLI and the stacked launcher pick a task from the config
before TensorFlow loads. The training code of each task is in its own module:
`runner.tasks.image` and `runner.tasks.language_model`.
"""
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence

from runner import tags


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
                          ranking="valid_loss")
TASKS = {spec.name: spec for spec in (IMAGE, LANGUAGE_MODEL)}
# The task modules (runner/tasks/image.py, language_model.py) still import this name; new code
# uses tags.TASK.


def spec_for(model_cfg) -> TaskSpec:
    """The task that trains `model_cfg`: the LSTM reads word sequences, the rest images."""
    return LANGUAGE_MODEL if model_cfg.name == "lstm_lm" else IMAGE


def spec_of_run(run_tags: Mapping[str, str]) -> TaskSpec:
    """The task that produced an MLflow run (image classification if it predates the tag)."""
    return TASKS.get(run_tags.get(tags.TASK, ""), IMAGE)


# What may differ between jobs of one graph, per config group: one declared table. Every
# option listed here trains stacked exactly as alone (tests/test_parity.py checks each one, and
# fails for an option of runner.config's closed sets that is neither here nor given a reason).
# The engine's tables (optim.RULES, clipping.MODES, regularizers.TERMS, optim.SCHEDULES) cover
# every option; what decides stacking beyond this table is the model's layers.
STACKS = {
    "optimizer": ("sgd", "momentum", "adam", "rmsprop"),  # one optimizer name per graph
    "clipping": ("none", "value", "norm", "global_norm"),
    "regularizer": ("none", "l2", "l1"),
    "lr_schedule": ("constant", "piecewise", "exponential", "cosine"),
    # Sequential nets of runner.nets' stackable layers. A custom model is planned as stackable
    # and checked once built (runner.nets.stack_reason): if it cannot stack, its jobs train
    # one per graph and the log says which layer why.
    "model": ("lenet", "mlp", "custom"),
}
# Options that never stack, and why (one line each).
SOLO_REASONS = {
    ("model", "alexnet"): "its dropout and normalisation layers draw or keep state per job",
    ("model", "lstm_lm"): "the language model carries per-job LSTM state",
}


def supports(cfg) -> Optional[str]:
    """None if this job can train stacked with others, else a one-line reason why not."""
    for group, stackable in STACKS.items():
        name = cfg[group].name
        if name not in stackable:
            why = SOLO_REASONS.get((group, name), "it is not in runner.tasks.STACKS")
            return f"{group}={name} trains one per graph: {why}"
    return None


def run_group(cfgs: Sequence, contexts: Sequence) -> List[float]:
    """Train validated jobs that may share one graph (or a single job); each job's objective.

    The one entry point into training, for the CLI's job and the launcher's groups alike.
    """
    # Imported here, after validation, so that `--help` and a bad value answer in a second
    # instead of waiting for TensorFlow to load.
    if spec_for(cfgs[0].model) is LANGUAGE_MODEL:
        from runner.tasks import language_model as task
    else:
        from runner.tasks import image as task
    return task.run_group(cfgs, contexts)
