"""Fully connected network on flattened inputs (seeds 002 and 003)."""
import keras
from keras import layers

from models.init import layer_init
from runner.config import ConfigError

ACTIVATIONS = {"relu", "tanh", "sigmoid", "elu", "gelu"}


def build(cfg, info) -> keras.Model:
    if cfg.activation not in ACTIVATIONS:
        raise ConfigError(f"model.activation: unknown activation {cfg.activation!r}; "
                          f"use one of: {', '.join(sorted(ACTIVATIONS))}")
    if not cfg.hidden or min(cfg.hidden) <= 0:
        raise ConfigError(f"model.hidden: needs positive layer sizes, got {list(cfg.hidden)}; "
                          "e.g. model.hidden=[512,256]")
    stack = [keras.Input(info.input_shape), layers.Flatten(name="flatten")]
    for i, units in enumerate(cfg.hidden, start=1):
        stack.append(layers.Dense(units, activation=cfg.activation, name=f"fc{i}",
                                  **layer_init(cfg)))
    stack.append(layers.Dense(info.num_classes, name="logits", **layer_init(cfg)))
    return keras.Sequential(stack, name="mlp")
