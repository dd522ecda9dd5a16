"""Command line: `python -m runner` / `sweeplab`. Hydra parses overrides and sweeps."""
import os

# Quiet TensorFlow's C++ start-up chatter before it is imported anywhere.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from runner.config import register_configs  # noqa: E402

register_configs()
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    from runner.train import run  # after Hydra has parsed the command line: `--help` stays fast

    return run(cfg)
