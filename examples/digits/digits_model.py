"""Two small Keras classifiers for 8x8 digits, as sweeplab's `model=custom` calls them:
factory(input_shape=..., num_classes=..., **model.kwargs) -> keras.Model with logits.

Built from Dense, Conv2D, pooling, Flatten and activations only: layers sweeplab's stacked
engine can train side by side.
"""
import keras
from keras import layers


def mlp(input_shape, num_classes, hidden=(64,), activation="relu"):
    """Flatten, a Dense layer per entry of `hidden`, then Dense(num_classes) logits."""
    stack = [keras.Input(input_shape), layers.Flatten()]
    stack += [layers.Dense(units, activation=activation) for units in hidden]
    stack.append(layers.Dense(num_classes))  # logits: no softmax, sweeplab's loss applies it
    return keras.Sequential(stack, name="digits_mlp")


def convnet(input_shape, num_classes, filters=16, hidden=32):
    """conv3x3-relu, 2x2 max pool, Dense(hidden)-relu, Dense(num_classes) logits."""
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(filters, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(hidden, activation="relu"),
        layers.Dense(num_classes),
    ], name="digits_convnet")
