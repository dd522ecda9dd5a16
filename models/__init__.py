"""Model builders: `build(cfg.model, info)` -> a keras.Model with its weights created.

Each builder takes its own config node and the dataset's DataInfo (input shape, classes).
The config is validated before (runner.config.validate): builders check nothing themselves,
except `custom`, which checks what the user's factory returned (models/custom.py).
"""
from models import alexnet, custom, lenet, lstm_lm, mlp

MODELS = {
    "alexnet": alexnet.build,
    "custom": custom.build,
    "lenet": lenet.build,
    "lstm_lm": lstm_lm.build,
    "mlp": mlp.build,
}


def build(cfg, info):
    return MODELS[cfg.name](cfg, info)
