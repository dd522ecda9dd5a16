"""Shared test helpers: the project's Hydra config directory and a compose helper."""
from pathlib import Path

from hydra import compose, initialize_config_dir

from runner.config import register_configs

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"

register_configs()


def compose_cfg(*overrides, config_dir=CONF_DIR):
    """The real `config` composed with `overrides`, as `python -m runner OVERRIDES` sees it."""
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose("config", overrides=list(overrides))
