"""`model=custom`: the user's own Keras model, from `model.factory` ("module:function").

runner.config.validate has already imported the factory and checked its signature (before
TensorFlow loads). Here it is called as `factory(input_shape=..., num_classes=..., **kwargs)`
and what it returns is checked once: a keras.Model that maps a batch of the dataset's inputs to
logits [batch, num_classes]. A failed check is one ConfigError line naming model.factory.
"""
import logging

import keras
import numpy as np

from runner.config import ConfigError, import_target, user_kwargs

log = logging.getLogger(__name__)
PROBE_BATCH = 2  # examples in the forward pass that checks the model's output shape
RETURN_A_MODEL = ("return keras.Model(inputs, logits) or a keras.Sequential whose last layer is "
                  "Dense(num_classes) without softmax")


def build(cfg, info) -> keras.Model:
    factory = import_target(cfg.factory, "model.factory")
    model = factory(input_shape=tuple(info.input_shape), num_classes=info.num_classes,
                    **user_kwargs(cfg.kwargs))
    check_model(model, cfg.factory, info)
    return model


def check_model(model, factory: str, info) -> None:
    """A keras.Model whose weights exist and whose outputs are [batch, num_classes] logits for
    inputs of the dataset's shape; else a ConfigError naming model.factory."""
    if not isinstance(model, keras.Model):
        raise ConfigError(f"model.factory: {factory} returned {type(model).__name__}, not a "
                          f"keras.Model; {RETURN_A_MODEL}")
    shape = (PROBE_BATCH, *info.input_shape)
    try:  # also creates the weights of a model built without an Input
        logits = model(np.zeros(shape, np.float32), training=False)
    except Exception as err:
        reason = " ".join(str(err).split())[:300]
        raise ConfigError(f"model.factory: {factory}'s model cannot take a batch of the dataset's "
                          f"inputs, shape {shape} ({type(err).__name__}: {reason}); build it "
                          f"for input_shape={tuple(info.input_shape)}") from None
    if isinstance(logits, (list, tuple, dict)):
        raise ConfigError(f"model.factory: {factory}'s model has {len(logits)} outputs; "
                          f"{RETURN_A_MODEL}")
    got = tuple(logits.shape)
    if got != (PROBE_BATCH, info.num_classes):
        raise ConfigError(f"model.factory: {factory}'s model outputs shape (batch, "
                          f"{', '.join(map(str, got[1:]))}) but the dataset has "
                          f"{info.num_classes} classes; its output must be (batch, "
                          f"{info.num_classes}): {RETURN_A_MODEL}")
    last = getattr(model.layers[-1], "activation", None) if model.layers else None
    if getattr(last, "__name__", "") == "softmax":
        log.warning("model.factory: %s's last layer applies softmax, but sweeplab's losses take "
                    "logits (they apply softmax themselves): drop activation='softmax'", factory)
