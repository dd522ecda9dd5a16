"""Config schemas (registered in Hydra's ConfigStore) and value checks.

Schemas catch misspelt keys at compose time; `validate` catches bad values (lr <= 0,
clip min >= max, ...) before any work starts. Every failure is one `ConfigError` line that
names the option and a valid example, which the CLI prints without a traceback.

Groups whose options are variants of one thing (optimizer, clipping, regularizer,
lr_schedule, dataset) share one schema, so a sweep such as
`clipping=none,value,norm,global_norm clipping.clip_norm=5` composes for every option.
Models differ in shape, so each model option has its own schema.
"""
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ConfigError(ValueError):
    """A bad option value; its message is one line a user can act on."""


@dataclass
class DatasetConfig:
    name: str = MISSING
    # Folder with the dataset's files; null = the dataset's default search order.
    data_dir: Optional[str] = None
    # Share of the training images held out for validation.
    val_fraction: float = 0.1
    # Used only when the source has no test split of its own (the bundled 5k digits).
    test_fraction: float = 0.2
    # Pixels are divided by this (255 maps to [0, 1]; seed 002 divides raw pixels by 50).
    input_divisor: float = 255.0


@dataclass
class LeNetConfig:
    name: str = "lenet"
    init: str = "truncated_normal"  # truncated_normal | normal | uniform | glorot
    init_mean: float = 0.0
    init_std: float = 0.1
    bias_init: float = 0.0


@dataclass
class MLPConfig:
    name: str = "mlp"
    hidden: List[int] = field(default_factory=lambda: [512, 256])
    activation: str = "relu"  # relu | tanh | sigmoid | elu | gelu
    init: str = "truncated_normal"
    init_mean: float = 0.0
    init_std: float = 0.1
    bias_init: float = 0.0


@dataclass
class AlexNetConfig:
    name: str = "alexnet"
    init: str = "truncated_normal"
    init_mean: float = 0.0
    init_std: float = 0.01
    bias_init: float = 0.005
    bias_init_std: float = 0.1  # > 0: biases ~ truncated normal(bias_init, bias_init_std)
    input_size: int = 227  # 28x28 digits are resized to input_size^2 inside the model; >= 67
    groups: int = 1  # 2: conv4/conv5 split into two channel groups (seed 001, experiment 5)
    norm: str = "lrn"  # lrn | batch | none
    dropout: float = 0.5
    fc_units: int = 4096


@dataclass
class LSTMLMConfig:
    # Zaremba et al.'s PTB word-level LM (seed 004); conf/model/lstm_{small,medium,large}.yaml
    name: str = "lstm_lm"
    size: str = "small"  # label only: small | medium | large (or your own)
    layers: int = 2
    hidden: int = 200  # LSTM units, also the embedding size
    num_steps: int = 20  # unrolled steps per window (truncated backprop length)
    keep_prob: float = 1.0  # dropout keeps this share on inputs, between layers, on outputs
    init_scale: float = 0.1  # every weight uniform in [-init_scale, init_scale]
    vocab_size: int = 10000  # cap: the most frequent train words, the rest become <unk>


@dataclass
class OptimizerConfig:
    name: str = MISSING  # sgd | momentum | adam | rmsprop
    lr: float = 0.01
    momentum: float = 0.9  # momentum
    nesterov: bool = False  # momentum
    beta1: float = 0.9  # adam
    beta2: float = 0.999  # adam
    rho: float = 0.9  # rmsprop
    epsilon: float = 1e-7  # adam, rmsprop


@dataclass
class ClippingConfig:
    name: str = MISSING  # none | value | norm | global_norm
    min: float = -1.0  # value: per element, like tf.clip_by_value
    max: float = 1.0
    clip_norm: float = 5.0  # norm: per tensor (tf.clip_by_norm); global_norm: all tensors


@dataclass
class RegularizerConfig:
    name: str = MISSING  # none | l2 | l1
    strength: float = 0.0005
    # Seed 003 penalises every trainable variable, biases included.
    include_biases: bool = True


@dataclass
class LRScheduleConfig:
    name: str = MISSING  # constant | piecewise | exponential | cosine
    # piecewise: lr = optimizer.lr * multipliers[i] after boundaries[i-1] (in `unit`s)
    boundaries: List[float] = field(default_factory=list)
    multipliers: List[float] = field(default_factory=list)
    unit: str = "step"  # step | epoch, for piecewise boundaries
    # exponential: lr = optimizer.lr * decay ** max(0, epoch + 1 - after_epochs) (Zaremba et al.)
    decay: float = 0.5
    after_epochs: int = 4
    # cosine: linear warmup, then cosine from optimizer.lr down to min_fraction * optimizer.lr
    warmup_steps: int = 0
    min_fraction: float = 0.0


@dataclass
class TrainConfig:
    steps: int = 1000
    # If set, train this many passes over the training split instead of `steps`.
    epochs: Optional[int] = None
    batch_size: int = 8
    eval_every: int = 10
    # Validation examples per evaluation: null = the whole validation split; N = the next N
    # examples each time, wrapping around (like TF1's mnist.validation.next_batch(N)).
    eval_size: Optional[int] = 100
    eval_batch_size: int = 1000  # chunk size for evaluation, bounds memory on big inputs
    # cross_entropy | mse (on one-hot labels, seed 002) | cross_entropy_naive
    # (-sum(onehot * log(softmax)) as in seed 001: NaN once a softmax underflows to 0)
    loss: str = "cross_entropy"
    loss_reduction: str = "mean"  # mean | sum over the batch (seed 001 sums)
    jit_compile: bool = False
    # Per-step series (train_loss, grad norms, lr) go to MLflow every `log_every` steps.
    log_every: int = 1


@dataclass
class PlotsConfig:
    # Also draw the curves without the first N evaluations (seed 003: the fast initial drop
    # hides the later ups and downs).
    skip_first: int = 0


@dataclass
class MLflowConfig:
    # null = sqlite:///<cwd>/outputs/mlflow.db. Relative sqlite/file paths are made absolute
    # so that every job of a sweep writes to the same store.
    tracking_uri: Optional[str] = None
    experiment_name: str = "sweeplab"
    # Where a new experiment keeps artifacts; null = <cwd>/outputs/mlartifacts.
    artifact_location: Optional[str] = None


@dataclass
class Config:
    dataset: DatasetConfig = MISSING
    model: Any = MISSING
    optimizer: OptimizerConfig = MISSING
    clipping: ClippingConfig = MISSING
    regularizer: RegularizerConfig = MISSING
    lr_schedule: LRScheduleConfig = MISSING
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    plots: PlotsConfig = field(default_factory=PlotsConfig)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)


MODEL_SCHEMAS = {"lenet": LeNetConfig, "mlp": MLPConfig, "alexnet": AlexNetConfig,
                 "lstm_lm": LSTMLMConfig}


def register_configs() -> None:
    """Put the schemas into Hydra's ConfigStore; YAML files extend them by name."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    for group, schema in [
        ("dataset", DatasetConfig),
        ("optimizer", OptimizerConfig),
        ("clipping", ClippingConfig),
        ("regularizer", RegularizerConfig),
        ("lr_schedule", LRScheduleConfig),
    ]:
        cs.store(group=f"schema/{group}", name="base", node=schema)
    for name, schema in MODEL_SCHEMAS.items():
        cs.store(group="schema/model", name=name, node=schema)


# ---------------------------------------------------------------- value checks

def _require(ok: bool, option: str, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{option}: {problem}; {fix}")


def _one_of(value: str, option: str, valid) -> None:
    _require(value in valid, option, f"unknown value {value!r}",
             f"use one of: {', '.join(sorted(valid))}")


def validate_optimizer(cfg) -> None:
    _one_of(cfg.name, "optimizer.name", {"sgd", "momentum", "adam", "rmsprop"})
    _require(cfg.lr > 0, "optimizer.lr", f"must be > 0, got {cfg.lr}", "e.g. optimizer.lr=0.001")
    _require(0 <= cfg.momentum < 1, "optimizer.momentum", f"must be in [0, 1), got {cfg.momentum}",
             "e.g. optimizer.momentum=0.9")


def validate_clipping(cfg) -> None:
    _one_of(cfg.name, "clipping.name", {"none", "value", "norm", "global_norm"})
    if cfg.name == "value":
        _require(cfg.min < cfg.max, "clipping.min/clipping.max",
                 f"min must be < max, got min={cfg.min} max={cfg.max}",
                 "e.g. clipping.min=-0.001 clipping.max=0.001")
    if cfg.name in ("norm", "global_norm"):
        _require(cfg.clip_norm > 0, "clipping.clip_norm", f"must be > 0, got {cfg.clip_norm}",
                 "e.g. clipping.clip_norm=5")


def validate_regularizer(cfg) -> None:
    _one_of(cfg.name, "regularizer.name", {"none", "l1", "l2"})
    _require(cfg.strength >= 0, "regularizer.strength", f"must be >= 0, got {cfg.strength}",
             "e.g. regularizer.strength=0.0005")


def validate_lr_schedule(cfg) -> None:
    _one_of(cfg.name, "lr_schedule.name", {"constant", "piecewise", "exponential", "cosine"})
    _one_of(cfg.unit, "lr_schedule.unit", {"step", "epoch"})
    if cfg.name == "piecewise":
        _require(len(cfg.multipliers) == len(cfg.boundaries) + 1, "lr_schedule.multipliers",
                 f"needs one more entry than boundaries ({len(cfg.boundaries)}), "
                 f"got {len(cfg.multipliers)}",
                 "e.g. lr_schedule.boundaries=[3,6] lr_schedule.multipliers=[1,0.1,0.01]")
        _require(list(cfg.boundaries) == sorted(cfg.boundaries), "lr_schedule.boundaries",
                 "must be increasing", "e.g. lr_schedule.boundaries=[3,6]")
    if cfg.name == "exponential":
        _require(0 < cfg.decay <= 1, "lr_schedule.decay", f"must be in (0, 1], got {cfg.decay}",
                 "e.g. lr_schedule.decay=0.5")
    _require(cfg.warmup_steps >= 0, "lr_schedule.warmup_steps", "must be >= 0",
             "e.g. lr_schedule.warmup_steps=100")


def validate_train(cfg) -> None:
    for key in ("steps", "batch_size", "eval_every", "eval_batch_size", "log_every"):
        value = cfg[key]
        _require(value > 0, f"train.{key}", f"must be > 0, got {value}", f"e.g. train.{key}=10")
    _require(cfg.eval_size is None or cfg.eval_size > 0, "train.eval_size",
             f"must be > 0 or null, got {cfg.eval_size}", "e.g. train.eval_size=100")
    _require(cfg.epochs is None or cfg.epochs > 0, "train.epochs",
             f"must be > 0 or null, got {cfg.epochs}", "e.g. train.epochs=13")
    _one_of(cfg.loss, "train.loss", {"cross_entropy", "mse", "cross_entropy_naive"})
    _one_of(cfg.loss_reduction, "train.loss_reduction", {"mean", "sum"})


def validate_dataset(cfg) -> None:
    _require(0 < cfg.val_fraction < 1, "dataset.val_fraction",
             f"must be in (0, 1), got {cfg.val_fraction}", "e.g. dataset.val_fraction=0.1")
    _require(0 < cfg.test_fraction < 1, "dataset.test_fraction",
             f"must be in (0, 1), got {cfg.test_fraction}", "e.g. dataset.test_fraction=0.2")
    _require(cfg.input_divisor > 0, "dataset.input_divisor",
             f"must be > 0, got {cfg.input_divisor}", "e.g. dataset.input_divisor=255")


def validate(cfg) -> None:
    """Check every value the schemas cannot; raise ConfigError naming the first bad one."""
    validate_dataset(cfg.dataset)
    validate_optimizer(cfg.optimizer)
    validate_clipping(cfg.clipping)
    validate_regularizer(cfg.regularizer)
    validate_lr_schedule(cfg.lr_schedule)
    validate_train(cfg.train)
