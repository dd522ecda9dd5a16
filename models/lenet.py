"""LeNet-5 as in seed 000: 61,706 parameters on 28x28x1 input padded to 32x32."""
import keras
from keras import layers

from models.init import layer_init


def build(cfg, info) -> keras.Model:
    height, width, _ = info.input_shape
    pad = ((32 - height) // 2, (32 - width) // 2)  # the write-up pads 28x28 with zeros to 32x32
    model = keras.Sequential([
        keras.Input(info.input_shape),
        layers.ZeroPadding2D(pad, name="pad"),
        layers.Conv2D(6, 5, activation="relu", name="conv1", **layer_init(cfg)),
        layers.MaxPool2D(2, name="pool1"),
        layers.Conv2D(16, 5, activation="relu", name="conv2", **layer_init(cfg)),
        layers.MaxPool2D(2, name="pool2"),
        layers.Flatten(name="flatten"),
        layers.Dense(120, activation="relu", name="fc1", **layer_init(cfg)),
        layers.Dense(84, activation="relu", name="fc2", **layer_init(cfg)),
        layers.Dense(info.num_classes, name="logits", **layer_init(cfg)),
    ], name="lenet")
    return model
