"""Weight initialisers by name, shared by every model (`model.init`, `model.init_std`, ...)."""
import keras


def _truncated_normal(cfg):
    # Like tf.truncated_normal: values beyond 2 std are redrawn.
    return keras.initializers.TruncatedNormal(mean=cfg.init_mean, stddev=cfg.init_std)


def _normal(cfg):
    return keras.initializers.RandomNormal(mean=cfg.init_mean, stddev=cfg.init_std)


def _uniform(cfg):
    # Like np.random.rand: uniform on [0, 1) (seed 003).
    return keras.initializers.RandomUniform(minval=0.0, maxval=1.0)


def _glorot(cfg):
    return keras.initializers.GlorotUniform()


# model.init -> initialiser; the names are runner.config.INITS.
KERNEL_INITS = {
    "truncated_normal": _truncated_normal,
    "normal": _normal,
    "uniform": _uniform,
    "glorot": _glorot,
}


def kernel_initializer(cfg):
    return KERNEL_INITS[cfg.init](cfg)


def bias_initializer(cfg):
    # Seed 003 draws biases like weights (np.random.rand); seed 001's second experiment draws
    # them from a truncated normal around bias_init; the others start them at a constant.
    if cfg.init == "uniform":
        return _uniform(cfg)
    std = getattr(cfg, "bias_init_std", 0.0)  # only models whose schema has the field
    if std > 0:
        return keras.initializers.TruncatedNormal(mean=cfg.bias_init, stddev=std)
    return keras.initializers.Constant(cfg.bias_init)


def layer_init(cfg):
    """Kernel and bias initialisers for one layer, as keyword arguments.

    New instances per layer: an unseeded Keras 3 initialiser fixes its seed when constructed,
    so one instance shared by several layers gives same-shaped variables identical values.
    """
    return dict(kernel_initializer=kernel_initializer(cfg), bias_initializer=bias_initializer(cfg))
