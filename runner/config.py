"""Config schemas (registered in Hydra's ConfigStore), the closed option sets, and value checks.

Schemas catch misspelt keys and wrong types at compose time; `validate` catches everything
else (unknown `+` keys, bad values, options that do not fit together) before any work starts.
Every failure is one `ConfigError` line that names the option and a fix, which the CLI prints
without a traceback. This module imports nothing heavy (no TensorFlow, Keras or NumPy), so the
CLI can call `validate` before TensorFlow loads: a typo costs a second, not ten.

Each closed set of option names is defined once, below; schema comments refer to it, the
checks use it, and tests/test_option_sets.py holds every dispatch table (clipping.MODES, optim.RULES,
models.MODELS, ...) to it.

Groups whose options are variants of one thing (optimizer, clipping, regularizer,
lr_schedule, dataset) share one schema, so a sweep such as
`clipping=none,value,norm,global_norm clipping.clip_norm=5` composes for every option.
Models differ in shape, so each model option has its own schema (MODEL_SCHEMAS); so does
`dataset=custom` (DATASET_SCHEMAS). `model=custom` and `dataset=custom` name the user's own
functions by `module:function` (docs/your-model.md): `validate` imports the module and checks
the function's signature, calling nothing; what the functions return is checked where it is
used (models/custom.py, runner/data.py).
"""
import dataclasses
import importlib
import inspect
import math
import os
import sys
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, OmegaConf

from runner.results import METRICS


class ConfigError(ValueError):
    """A bad option value; its message is one line a user can act on."""


# ---------------------------------------------------------------- closed option sets

DATASETS = ("mnist", "mnist_5k", "fashion_mnist", "ptb", "custom")
TEXT_DATASETS = ("ptb",)  # word sequences; the others are 28x28 images
IMAGE_DATASETS = tuple(name for name in DATASETS if name not in TEXT_DATASETS)
TEXT_MODELS = ("lstm_lm",)  # the model names of MODEL_SCHEMAS (below) that read text
# The option of the model and dataset groups that calls the user's own code (docs/your-model.md).
CUSTOM = "custom"
OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
CLIPPING_MODES = ("none", "value", "norm", "global_norm")
REGULARIZERS = ("none", "l2", "l1")
LR_SCHEDULES = ("constant", "piecewise", "exponential", "cosine")
SCHEDULE_UNITS = ("step", "epoch")
INITS = ("truncated_normal", "normal", "uniform", "glorot")
STD_INITS = ("truncated_normal", "normal")  # the inits that read model.init_std
ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "gelu")
ALEXNET_NORMS = ("lrn", "batch", "none")
ALEXNET_GROUPS = (1, 2)
LOSSES = ("cross_entropy", "mse", "cross_entropy_naive")
LANGUAGE_MODEL_LOSSES = ("cross_entropy",)
LOSS_REDUCTIONS = ("mean", "sum")
# Schemes MLflow 3 opens (mlflow.tracking._tracking_service.utils); "" is a plain folder.
# Database schemes may carry a driver: postgresql+psycopg2://, mysql+pymysql://, ...
TRACKING_URI_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https",
                        "databricks", "databricks-uc", "uc")
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")

PTB_WHERE = ("get the data/ folder of the simple-examples tarball from Tomas Mikolov's RNNLM "
             "page (http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz) and point "
             "dataset.data_dir at it, e.g. dataset.data_dir=/path/to/simple-examples/data")


def alexnet_pool5_side(input_size: int) -> int:
    """Side of AlexNet's pool5 map: conv1 (11/4) and the three 3/2 pools are VALID, the rest
    SAME (models/alexnet.py; tests/test_alexnet.py checks this against the built model)."""
    side = (input_size - 11) // 4 + 1
    for _ in range(3):
        side = (side - 3) // 2 + 1
    return side


# Smallest resize for which pool5 is still >= 1x1 (67: conv1 15, pool1 7, pool2 3, pool5 1).
ALEXNET_MIN_INPUT_SIZE = next(s for s in range(11, 1000) if alexnet_pool5_side(s) >= 1)


# ---------------------------------------------------------------- schemas

@dataclass
class DatasetConfig:
    name: str = MISSING  # one of DATASETS
    # Folder with the dataset's files; null = the dataset's default search order.
    data_dir: Optional[str] = None
    # Share of the training images held out for validation.
    val_fraction: float = 0.1
    # Used only when the source has no test split of its own (the bundled 5k digits).
    test_fraction: float = 0.2
    # Pixels are divided by this (255 maps to [0, 1]; seed 002 divides raw pixels by 50).
    input_divisor: float = 255.0


@dataclass
class CustomDatasetConfig:
    # The user's arrays (docs/your-model.md): `loader` names a function that returns
    # (x_train, y_train, x_test, y_test) as NumPy arrays, inputs as the model takes them
    # (no input_divisor) and integer class labels 0..num_classes-1.
    name: str = CUSTOM
    loader: str = MISSING  # "module:function", imported from the working directory or PYTHONPATH
    kwargs: Dict[str, Any] = field(default_factory=dict)  # passed to the loader as keywords
    val_fraction: float = 0.1
    # Used only when the loader returns None for x_test and y_test.
    test_fraction: float = 0.2
    # null = 1 + the largest label; set it when some class has no example in the arrays.
    num_classes: Optional[int] = None


@dataclass
class CustomModelConfig:
    # The user's Keras model (docs/your-model.md): `factory` names a function called as
    # factory(input_shape=..., num_classes=..., **kwargs) that returns a keras.Model whose
    # outputs are logits [batch, num_classes].
    name: str = CUSTOM
    factory: str = MISSING  # "module:function", imported from the working directory or PYTHONPATH
    kwargs: Dict[str, Any] = field(default_factory=dict)  # `++model.kwargs.width=64` adds one


@dataclass
class LeNetConfig:
    name: str = "lenet"
    init: str = "truncated_normal"  # one of INITS
    init_mean: float = 0.0
    init_std: float = 0.1
    bias_init: float = 0.0


@dataclass
class MLPConfig:
    name: str = "mlp"
    hidden: List[int] = field(default_factory=lambda: [512, 256])
    activation: str = "relu"  # one of ACTIVATIONS
    init: str = "truncated_normal"  # one of INITS
    init_mean: float = 0.0
    init_std: float = 0.1
    bias_init: float = 0.0


@dataclass
class AlexNetConfig:
    name: str = "alexnet"
    init: str = "truncated_normal"  # one of INITS
    init_mean: float = 0.0
    init_std: float = 0.01
    bias_init: float = 0.005
    bias_init_std: float = 0.1  # > 0: biases ~ truncated normal(bias_init, bias_init_std)
    # 28x28 digits are resized to input_size^2 inside the model; >= ALEXNET_MIN_INPUT_SIZE (67)
    input_size: int = 227
    groups: int = 1  # one of ALEXNET_GROUPS; 2: conv4/conv5 in two channel groups (seed 001 exp 5)
    norm: str = "lrn"  # one of ALEXNET_NORMS
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
    name: str = MISSING  # one of OPTIMIZERS
    lr: float = 0.01
    momentum: float = 0.9  # momentum
    nesterov: bool = False  # momentum
    beta1: float = 0.9  # adam
    beta2: float = 0.999  # adam
    rho: float = 0.9  # rmsprop
    epsilon: float = 1e-7  # adam, rmsprop


@dataclass
class ClippingConfig:
    name: str = MISSING  # one of CLIPPING_MODES
    min: float = -1.0  # value: per element, like tf.clip_by_value
    max: float = 1.0
    clip_norm: float = 5.0  # norm: per tensor (tf.clip_by_norm); global_norm: all tensors


@dataclass
class RegularizerConfig:
    name: str = MISSING  # one of REGULARIZERS
    strength: float = 0.0005
    # Seed 003 penalises every trainable variable, biases included.
    include_biases: bool = True


@dataclass
class LRScheduleConfig:
    name: str = MISSING  # one of LR_SCHEDULES
    # piecewise: lr = optimizer.lr * multipliers[i] after boundaries[i-1] (in `unit`s)
    boundaries: List[float] = field(default_factory=list)
    multipliers: List[float] = field(default_factory=list)
    unit: str = "step"  # one of SCHEDULE_UNITS, for piecewise boundaries
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
    # One of LOSSES: cross_entropy, mse (on one-hot labels, seed 002) or cross_entropy_naive
    # (-sum(onehot * log(softmax)) as in seed 001: NaN once a softmax underflows to 0).
    # The language model takes LANGUAGE_MODEL_LOSSES only.
    loss: str = "cross_entropy"
    loss_reduction: str = "mean"  # one of LOSS_REDUCTIONS over the batch (seed 001 sums)
    jit_compile: bool = False
    # Per-step series (train_loss, grad norms, lr) go to MLflow every `log_every` steps.
    log_every: int = 1
    # CPU threads TensorFlow runs one job's ops on (intra- and inter-op); null = its default,
    # every core. 1 is faster for batches as small as seed 000's 8 (make bench-sweep measures).
    threads: Optional[int] = None


@dataclass
class PlotsConfig:
    # Also draw the curves without the first N evaluations (seed 003: the fast initial drop
    # hides the later ups and downs).
    skip_first: int = 0


@dataclass
class MLflowConfig:
    # null = $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/outputs/mlflow.db (runner.store.resolve,
    # the rule `sweeplab report` follows too). Relative sqlite/file paths are made absolute so
    # that every job of a sweep writes to the same store. Scheme: one of TRACKING_URI_SCHEMES.
    tracking_uri: Optional[str] = None
    experiment_name: str = "sweeplab"
    # Where a new experiment keeps artifacts; null = <cwd>/outputs/mlartifacts.
    artifact_location: Optional[str] = None


@dataclass
class ReportConfig:
    # The sweep report's metric (map colour, best-first order): null = the task's ranking
    # metric (val_loss_tail: the mean of the last 10 evaluations; valid_loss, log perplexity,
    # for the language model). One of runner.results.METRICS.
    metric: Optional[str] = None


@dataclass
class Config:
    dataset: Any = MISSING  # DatasetConfig, or DATASET_SCHEMAS[dataset.name]
    model: Any = MISSING  # one of MODEL_SCHEMAS, picked by model.name
    optimizer: OptimizerConfig = MISSING
    clipping: ClippingConfig = MISSING
    regularizer: RegularizerConfig = MISSING
    lr_schedule: LRScheduleConfig = MISSING
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    plots: PlotsConfig = field(default_factory=PlotsConfig)
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


# The closed set of model names (`model.name`): each with its own schema.
MODEL_SCHEMAS = {"lenet": LeNetConfig, "mlp": MLPConfig, "alexnet": AlexNetConfig,
                 "lstm_lm": LSTMLMConfig, CUSTOM: CustomModelConfig}
MODELS = tuple(MODEL_SCHEMAS)
IMAGE_MODELS = tuple(name for name in MODELS if name not in TEXT_MODELS)
# Datasets whose keys differ from DatasetConfig's; every other dataset option shares that one.
DATASET_SCHEMAS = {CUSTOM: CustomDatasetConfig}


def dataset_schema(name: str):
    return DATASET_SCHEMAS.get(name, DatasetConfig)


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
    for name, schema in DATASET_SCHEMAS.items():
        cs.store(group="schema/dataset", name=name, node=schema)
    for name, schema in MODEL_SCHEMAS.items():
        cs.store(group="schema/model", name=name, node=schema)


# ---------------------------------------------------------------- check helpers

def _require(ok: bool, option: str, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{option}: {problem}; {fix}")


def _one_of(value, option: str, valid) -> None:
    _require(value in valid, option, f"unknown value {value!r}",
             f"use one of: {', '.join(map(str, valid))}")


def _positive(value, option: str, example) -> None:
    """Finite and > 0 (NaN and inf fail: they parse as floats, and `inf > 0`)."""
    _require(math.isfinite(value) and value > 0, option, f"must be > 0, got {value}",
             f"e.g. {option}={example}")


def _at_least(value, option: str, low, example) -> None:
    _require(math.isfinite(value) and value >= low, option, f"must be >= {low}, got {value}",
             f"e.g. {option}={example}")


def _finite(value, option: str, example) -> None:
    _require(math.isfinite(value), option, f"must be a finite number, got {value}",
             f"e.g. {option}={example}")


def _within(value, option: str, low, high, example, closed=(True, False)) -> None:
    """low <= value < high by default; `closed` says which ends are included."""
    above = value >= low if closed[0] else value > low
    below = value <= high if closed[1] else value < high
    interval = f"{'[' if closed[0] else '('}{low}, {high}{']' if closed[1] else ')'}"
    _require(above and below, option, f"must be in {interval}, got {value}",
             f"e.g. {option}={example}")


# ---------------------------------------------------------------- unknown keys

def _fields(schema):
    return {f.name: f.type for f in dataclasses.fields(schema)}


def _check_keys(node, schema, prefix: str) -> None:
    """Every key of `node` is a field of `schema` and every field is there, recursively."""
    fields = _fields(schema)
    where = f"keys under {prefix[:-1]}" if prefix else "top-level keys"
    for key in node:
        if not prefix and key == "hydra":  # Hydra's own node, not part of the task config
            continue
        _require(key in fields, f"{prefix}{key}", "unknown key (added with '+')",
                 f"remove it or check the spelling — valid {where}: "
                 f"{', '.join(sorted(fields))}")
    for key, kind in fields.items():
        if OmegaConf.is_missing(node, key):  # `???`
            _require(f"{prefix}{key}" in USER_CODE_EXAMPLES, f"{prefix}{key}", "not set (???)",
                     f"set it, e.g. {prefix}{key}=VALUE")
            continue  # model.factory, dataset.loader: validate says how to set them
        _require(key in node, f"{prefix}{key}", "missing (deleted with '~')",
                 f"drop the ~{prefix}{key} override")
        if dataclasses.is_dataclass(kind):
            _check_keys(node[key], kind, f"{prefix}{key}.")


def check_known_keys(cfg) -> None:
    """Hydra adds `+typo=1` and `+train.foo=1` without complaint: reject what no schema has."""
    _check_keys(cfg, Config, "")
    for group, key in (("dataset", "loader"), ("model", "factory")):
        # `dataset.name=custom` renames another option, whose keys are not custom's.
        _require(cfg[group].name != CUSTOM or key in cfg[group]
                 or OmegaConf.is_missing(cfg[group], key), f"{group}.name",
                 f"{CUSTOM} is an option of its own (with {group}.{key})",
                 f"pick it with {group}={CUSTOM}, e.g. {_example(f'{group}.{key}')}")
    _check_keys(cfg.dataset, dataset_schema(cfg.dataset.name), "dataset.")
    schema = MODEL_SCHEMAS.get(cfg.model.name)
    if schema is not None:  # an unknown model.name is reported by validate_model
        _check_keys(cfg.model, schema, "model.")


# ---------------------------------------------------------------- the user's code

# What a missing or malformed `module:function` is told to look like.
USER_CODE_EXAMPLES = {
    "model.factory": "model.factory=my_model:build (def build(input_shape, num_classes) in "
                     "./my_model.py, returning a keras.Model with logits)",
    "dataset.loader": "dataset.loader=my_data:load (def load() in ./my_data.py, returning "
                      "x_train, y_train, x_test, y_test)",
}


def _example(option: str) -> str:
    return USER_CODE_EXAMPLES.get(option, f"{option}=module:function")


def user_code_dirs() -> List[str]:
    """Where a user's module is looked for besides PYTHONPATH: the folder the command was
    started in (`python -m runner` has it on sys.path, the `sweeplab` script does not)."""
    dirs = [os.getcwd()]
    if HydraConfig.initialized():  # hydra.job.chdir=true moves the job: keep the user's folder
        dirs.insert(0, HydraConfig.get().runtime.cwd)
    return dirs


def _one_line(err: BaseException) -> str:
    if isinstance(err, SyntaxError):
        return f"SyntaxError: {err.msg} ({err.filename}, line {err.lineno})"
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# sweeplab's own top-level packages: a user's module of the same name is never the one imported.
SWEEPLAB_PACKAGES = ("runner", "models", "hydra_plugins")


def import_target(path: str, option: str) -> Callable:
    """The function that `path` ("module:function") names, its module imported from the user's
    folder or PYTHONPATH; a ConfigError naming `option` if it cannot be found or called.

    Imports the module but calls nothing: the check costs what the import costs.
    """
    module_name, _, attr = str(path).partition(":")
    _require(bool(module_name) and bool(attr) and ":" not in attr, option,
             f"{path!r} is not module:function", f"e.g. {_example(option)}")
    _require(module_name.split(".")[0] not in SWEEPLAB_PACKAGES, option,
             f"{module_name.split('.')[0]!r} is the name of one of sweeplab's own packages "
             f"({', '.join(SWEEPLAB_PACKAGES)})", "rename your module, e.g. my_models.py")
    for folder in user_code_dirs():
        if folder not in sys.path:
            sys.path.append(folder)  # after sweeplab's own packages: a user's file shadows none
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise ConfigError(
                f"{option}: no module {err.name!r} in {user_code_dirs()[0]} or on PYTHONPATH; run "
                f"from the folder that holds {module_name.replace('.', '/')}.py or add that "
                f"folder to PYTHONPATH") from None
        raise ConfigError(f"{option}: importing {module_name} failed ({_one_line(err)}); "
                          f"install what it imports") from None
    except Exception as err:  # the module itself is broken: its error, in one line
        raise ConfigError(f"{option}: importing {module_name} raised {_one_line(err)}; fix "
                          f"{getattr(err, 'filename', None) or module_name}") from None
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            functions = sorted(name for name, value in vars(module).items()
                               if inspect.isfunction(value) and not name.startswith("_")
                               and value.__module__ == module.__name__)
            raise ConfigError(f"{option}: module {module_name} ({getattr(module, '__file__', '?')})"
                              f" has no {attr!r}; its functions: {', '.join(functions) or 'none'}")
        target = getattr(target, part)
    _require(callable(target), option,
             f"{path} is not a function (it is of type {type(target).__name__})",
             f"name a function, e.g. {_example(option)}")
    return target


def _takes(signature: inspect.Signature, name: str) -> bool:
    return name in signature.parameters or any(
        p.kind is p.VAR_KEYWORD for p in signature.parameters.values())


def check_call(fn: Callable, path: str, option: str, kwargs_option: str, required=(),
               kwargs=None) -> None:
    """`fn` (named `path` by `option`) can be called with the keywords `required` (sweeplab's)
    and `kwargs` (the user's, from `kwargs_option`); checked on the signature, nothing runs."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: the call will tell
        return
    for name in required:
        _require(_takes(signature, name), option, f"{path}{signature} takes no {name!r}",
                 f"sweeplab calls it as {path.partition(':')[2]}("
                 f"{', '.join(f'{n}=...' for n in required)}, **{kwargs_option})")
    try:
        signature.bind(**{name: None for name in required}, **(kwargs or {}))
    except TypeError as err:
        given = ", ".join([*required, *(kwargs or {})]) or "no arguments"
        raise ConfigError(f"{kwargs_option}: {path}{signature} {err} (called with {given}); "
                          f"add a keyword with ++{kwargs_option}.NAME=VALUE, drop one with "
                          f"~{kwargs_option}.NAME") from None


def user_kwargs(node) -> Dict[str, Any]:
    """`model.kwargs` / `dataset.kwargs` as plain Python values for the user's function."""
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def _validate_user_code(cfg, key: str, group: str, required=()) -> None:
    """`{group}.{key}` is set and names a function that takes `required` and `{group}.kwargs`."""
    option = f"{group}.{key}"
    _require(not OmegaConf.is_missing(cfg, key), option,
             f"not set ({group}={CUSTOM} calls your own function)", f"e.g. {_example(option)}")
    fn = import_target(cfg[key], option)
    check_call(fn, cfg[key], option, f"{group}.kwargs", required, user_kwargs(cfg.kwargs))


def check_option_files() -> None:
    """A user's option file (--config-dir, hydra.searchpath) that has the name of one of
    sweeplab's is never read: Hydra reads sweeplab's conf/ first. Picking it is an error."""
    if not HydraConfig.initialized():
        return
    runtime = HydraConfig.get().runtime
    sources = [s for s in runtime.config_sources if s.schema == "file"]
    main = [s.path for s in sources if s.provider == "main"]
    for group, choice in runtime.choices.items():
        if choice is None or not main or group.startswith("hydra"):
            continue
        ours = os.path.join(main[0], group, f"{choice}.yaml")
        for source in sources:
            theirs = os.path.join(source.path, group, f"{choice}.yaml")
            _require(source.provider == "main" or not os.path.isfile(ours)
                     or not os.path.isfile(theirs), f"{group}={choice}",
                     f"sweeplab has its own {group}/{choice}.yaml, which Hydra reads instead of "
                     f"{theirs}", f"rename yours, e.g. {group}=my_{choice}")


def _validate_custom_dataset(cfg) -> None:
    _within(cfg.val_fraction, "dataset.val_fraction", 0, 1, 0.1, closed=(False, False))
    _within(cfg.test_fraction, "dataset.test_fraction", 0, 1, 0.2, closed=(False, False))
    _require(cfg.num_classes is None or cfg.num_classes >= 2, "dataset.num_classes",
             f"must be >= 2 or null, got {cfg.num_classes}", "e.g. dataset.num_classes=10")
    _validate_user_code(cfg, "loader", "dataset")


# ---------------------------------------------------------------- value checks per group

def validate_dataset(cfg) -> None:
    _one_of(cfg.name, "dataset.name", DATASETS)
    if cfg.name == CUSTOM:
        _validate_custom_dataset(cfg)
        return
    if cfg.name in TEXT_DATASETS:
        _require(bool(cfg.data_dir), "dataset.data_dir",
                 f"not set, dataset={cfg.name} has no default location", PTB_WHERE)
    _within(cfg.val_fraction, "dataset.val_fraction", 0, 1, 0.1, closed=(False, False))
    _within(cfg.test_fraction, "dataset.test_fraction", 0, 1, 0.2, closed=(False, False))
    _positive(cfg.input_divisor, "dataset.input_divisor", 255)


def _validate_init(cfg) -> None:
    """The image models' weight initialisation (models/init.py)."""
    _one_of(cfg.init, "model.init", INITS)
    _finite(cfg.init_mean, "model.init_mean", 0)
    if cfg.init in STD_INITS:
        _positive(cfg.init_std, "model.init_std", 0.1)
    _finite(cfg.bias_init, "model.bias_init", 0)
    if "bias_init_std" in cfg:
        _at_least(cfg.bias_init_std, "model.bias_init_std", 0, 0.1)


def _validate_mlp(cfg) -> None:
    _one_of(cfg.activation, "model.activation", ACTIVATIONS)
    _require(len(cfg.hidden) > 0 and min(cfg.hidden) > 0, "model.hidden",
             f"needs positive layer sizes, got {list(cfg.hidden)}", "e.g. model.hidden=[512,256]")


def _validate_alexnet(cfg) -> None:
    _require(cfg.input_size >= ALEXNET_MIN_INPUT_SIZE, "model.input_size",
             f"must be >= {ALEXNET_MIN_INPUT_SIZE} (pool5 would be empty), got {cfg.input_size}",
             "e.g. model.input_size=99")
    _one_of(cfg.groups, "model.groups", ALEXNET_GROUPS)
    _one_of(cfg.norm, "model.norm", ALEXNET_NORMS)
    _within(cfg.dropout, "model.dropout", 0, 1, 0.5)
    _positive(cfg.fc_units, "model.fc_units", 4096)


def _validate_lstm(cfg) -> None:
    for key, example in (("layers", 2), ("hidden", 200), ("num_steps", 20)):
        _positive(cfg[key], f"model.{key}", example)
    _within(cfg.keep_prob, "model.keep_prob", 0, 1, 0.5, closed=(False, True))
    _positive(cfg.init_scale, "model.init_scale", 0.1)
    _at_least(cfg.vocab_size, "model.vocab_size", 2, 10000)


def validate_model(cfg) -> None:
    _one_of(cfg.name, "model.name", MODELS)
    if cfg.name in TEXT_MODELS:
        _validate_lstm(cfg)
        return
    if cfg.name == CUSTOM:
        _validate_user_code(cfg, "factory", "model", required=("input_shape", "num_classes"))
        return
    _validate_init(cfg)
    if cfg.name == "mlp":
        _validate_mlp(cfg)
    if cfg.name == "alexnet":
        _validate_alexnet(cfg)


def validate_optimizer(cfg) -> None:
    # Every value is checked whatever the optimizer: a bad beta2 is bad in any sweep.
    _one_of(cfg.name, "optimizer.name", OPTIMIZERS)
    _positive(cfg.lr, "optimizer.lr", 0.001)
    _within(cfg.momentum, "optimizer.momentum", 0, 1, 0.9)
    _within(cfg.beta1, "optimizer.beta1", 0, 1, 0.9)
    _within(cfg.beta2, "optimizer.beta2", 0, 1, 0.999)
    _within(cfg.rho, "optimizer.rho", 0, 1, 0.9)
    _positive(cfg.epsilon, "optimizer.epsilon", 1e-7)


def validate_clipping(cfg) -> None:
    _one_of(cfg.name, "clipping.name", CLIPPING_MODES)
    # Values of other modes are ignored: a sweep over modes shares one set of values.
    if cfg.name == "value":
        _require(cfg.min < cfg.max, "clipping.min/clipping.max",
                 f"min must be < max, got min={cfg.min} max={cfg.max}",
                 "e.g. clipping.min=-0.001 clipping.max=0.001")
    if cfg.name in ("norm", "global_norm"):
        _positive(cfg.clip_norm, "clipping.clip_norm", 5)


def validate_regularizer(cfg) -> None:
    _one_of(cfg.name, "regularizer.name", REGULARIZERS)
    _at_least(cfg.strength, "regularizer.strength", 0, 0.0005)


def validate_lr_schedule(cfg) -> None:
    _one_of(cfg.name, "lr_schedule.name", LR_SCHEDULES)
    _one_of(cfg.unit, "lr_schedule.unit", SCHEDULE_UNITS)
    if cfg.name == "piecewise":
        _require(len(cfg.multipliers) == len(cfg.boundaries) + 1, "lr_schedule.multipliers",
                 f"needs one more entry than boundaries ({len(cfg.boundaries)}), "
                 f"got {len(cfg.multipliers)}",
                 "e.g. lr_schedule.boundaries=[3,6] lr_schedule.multipliers=[1,0.1,0.01]")
        _require(all(math.isfinite(b) and b >= 0 for b in cfg.boundaries)
                 and list(cfg.boundaries) == sorted(cfg.boundaries), "lr_schedule.boundaries",
                 f"must be finite, >= 0 and increasing, got {list(cfg.boundaries)}",
                 "e.g. lr_schedule.boundaries=[3,6]")
        _require(all(math.isfinite(m) and m >= 0 for m in cfg.multipliers),
                 "lr_schedule.multipliers", f"must be finite and >= 0, got {list(cfg.multipliers)}",
                 "e.g. lr_schedule.multipliers=[1,0.1,0.01]")
    if cfg.name == "exponential":
        _within(cfg.decay, "lr_schedule.decay", 0, 1, 0.5, closed=(False, True))
        _at_least(cfg.after_epochs, "lr_schedule.after_epochs", 0, 4)
    if cfg.name == "cosine":
        _within(cfg.min_fraction, "lr_schedule.min_fraction", 0, 1, 0.1, closed=(True, True))
    _at_least(cfg.warmup_steps, "lr_schedule.warmup_steps", 0, 100)


def validate_train(cfg) -> None:
    for key in ("steps", "batch_size", "eval_every", "eval_batch_size", "log_every"):
        _positive(cfg[key], f"train.{key}", 10)
    _require(cfg.eval_size is None or cfg.eval_size > 0, "train.eval_size",
             f"must be > 0 or null, got {cfg.eval_size}", "e.g. train.eval_size=100")
    _require(cfg.epochs is None or cfg.epochs > 0, "train.epochs",
             f"must be > 0 or null, got {cfg.epochs}", "e.g. train.epochs=13")
    _one_of(cfg.loss, "train.loss", LOSSES)
    _one_of(cfg.loss_reduction, "train.loss_reduction", LOSS_REDUCTIONS)
    _require(cfg.threads is None or cfg.threads > 0, "train.threads",
             f"must be > 0 or null, got {cfg.threads}", "e.g. train.threads=1")


def validate_plots(cfg) -> None:
    _at_least(cfg.skip_first, "plots.skip_first", 0, 20)


def validate_report(cfg) -> None:
    if cfg.metric is not None:
        _one_of(cfg.metric, "report.metric", METRICS)


def validate_mlflow(cfg) -> None:
    """The store's scheme and the experiment name; whether the store answers is not checked here."""
    _require(bool(cfg.experiment_name and cfg.experiment_name.strip()), "mlflow.experiment_name",
             f"must not be empty, got {cfg.experiment_name!r}",
             "e.g. mlflow.experiment_name=sweeplab")
    uri = cfg.tracking_uri
    if not uri:
        return  # the default store
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    engine = scheme.split("+")[0]  # postgresql+psycopg2 -> postgresql
    _require(scheme in TRACKING_URI_SCHEMES or engine in DATABASE_SCHEMES, "mlflow.tracking_uri",
             f"MLflow cannot open scheme {scheme!r} in {uri!r}",
             "use a folder, sqlite:///path/mlflow.db, http(s)://host:port or a database URL, "
             "e.g. mlflow.tracking_uri=sqlite:///outputs/mlflow.db")
    if engine == "sqlite":
        # sqlite:// alone is an in-memory store: every job would log into a database that
        # vanishes with it.
        _require(uri.startswith(f"{scheme}:///") and len(uri) > len(scheme) + 4,
                 "mlflow.tracking_uri", f"{uri!r} names no database file",
                 "e.g. mlflow.tracking_uri=sqlite:///outputs/mlflow.db")


def validate_seed(seed) -> None:
    # NumPy's global seed takes 0 <= seed < 2**32.
    _within(seed, "seed", 0, 2 ** 32, 0)


# ---------------------------------------------------------------- combinations

def validate_task(cfg) -> None:
    """The model must read what the dataset holds; the language model has one loss."""
    model, dataset = cfg.model.name, cfg.dataset.name
    if model in IMAGE_MODELS and dataset in TEXT_DATASETS:
        raise ConfigError(f"model.name: {model} reads images but dataset={dataset} is text; "
                          f"use model=lstm_small with dataset={dataset}, or an image dataset, "
                          f"e.g. dataset={IMAGE_DATASETS[0]}")
    if model in TEXT_MODELS and dataset in IMAGE_DATASETS:
        raise ConfigError(f"dataset.name: the {model} model reads text but dataset={dataset} is "
                          f"images; use dataset={TEXT_DATASETS[0]} (e.g. experiment=ptb_lstm), or "
                          f"an image model, e.g. model={IMAGE_MODELS[0]}")
    if model in TEXT_MODELS:
        _require(cfg.train.loss in LANGUAGE_MODEL_LOSSES, "train.loss",
                 f"the language model trains on {' or '.join(LANGUAGE_MODEL_LOSSES)}, got "
                 f"{cfg.train.loss!r}", f"use train.loss={LANGUAGE_MODEL_LOSSES[0]}")


def validate(cfg) -> None:
    """Check every key, value and combination; raise ConfigError naming the first bad one.

    Order: keys first (a typo may explain the rest), then the names that pick code, then
    whether model and dataset fit (before dataset=ptb asks for its data_dir), then values.
    """
    check_option_files()
    check_known_keys(cfg)
    _one_of(cfg.dataset.name, "dataset.name", DATASETS)
    _one_of(cfg.model.name, "model.name", MODELS)
    validate_task(cfg)
    validate_dataset(cfg.dataset)
    validate_model(cfg.model)
    validate_optimizer(cfg.optimizer)
    validate_clipping(cfg.clipping)
    validate_regularizer(cfg.regularizer)
    validate_lr_schedule(cfg.lr_schedule)
    validate_train(cfg.train)
    validate_plots(cfg.plots)
    validate_mlflow(cfg.mlflow)
    validate_report(cfg.report)
    validate_seed(cfg.seed)
