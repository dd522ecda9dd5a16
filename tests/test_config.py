"""Every option and preset composes against the schemas; typos fail at compose time; bad
values fail in runner.config.validate with a one-line ConfigError naming the option."""
import shutil

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose_cfg
from runner.config import ConfigError, validate

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "experiment")
OPTIONS = [(group, path.stem) for group in GROUPS
           for path in sorted((CONF_DIR / group).glob("*.yaml"))]
PRESETS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))


def test_the_groups_and_presets_are_found():
    # Guards the parametrisation below against a moved conf/ (which would test nothing).
    assert {"dataset", "model", "optimizer", "clipping", "regularizer", "lr_schedule"} <= set(
        GROUPS)
    assert ("clipping", "global_norm") in OPTIONS and "lenet_clip" in PRESETS


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(group, option):
    cfg = compose_cfg(f"{group}={option}")
    validate(cfg)
    # The option file's own values (its `name` included) land in the composed node.
    own = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    assert "name" in own, f"{group}/{option}.yaml sets no name"
    for key, value in own.items():
        if key != "defaults":
            assert cfg[group][key] == value, f"{group}.{key}"


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
    cfg = compose_cfg(f"experiment={preset}")
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
            cfg = compose_cfg(f"experiment={preset}", f"{key}={value.strip()}")
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
    for option in ("none", "value", "norm", "global_norm"):
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
