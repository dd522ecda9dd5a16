"""Every option and preset composes against the schemas; typos fail at compose time; bad
keys, values and combinations fail in runner.config.validate with a one-line ConfigError
naming the option, before TensorFlow is imported."""
import os
import shutil
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from conftest import CONF_DIR, ROOT, compose_cfg
from runner import config
from runner.config import ConfigError, validate

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "experiment")
OPTIONS = [(group, path.stem) for group in GROUPS
           for path in sorted((CONF_DIR / group).glob("*.yaml"))]
PRESETS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
# Each config group's option names, as runner.config defines them (one place per set).
GROUP_SETS = {"dataset": config.DATASETS, "model": config.MODELS, "optimizer": config.OPTIMIZERS,
              "clipping": config.CLIPPING_MODES, "regularizer": config.REGULARIZERS,
              "lr_schedule": config.LR_SCHEDULES}
PTB_DIR = "dataset.data_dir=/data/simple-examples/data"  # validate never opens it
# Text needs a text model and a PTB folder: what makes an option or preset runnable.
FOR_TEXT_DATASET = ["model=lstm_small", PTB_DIR]
FOR_TEXT_MODEL = ["dataset=ptb", PTB_DIR]
# model=custom / dataset=custom call the user's code: tests/custom_parts.py stands in for it.
FOR_CUSTOM = {"model": "model.factory=custom_parts:dense",
              "dataset": "dataset.loader=custom_parts:blobs"}


def runnable(*overrides):
    """`overrides` composed, plus what a text dataset or text model needs beside it, and the
    function a custom model or dataset calls."""
    cfg = compose_cfg(*overrides)
    if cfg.dataset.name in config.TEXT_DATASETS and cfg.model.name in config.IMAGE_MODELS:
        overrides = (*overrides, *FOR_TEXT_DATASET)
    elif cfg.model.name in config.TEXT_MODELS and cfg.dataset.name in config.IMAGE_DATASETS:
        overrides = (*overrides, *FOR_TEXT_MODEL)
    elif cfg.dataset.name in config.TEXT_DATASETS and not cfg.dataset.data_dir:
        overrides = (*overrides, PTB_DIR)
    cfg = compose_cfg(*overrides)
    custom = [FOR_CUSTOM[group] for group in FOR_CUSTOM if cfg[group].name == config.CUSTOM]
    return compose_cfg(*overrides, *custom) if custom else cfg


def test_the_groups_and_presets_are_found():
    # Guards the parametrisation below against a moved conf/ (which would test nothing).
    assert {"dataset", "model", "optimizer", "clipping", "regularizer", "lr_schedule"} <= set(
        GROUPS)
    assert ("clipping", "global_norm") in OPTIONS and "lenet_clip" in PRESETS


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(group, option):
    validate(runnable(f"{group}={option}"))
    cfg = compose_cfg(f"{group}={option}")
    # The option file's own values (its `name` included) land in the composed node.
    own = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    assert "name" in own, f"{group}/{option}.yaml sets no name"
    for key in own:
        if OmegaConf.is_missing(own, key):  # `???`: the user sets it (model.factory=...)
            assert OmegaConf.is_missing(cfg[group], key), f"{group}.{key}"
        elif key != "defaults":
            assert cfg[group][key] == own[key], f"{group}.{key}"


def leaves(node, prefix=""):
    """Dotted key -> value for every leaf of a YAML mapping."""
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if OmegaConf.is_dict(value):
            yield from leaves(value, dotted + ".")
        else:
            yield dotted, value


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_validates_and_wins(preset):
    cfg = runnable(f"experiment={preset}")
    validate(cfg)
    raw = OmegaConf.load(CONF_DIR / "experiment" / f"{preset}.yaml")
    # `override /group: option` entries pick the option ...
    for entry in raw.get("defaults", []):
        for key, option in entry.items():
            group = key.replace("override", "").strip().lstrip("/")
            picked = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
            assert cfg[group].name == picked.name, group
    # ... and the preset's values win over the options' and the schema's defaults.
    for dotted, value in leaves(raw):
        if not dotted.startswith(("defaults", "hydra.")):
            assert OmegaConf.select(cfg, dotted) == value, dotted


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_sweep_composes(preset):
    # The sweeps a preset declares (hydra.sweeper.params) compose and validate job by job.
    raw = OmegaConf.load(CONF_DIR / "experiment" / f"{preset}.yaml")
    params = OmegaConf.select(raw, "hydra.sweeper.params") or {}
    for key, values in params.items():
        for value in str(values).split(","):
            cfg = runnable(f"experiment={preset}", f"{key}={value.strip()}")
            validate(cfg)
            if key in GROUPS:
                picked = OmegaConf.load(CONF_DIR / key / f"{value.strip()}.yaml")
                assert cfg[key].name == picked.name


def test_the_default_config_composes_and_validates():
    cfg = compose_cfg()
    validate(cfg)
    assert cfg.dataset.name == "mnist" and cfg.model.name == "lenet"


def test_a_clipping_sweep_composes_for_every_option():
    # One schema per group: `clipping.clip_norm=5` is valid whatever the clipping option.
    for option in config.CLIPPING_MODES:
        cfg = compose_cfg(f"clipping={option}", "clipping.clip_norm=5")
        assert cfg.clipping.clip_norm == 5.0


@pytest.mark.parametrize("override", [
    "train.stepz=1", "clipping.foo=1", "optimizer.lrr=0.1", "model.hiden=[8]",
    "lr_schedule.warmup=10", "dataset.datadir=/tmp", "mlflow.uri=x",
])
def test_a_misspelt_key_fails_at_compose_time(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigCompositionException, match=key.replace(".", r"\.")):
        compose_cfg(override)


@pytest.mark.parametrize("override", ["train.steps=many", "optimizer.lr=fast",
                                      "clipping.clip_norm=[1,2]", "train.jit_compile=maybe"])
def test_a_wrongly_typed_value_fails_at_compose_time(override):
    with pytest.raises(ConfigCompositionException):
        compose_cfg(override)


def test_a_misspelt_key_in_an_option_file_fails(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "clipping" / "typo.yaml").write_text(
        "defaults:\n  - /schema/clipping/base@_here_\n  - _self_\nname: norm\nclip_nrom: 3\n")
    compose_cfg("clipping=norm", config_dir=conf)  # the copy itself is fine
    with pytest.raises(ConfigCompositionException, match="clip_nrom"):
        compose_cfg("clipping=typo", config_dir=conf)


def test_the_mlp_schema_rejects_lenet_only_keys():
    # Each model has its own schema: an MLP has `hidden`, LeNet does not.
    assert list(compose_cfg("model=mlp", "model.hidden=[8]").model.hidden) == [8]
    with pytest.raises(ConfigCompositionException, match=r"model\.hidden"):
        compose_cfg("model=lenet", "model.hidden=[8]")


@pytest.mark.parametrize("overrides,option", [
    (["optimizer.lr=0"], "optimizer.lr"),
    (["optimizer.lr=-0.01"], "optimizer.lr"),
    (["optimizer=sgd", "optimizer.lr=0"], "optimizer.lr"),
    (["clipping=value", "clipping.min=1", "clipping.max=1"], "clipping.min"),
    (["clipping=value", "clipping.min=0.5", "clipping.max=-0.5"], "clipping.max"),
    (["clipping=norm", "clipping.clip_norm=0"], "clipping.clip_norm"),
    (["clipping=global_norm", "clipping.clip_norm=-5"], "clipping.clip_norm"),
    (["train.batch_size=0"], "train.batch_size"),
    (["train.batch_size=-8"], "train.batch_size"),
    (["train.eval_every=0"], "train.eval_every"),
    (["train.steps=0"], "train.steps"),
    (["dataset.val_fraction=1.0"], "dataset.val_fraction"),
    (["regularizer=l2", "regularizer.strength=-1"], "regularizer.strength"),
    (["lr_schedule=piecewise", "lr_schedule.multipliers=[1,0.1]"], "lr_schedule.multipliers"),
    (["lr_schedule=exponential", "lr_schedule.decay=0"], "lr_schedule.decay"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_validate_rejects_bad_values_naming_the_option(overrides, option):
    cfg = compose_cfg(*overrides)  # a bad value is well-typed: it composes ...
    with pytest.raises(ConfigError) as error:
        validate(cfg)  # ... and fails here, before any work starts
    message = str(error.value)
    assert option in message
    assert "\n" not in message
    assert "e.g." in message  # a valid example to copy


@pytest.mark.parametrize("overrides", [
    ["clipping=value", "clipping.min=-1e-3", "clipping.max=1e-3"],
    ["clipping=none", "clipping.min=1", "clipping.max=-1"],  # ignored unless clipping=value
    ["clipping=value", "clipping.clip_norm=0"],  # ignored unless norm / global_norm
    ["optimizer.lr=1e-9", "train.batch_size=1", "train.eval_every=1"],
])
def test_validate_accepts_edge_values(overrides):
    validate(compose_cfg(*overrides))


# ---------------------------------------------------------------- every check in validate

LSTM = ["model=lstm_small", "dataset=ptb", PTB_DIR]
ALEXNET = ["model=alexnet"]
FIXES = ("e.g.", "use ", "remove it", "drop the")  # each message ends with one of these

BAD = [
    # keys no schema has (Hydra adds `+` keys silently)
    (["+typo=1"], "typo"),
    (["+foo.bar=1"], "foo"),
    (["+train.foo=1"], "train.foo"),
    (["++optimizer.lrr=0.1"], "optimizer.lrr"),
    (["+model.foo=1"], "model.foo"),
    (["model=mlp", "+model.input_size=67"], "model.input_size"),  # another model's key
    ([*LSTM, "+model.init=normal"], "model.init"),
    (["~plots"], "plots"),
    # names that pick code
    (["dataset.name=cifar"], "dataset.name"),
    (["model.name=resnet"], "model.name"),
    (["optimizer.name=adagrad"], "optimizer.name"),
    (["clipping.name=clip"], "clipping.name"),
    (["regularizer.name=l3"], "regularizer.name"),
    (["lr_schedule.name=linear"], "lr_schedule.name"),
    (["lr_schedule.unit=week"], "lr_schedule.unit"),
    (["train.loss=hinge"], "train.loss"),
    (["train.loss_reduction=max"], "train.loss_reduction"),
    # model and dataset must fit; the language model has one loss
    (["dataset=ptb"], "model.name"),
    (["dataset=ptb", "model=mlp", PTB_DIR], "model.name"),
    (["dataset=ptb", "model=alexnet"], "model.name"),
    (["model=lstm_small"], "dataset.name"),
    (["model=lstm_large", "dataset=fashion_mnist"], "dataset.name"),
    ([*LSTM, "train.loss=mse"], "train.loss"),
    ([*LSTM, "train.loss=cross_entropy_naive"], "train.loss"),
    (["experiment=ptb_lstm"], "dataset.data_dir"),  # PTB has no default location
    # image models: initialisation
    (["model.init=xavier"], "model.init"),
    (["model=mlp", "model.init=he"], "model.init"),
    (["model.init=normal", "model.init_std=0"], "model.init_std"),
    (["model.init=truncated_normal", "model.init_std=-0.1"], "model.init_std"),
    (["model.init_std=nan"], "model.init_std"),
    (["model.init_mean=inf"], "model.init_mean"),
    (["model.bias_init=nan"], "model.bias_init"),
    # mlp
    (["model=mlp", "model.activation=swish"], "model.activation"),
    (["model=mlp", "model.hidden=[]"], "model.hidden"),
    (["model=mlp", "model.hidden=[16,0]"], "model.hidden"),
    (["model=mlp", "model.hidden=[-4]"], "model.hidden"),
    # alexnet
    ([*ALEXNET, f"model.input_size={config.ALEXNET_MIN_INPUT_SIZE - 1}"], "model.input_size"),
    ([*ALEXNET, "model.input_size=0"], "model.input_size"),
    ([*ALEXNET, "model.groups=3"], "model.groups"),
    ([*ALEXNET, "model.groups=0"], "model.groups"),
    ([*ALEXNET, "model.norm=layer"], "model.norm"),
    ([*ALEXNET, "model.dropout=1"], "model.dropout"),
    ([*ALEXNET, "model.dropout=-0.1"], "model.dropout"),
    ([*ALEXNET, "model.fc_units=0"], "model.fc_units"),
    ([*ALEXNET, "model.bias_init_std=-0.1"], "model.bias_init_std"),
    ([*ALEXNET, "model.init_std=0"], "model.init_std"),
    # lstm
    ([*LSTM, "model.layers=0"], "model.layers"),
    ([*LSTM, "model.hidden=0"], "model.hidden"),
    ([*LSTM, "model.num_steps=-1"], "model.num_steps"),
    ([*LSTM, "model.keep_prob=0"], "model.keep_prob"),
    ([*LSTM, "model.keep_prob=1.5"], "model.keep_prob"),
    ([*LSTM, "model.init_scale=0"], "model.init_scale"),
    ([*LSTM, "model.init_scale=inf"], "model.init_scale"),
    ([*LSTM, "model.vocab_size=1"], "model.vocab_size"),
    # optimizer
    (["optimizer.lr=inf"], "optimizer.lr"),
    (["optimizer.lr=nan"], "optimizer.lr"),
    (["optimizer.lr=-inf"], "optimizer.lr"),
    (["optimizer.beta1=1"], "optimizer.beta1"),
    (["optimizer.beta1=-0.1"], "optimizer.beta1"),
    (["optimizer.beta2=1.0"], "optimizer.beta2"),
    (["optimizer.beta2=nan"], "optimizer.beta2"),
    (["optimizer.epsilon=0"], "optimizer.epsilon"),
    (["optimizer.epsilon=-1e-8"], "optimizer.epsilon"),
    (["optimizer=rmsprop", "optimizer.rho=1"], "optimizer.rho"),
    (["optimizer=momentum", "optimizer.momentum=1"], "optimizer.momentum"),
    (["optimizer=momentum", "optimizer.momentum=-0.5"], "optimizer.momentum"),
    # other groups
    (["clipping=norm", "clipping.clip_norm=inf"], "clipping.clip_norm"),
    (["regularizer=l2", "regularizer.strength=inf"], "regularizer.strength"),
    (["lr_schedule=piecewise", "lr_schedule.boundaries=[3,-1]",
      "lr_schedule.multipliers=[1,0.1,0.01]"], "lr_schedule.boundaries"),
    (["lr_schedule=piecewise", "lr_schedule.boundaries=[3]", "lr_schedule.multipliers=[1,nan]"],
     "lr_schedule.multipliers"),
    (["lr_schedule=exponential", "lr_schedule.decay=1.5"], "lr_schedule.decay"),
    (["lr_schedule=exponential", "lr_schedule.after_epochs=-1"], "lr_schedule.after_epochs"),
    (["lr_schedule=cosine", "lr_schedule.min_fraction=1.5"], "lr_schedule.min_fraction"),
    (["lr_schedule.warmup_steps=-1"], "lr_schedule.warmup_steps"),
    (["dataset.input_divisor=inf"], "dataset.input_divisor"),
    (["dataset.test_fraction=0"], "dataset.test_fraction"),
    (["train.log_every=0"], "train.log_every"),
    (["train.eval_size=0"], "train.eval_size"),
    (["train.epochs=0"], "train.epochs"),
    (["plots.skip_first=-1"], "plots.skip_first"),
    (["seed=-1"], "seed"),
    (["seed=4294967296"], "seed"),
    # mlflow (the scheme only: whether a server answers is checked elsewhere)
    (["mlflow.experiment_name=''"], "mlflow.experiment_name"),
    (["mlflow.experiment_name='   '"], "mlflow.experiment_name"),
    (["mlflow.tracking_uri=foo://bar"], "mlflow.tracking_uri"),
    (["mlflow.tracking_uri=s3://bucket/mlruns"], "mlflow.tracking_uri"),
    (["mlflow.tracking_uri=ftp://host/x"], "mlflow.tracking_uri"),
    (["mlflow.tracking_uri=sqlite://"], "mlflow.tracking_uri"),  # in memory: all lost
]


@pytest.mark.parametrize("overrides,option", BAD, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else None)
def test_validate_rejects_naming_the_option_with_a_fix(overrides, option):
    cfg = compose_cfg(*overrides)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    message = str(error.value)
    named, _, rest = message.partition(": ")
    assert named == option, message
    assert "\n" not in message
    assert "; " in rest and any(fix in rest for fix in FIXES), message


def test_an_image_model_on_ptb_blames_the_model_and_says_what_to_use():
    # Not "unknown dataset 'ptb'": ptb is a valid dataset, the model is what does not fit.
    with pytest.raises(ConfigError) as error:
        validate(compose_cfg("dataset=ptb", "model=lenet", PTB_DIR))
    assert str(error.value) == (
        "model.name: lenet reads images but dataset=ptb is text; use model=lstm_small with "
        "dataset=ptb, or an image dataset, e.g. dataset=mnist")


def test_an_unknown_key_lists_the_valid_keys_where_it_was_added():
    with pytest.raises(ConfigError) as error:
        validate(compose_cfg("+typo=1"))
    message = str(error.value)
    assert message.startswith("typo: unknown key (added with '+'); remove it or check the "
                              "spelling — valid top-level keys: ")
    assert message.endswith(", ".join(sorted(["dataset", "model", "optimizer", "clipping",
                                              "regularizer", "lr_schedule", "seed", "train",
                                              "plots", "mlflow", "report"])))
    with pytest.raises(ConfigError, match=r"^train\.foo: .* valid keys under train: batch_size"):
        validate(compose_cfg("+train.foo=1"))
    with pytest.raises(ConfigError, match=r"^model\.hidden: .* under model: bias_init, init,"):
        validate(compose_cfg("model=lenet", "+model.hidden=[8]"))


def test_the_hydra_node_is_not_an_unknown_key():
    # Callbacks see the config with Hydra's own node; it belongs to Hydra, not to the task.
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    assert "hydra" in cfg
    validate(cfg)


@pytest.mark.parametrize("size", [config.ALEXNET_MIN_INPUT_SIZE, 99, 227])
def test_alexnet_sizes_from_the_smallest_up_validate(size):
    validate(compose_cfg("model=alexnet", f"model.input_size={size}"))
    assert config.alexnet_pool5_side(size) >= 1


def test_the_smallest_alexnet_input_is_where_pool5_becomes_empty():
    # By hand: 67 -> conv1 (67-11)//4+1 = 15 -> pools 7, 3, 1; 66 -> 14 -> 6, 2, 0.
    assert config.ALEXNET_MIN_INPUT_SIZE == 67
    assert config.alexnet_pool5_side(66) == 0 and config.alexnet_pool5_side(67) == 1
    assert config.alexnet_pool5_side(227) == 6  # the write-up's 6x6x256


@pytest.mark.parametrize("uri", [
    "outputs/mlruns", "/tmp/mlruns", "file:///tmp/mlruns", "sqlite:///outputs/mlflow.db",
    "sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000", "https://mlflow.example.org",
    "'postgresql://user:pw@db/mlflow'", "'postgresql+psycopg2://user@db/mlflow'",
    "'mysql+pymysql://user@db/mlflow'", "'mssql+pyodbc://user@db/mlflow'", "databricks",
    "databricks://profile",
])
def test_tracking_uris_mlflow_opens_are_accepted(uri):
    cfg = compose_cfg(f"mlflow.tracking_uri={uri}")
    validate(cfg)
    assert cfg.mlflow.tracking_uri == uri.strip("'")


def test_the_accepted_uri_schemes_are_the_ones_mlflow_registers():
    # Guards TRACKING_URI_SCHEMES against an MLflow upgrade (MLflow's own registry, read-only).
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    registered = set(_tracking_store_registry._registry)
    assert set(config.TRACKING_URI_SCHEMES) <= registered
    assert "foo" not in registered and "s3" not in registered


@pytest.mark.parametrize("overrides", [
    ["optimizer=sgd", "optimizer.momentum=0"],  # 0 is the edge of [0, 1)
    ["optimizer.beta1=0", "optimizer.beta2=0.9999"],
    ["plots.skip_first=0"],
    ["seed=4294967295"],
    [*LSTM, "model.keep_prob=1", "model.vocab_size=2"],
    ["model=alexnet", "model.dropout=0", "model.bias_init_std=0"],
    ["model=mlp", "model.init=glorot", "model.init_std=0"],  # glorot reads no init_std
    ["lr_schedule=cosine", "lr_schedule.min_fraction=1"],
    ["lr_schedule=piecewise", "lr_schedule.boundaries=[]", "lr_schedule.multipliers=[1]"],
    ["mlflow.tracking_uri=null", "mlflow.experiment_name=my runs"],
])
def test_validate_accepts_edge_values_of_the_new_checks(overrides):
    validate(compose_cfg(*overrides))


@pytest.mark.parametrize("group", sorted(GROUP_SETS))
def test_each_groups_option_files_name_exactly_its_config_set(group):
    names = {OmegaConf.load(path).name for path in (CONF_DIR / group).glob("*.yaml")}
    assert names == set(GROUP_SETS[group])


def test_the_option_subsets_partition_their_sets():
    assert set(config.IMAGE_DATASETS) | set(config.TEXT_DATASETS) == set(config.DATASETS)
    assert not set(config.IMAGE_DATASETS) & set(config.TEXT_DATASETS)
    assert set(config.IMAGE_MODELS) | set(config.TEXT_MODELS) == set(config.MODELS)
    assert set(config.TEXT_MODELS) <= set(config.MODELS)
    assert set(config.STD_INITS) <= set(config.INITS)
    assert set(config.LANGUAGE_MODEL_LOSSES) <= set(config.LOSSES)


def test_validate_runs_before_tensorflow_loads(tmp_path):
    # The CLI validates before importing the training code: composing and validating a config
    # (a good one and a bad one) must not pull in TensorFlow or Keras.
    script = (
        "import sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "from runner.config import ConfigError, register_configs, validate\n"
        "register_configs()\n"
        f"with initialize_config_dir(config_dir={str(CONF_DIR)!r}, version_base='1.3'):\n"
        "    validate(compose('config', overrides=['experiment=alexnet_mnist']))\n"
        "    try:\n"
        "        validate(compose('config', overrides=['optimizer.lr=inf']))\n"
        "    except ConfigError as err:\n"
        "        print('rejected', err)\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'models', 'runner.engine', 'runner.tasks.image') "
        "if m in sys.modules)\n"
        "print('heavy', heavy)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rejected optimizer.lr: must be > 0, got inf" in done.stdout
    assert "heavy []" in done.stdout


# ---------------------------------------------------------------- model=custom, dataset=custom

def test_the_custom_options_have_schemas_of_their_own():
    cfg = runnable("model=custom", "dataset=custom", "++model.kwargs.hidden=64",
                   "+dataset.kwargs.seed=3")
    validate(cfg)
    assert cfg.model.kwargs == {"hidden": 64} and cfg.dataset.kwargs == {"seed": 3}
    assert "input_divisor" not in cfg.dataset and "init" not in cfg.model
    with pytest.raises(ConfigCompositionException, match=r"model\.factroy"):
        compose_cfg("model=custom", "model.factroy=a:b")
    with pytest.raises(ConfigCompositionException, match=r"dataset\.input_divisor"):
        compose_cfg("dataset=custom", "dataset.input_divisor=255")
    with pytest.raises(ConfigCompositionException, match=r"dataset\.loader"):
        compose_cfg("dataset=mnist", "dataset.loader=a:b")  # only dataset=custom has a loader


def test_a_users_option_files_build_on_custom(tmp_path):
    # A user's config folder on the search path: their names, sweeplab's `custom` underneath;
    # validation looks at `name` (custom), never at the option's file name.
    (tmp_path / "model").mkdir()
    (tmp_path / "dataset").mkdir()
    (tmp_path / "model" / "mynet.yaml").write_text(
        "# Mine.\ndefaults: [custom, _self_]\nfactory: custom_parts:dense\nkwargs: {hidden: 4}\n")
    (tmp_path / "dataset" / "myblobs.yaml").write_text(
        "# Mine.\ndefaults: [custom, _self_]\nloader: custom_parts:blobs\nval_fraction: 0.2\n")
    cfg = compose_cfg("model=mynet", "dataset=myblobs", "model.kwargs.hidden=6",
                      f"hydra.searchpath=[file://{tmp_path}]")
    validate(cfg)
    assert (cfg.model.name, cfg.model.factory, cfg.model.kwargs.hidden) == (
        "custom", "custom_parts:dense", 6)
    assert (cfg.dataset.name, cfg.dataset.val_fraction) == ("custom", 0.2)
    with pytest.raises(ConfigCompositionException, match=r"model\.hiden"):
        compose_cfg("model=mynet", "model.hiden=3", f"hydra.searchpath=[file://{tmp_path}]")


def test_the_custom_options_are_not_image_or_text_only():
    # A custom model or dataset is a classifier over arrays: it joins the image task.
    assert config.CUSTOM in config.IMAGE_MODELS and config.CUSTOM in config.IMAGE_DATASETS
    assert set(config.DATASET_SCHEMAS) <= set(config.DATASETS)
    with pytest.raises(ConfigError, match=r"^model\.name: custom reads images but "
                                          r"dataset=ptb is text"):
        validate(compose_cfg("model=custom", FOR_CUSTOM["model"], "dataset=ptb", PTB_DIR))
