"""Command line: `python -m runner` / `sweeplab`. Hydra parses overrides and sweeps."""
import os
import sys

# Quiet TensorFlow's C++ start-up chatter before it is imported anywhere.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from runner.config import ConfigError, register_configs, validate  # noqa: E402

register_configs()
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
# Left in a job's output folder when its config was rejected; the sweep callback counts them.
CONFIG_ERROR_MARKER = "CONFIG_ERROR"


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        validate(cfg)  # before TensorFlow loads: a typo costs a second, not ten
        from runner.train import run  # imported late so `--help` and bad values stay fast

        return run(cfg)
    except ConfigError as err:
        # One line naming the option and the fix; no traceback for a user's typo.
        print(f"sweeplab: error: {err}", file=sys.stderr, flush=True)
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode.name != "MULTIRUN":
            sys.exit(2)
        # In a sweep, the other jobs still run; the sweep exits non-zero at the end.
        with open(os.path.join(hydra_cfg.runtime.output_dir, CONFIG_ERROR_MARKER), "w") as f:
            f.write(f"{err}\n")
        return float("nan")
