"""AlexNet as in seed 001: 28x28 MNIST digits resized inside the model to input_size^2.

conv11/4-96, LRN, pool3/2, conv5-256, LRN, pool3/2, conv3-384, conv3-384, conv3-256, pool3/2,
fc4096, dropout, fc4096, dropout, fc10. At 227x227 pool5 is 6x6x256 (58.3M parameters with
one input channel). Options: `groups=2` splits conv4/conv5 into two channel groups (the
write-up's experiment 5); `norm=batch` puts BatchNormalization after every conv and fc, before
the ReLU, instead of LRN (experiment 6); `norm=none` uses neither. runner.config checks the
options (input_size >= ALEXNET_MIN_INPUT_SIZE, computed there from the same layer sizes).
"""
import keras
import tensorflow as tf
from keras import layers

from models.init import layer_init


class LocalResponseNorm(layers.Layer):
    """tf.nn.local_response_normalization as a layer, with the write-up's constants."""

    def __init__(self, depth_radius=2, bias=1.0, alpha=2e-05, beta=0.75, **kwargs):
        super().__init__(**kwargs)
        self.depth_radius, self.bias, self.alpha, self.beta = depth_radius, bias, alpha, beta

    def call(self, x):
        return tf.nn.local_response_normalization(x, depth_radius=self.depth_radius,
                                                  bias=self.bias, alpha=self.alpha,
                                                  beta=self.beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "depth_radius": self.depth_radius, "bias": self.bias,
                "alpha": self.alpha, "beta": self.beta}


def _conv(cfg, n, filters, kernel, strides=1, padding="same", groups=1):
    """conv(+bias) -> [BN] -> ReLU -> [LRN after conv1/conv2], as a list of layers."""
    batch = cfg.norm == "batch"
    stack = [layers.Conv2D(filters, kernel, strides=strides, padding=padding, groups=groups,
                           activation=None if batch else "relu", name=f"conv{n}",
                           **layer_init(cfg))]
    if batch:
        stack += [layers.BatchNormalization(name=f"bn{n}"), layers.ReLU(name=f"relu{n}")]
    elif cfg.norm == "lrn" and n in (1, 2):
        stack.append(LocalResponseNorm(name=f"lrn{n}"))
    return stack


def _fc(cfg, n):
    batch = cfg.norm == "batch"
    stack = [layers.Dense(cfg.fc_units, activation=None if batch else "relu", name=f"fc{n}",
                          **layer_init(cfg))]
    if batch:
        stack += [layers.BatchNormalization(name=f"bn_fc{n}"), layers.ReLU(name=f"relu_fc{n}")]
    return stack + [layers.Dropout(cfg.dropout, name=f"dropout{n}")]


def build(cfg, info) -> keras.Model:
    size = cfg.input_size
    pool = dict(pool_size=3, strides=2, padding="valid")
    return keras.Sequential([
        keras.Input(info.input_shape),
        # Bilinear, like the write-up's cv2.resize; inside the model so the data stays 28x28.
        layers.Resizing(size, size, interpolation="bilinear", name="resize"),
        *_conv(cfg, 1, 96, 11, strides=4, padding="valid"),
        layers.MaxPool2D(**pool, name="pool1"),
        *_conv(cfg, 2, 256, 5),
        layers.MaxPool2D(**pool, name="pool2"),
        *_conv(cfg, 3, 384, 3),
        *_conv(cfg, 4, 384, 3, groups=cfg.groups),
        *_conv(cfg, 5, 256, 3, groups=cfg.groups),
        layers.MaxPool2D(**pool, name="pool5"),
        layers.Flatten(name="flatten"),
        *_fc(cfg, 1),
        *_fc(cfg, 2),
        layers.Dense(info.num_classes, name="logits", **layer_init(cfg)),
    ], name="alexnet")
