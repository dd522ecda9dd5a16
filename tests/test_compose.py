"""The stacked launcher composes a job from a cached base plus its value overrides
(hydra_plugins/sweeplab_launcher/_compose.py): every such config must equal Hydra's own."""
import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf

from conftest import CONF_DIR
from hydra_plugins.sweeplab_launcher._compose import Composer

MASTER = ["experiment=lr_clip", "hydra/launcher=stacked"]

# Jobs as a sweeper hands them over: per job, its list of overrides.
JOBS = {
    "lr x clipping x seed (the mission's sweep)": [
        ["experiment=lr_clip", f"optimizer.lr={lr}", f"clipping={mode}", f"seed={seed}"]
        for lr in (5e-05, 0.005) for mode in ("none", "value", "global_norm")
        for seed in (0, 3)],
    "groups and values of one group": [
        ["optimizer=sgd", "optimizer.lr=0.1"], ["optimizer=adam", "optimizer.lr=0.1"],
        ["optimizer=sgd", "optimizer.lr=0.2"]],
    "lists, strings, nested keys, escaped URIs": [
        ["model=mlp", "model.hidden=[64,32]", "train.steps=7"],
        ["model=mlp", "model.hidden=[8]", "mlflow.tracking_uri=sqlite\\:////tmp/x y.db"],
        ["model=mlp", "model.hidden=[8]", "mlflow.experiment_name='a b,c'"]],
    "hydra overrides beside values": [
        ["+hydra.job.env_set.FOO=1", "seed=1"], ["+hydra.job.env_set.FOO=2", "seed=2"], ["hydra.job.name=b", "seed=2"]],
    "additions and deletions (composed in full)": [
        ["+extra_key=1", "seed=1"], ["++train.steps=3", "seed=2"]],
}


@pytest.fixture(scope="module")
def loader():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def as_yaml(config):
    return OmegaConf.to_yaml(config)


@pytest.mark.parametrize("case", JOBS)
def test_cached_composition_equals_hydras(loader, case):
    master = loader.load_configuration("config", MASTER, RunMode.MULTIRUN)
    composer = Composer(loader)
    for overrides in JOBS[case]:
        fast = composer.load_sweep_config(master, overrides)
        full = loader.load_sweep_config(master, overrides)
        assert as_yaml(fast) == as_yaml(full), overrides
        assert fast.hydra.job.override_dirname == full.hydra.job.override_dirname
    if case.startswith("additions"):
        assert composer.fast == 0 and composer.full == len(JOBS[case])
    else:
        assert composer.fast == len(JOBS[case])


def test_a_bad_override_gets_hydras_own_error(loader):
    master = loader.load_configuration("config", MASTER, RunMode.MULTIRUN)
    composer = Composer(loader)
    composer.load_sweep_config(master, ["seed=1"])  # a base for this group choice exists
    for bad in (["no_such_key=1"], ["train.steps=not_a_number"]):
        with pytest.raises(Exception) as fast:
            composer.load_sweep_config(master, bad)
        with pytest.raises(Exception) as full:
            loader.load_sweep_config(master, bad)
        assert type(fast.value) is type(full.value) and str(fast.value) == str(full.value)
    assert composer.full == 2  # both went to Hydra for its error, not through a base
