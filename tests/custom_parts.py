"""A user's model factory and loader for the tests of `model=custom` / `dataset=custom`:
importable as `custom_parts:NAME` because pytest puts tests/ on sys.path.

Keras is imported inside the factory: composing and validating a config that names these
(tests/test_config.py) must not load TensorFlow.
"""
import numpy as np


def dense(input_shape, num_classes, hidden=8):
    import keras

    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dense(hidden, activation="relu"),
                             keras.layers.Dense(num_classes)])


def blobs(n_train=60, n_test=20, classes=3, features=4, seed=0):
    """`classes` Gaussian blobs in `features` dimensions: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, features))

    def draw(n):
        y = np.arange(n) % classes
        return (centres[y] + rng.normal(0, 1, (n, features))).astype(np.float32), y
    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    return x_train, y_train, x_test, y_test


def convnet(input_shape, num_classes, filters=4):
    """Conv, pooling, flatten, dense: layers the stacked engine computes over a job axis."""
    import keras

    return keras.Sequential([keras.Input(input_shape),
                             keras.layers.Conv2D(filters, 3, activation="relu"),
                             keras.layers.AveragePooling2D(2),
                             keras.layers.Conv2D(filters, 3, padding="same"),
                             keras.layers.Activation("tanh"),
                             keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
                             keras.layers.Dense(num_classes)])


def dropout(input_shape, num_classes):
    """A layer with per-call random draws: trains one per graph."""
    import keras

    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(),
                             keras.layers.Dropout(0.5), keras.layers.Dense(num_classes)])
