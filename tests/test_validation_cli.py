"""Bad input through the real CLI: exit 2, exactly one `sweeplab: error:` line naming the
option, no traceback. One case per class of error that runner.config.validate (before
TensorFlow loads) or the data readers (damaged files) now turn into that line."""
import gzip

import numpy as np
import pytest

from conftest import run_cli


def assert_one_error_line(done, option):
    errors = [line for line in done.stderr.splitlines() if line.startswith("sweeplab: error:")]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith(f"sweeplab: error: {option}: "), errors[0]
    assert "Traceback" not in done.stderr + done.stdout
    return errors[0]


@pytest.mark.parametrize("args, option", [
    (["+typo=1"], "typo"),  # a key no schema has
    (["+train.foo=1"], "train.foo"),
    (["optimizer.lr=inf"], "optimizer.lr"),  # a value out of range / not finite
    (["dataset=ptb", "model=lenet"], "model.name"),  # options that do not fit together
    (["model=alexnet", "model.input_size=66"], "model.input_size"),  # once checked after TF
    (["mlflow.experiment_name=''"], "mlflow.experiment_name"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_bad_config_is_one_line_and_exit_2(tmp_path, args, option):
    done = run_cli([*args, f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"], tmp_path)
    assert_one_error_line(done, option)
    assert not (tmp_path / "mlflow.db").exists()  # rejected before anything was tracked


def test_a_tracking_uri_mlflow_cannot_open_is_one_line_and_exit_2(tmp_path):
    done = run_cli(["mlflow.tracking_uri=foo://bar"], tmp_path)
    line = assert_one_error_line(done, "mlflow.tracking_uri")
    assert "'foo'" in line and "e.g. mlflow.tracking_uri=sqlite:///" in line


def test_a_damaged_mnist_file_is_one_line_and_exit_2(tmp_path):
    directory = tmp_path / "mnist"
    directory.mkdir()
    images = np.zeros((4, 28, 28), np.uint8)
    for stem, count in [("train-images-idx3-ubyte", 3), ("train-labels-idx1-ubyte", 1),
                        ("t10k-images-idx3-ubyte", 3), ("t10k-labels-idx1-ubyte", 1)]:
        header = bytes([0, 0, 8, count]) + b"".join(
            n.to_bytes(4, "big") for n in images.shape[:count])
        raw = gzip.compress(header + images[..., :1, :1].tobytes() if count == 1 else
                            header + images.tobytes())
        (directory / f"{stem}.gz").write_bytes(raw)
    cut = directory / "train-images-idx3-ubyte.gz"
    cut.write_bytes(cut.read_bytes()[:-12])  # a copy that stopped early
    done = run_cli([f"dataset.data_dir={directory}", "train.steps=1",
                    f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"], tmp_path)
    line = assert_one_error_line(done, "dataset.data_dir")
    assert str(cut) in line and "re-copy or re-download the file" in line
    # Read before TensorFlow loads: none of its start-up lines, nothing but the error.
    assert done.stderr.splitlines() == [line] and done.stdout == ""


def test_a_ptb_file_that_is_not_utf8_is_one_line_and_exit_2(tmp_path):
    directory = tmp_path / "ptb"
    directory.mkdir()
    for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"):
        (directory / name).write_text(" the cat sat \n" * 50)
    (directory / "ptb.test.txt").write_bytes(b" the \xff\xfe cat \n")
    done = run_cli(["experiment=ptb_lstm", f"dataset.data_dir={directory}",
                    f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"], tmp_path)
    line = assert_one_error_line(done, "dataset.data_dir")
    assert str(directory / "ptb.test.txt") in line and "not UTF-8" in line
    assert done.stderr.splitlines() == [line] and done.stdout == ""  # before TensorFlow loads
