"""Model builders: `build(cfg.model, info)` -> a keras.Model with its weights created.

Each builder takes its own config node and the dataset's DataInfo (input shape, classes).
"""
from models import alexnet, lenet, lstm_lm, mlp
from runner.config import ConfigError

MODELS = {
    "alexnet": alexnet.build,
    "lenet": lenet.build,
    "lstm_lm": lstm_lm.build,
    "mlp": mlp.build,
}


def build(cfg, info):
    if cfg.name not in MODELS:
        raise ConfigError(f"model.name: unknown model {cfg.name!r}; "
                          f"use one of: {', '.join(sorted(MODELS))}")
    return MODELS[cfg.name](cfg, info)
