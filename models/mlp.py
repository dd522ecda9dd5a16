"""Fully connected network on flattened inputs (seeds 002 and 003)."""
import keras
from keras import layers

from models.init import layer_init

# model.activation -> Keras activation; the names are runner.config.ACTIVATIONS.
ACTIVATIONS = {
    "relu": keras.activations.relu,
    "tanh": keras.activations.tanh,
    "sigmoid": keras.activations.sigmoid,
    "elu": keras.activations.elu,
    "gelu": keras.activations.gelu,
}


def build(cfg, info) -> keras.Model:
    stack = [keras.Input(info.input_shape), layers.Flatten(name="flatten")]
    for i, units in enumerate(cfg.hidden, start=1):
        stack.append(layers.Dense(units, activation=ACTIVATIONS[cfg.activation], name=f"fc{i}",
                                  **layer_init(cfg)))
    stack.append(layers.Dense(info.num_classes, name="logits", **layer_init(cfg)))
    return keras.Sequential(stack, name="mlp")
