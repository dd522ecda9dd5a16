"""A disk that fills up in the middle of a sweep, for real: the sweep runs on a 64 MB tmpfs that
the test fills (every byte) once the first job is training. Needs root (mount); slow.

What runner/outbox.py, tracking.py and store.py guarantee is asserted as is: no outbox thread
dies, MLflow's SQL tracebacks are not printed, a job whose writes were lost fails, the sweep
exits non-zero. The whole target (one line, nothing else) also needs the job log's file
handler and the job lifecycle to stop at the first full-disk error: marked xfail until they do.
"""
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import cli_env

pytestmark = pytest.mark.slow
SWEEP = ["-m", "model=mlp", "model.hidden=[16]", "train.eval_size=50", "train.steps=40000",
         "train.eval_every=50", "optimizer.lr=0.1,0.01,0.001", "hydra/launcher=basic"]


@pytest.fixture
def disk(tmp_path):
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill ({mounted.stderr.strip()}): needs root")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder):
    with open(os.path.join(folder, "filler"), "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass


def sweep_filling_the_disk(disk, *args):
    """Run the sweep in `disk`, fill the disk at the first job's first progress line; returns
    (exit code, stdout, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "runner", *SWEEP, *args], cwd=disk,
                            env=cli_env(disk, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    err = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    out = []
    for line in proc.stdout:
        out.append(line)
        if re.search(r"step +\d+/40000", line) and not os.path.exists(disk / "filler"):
            fill(disk)
    code = proc.wait(600)
    reader.join(30)
    assert os.path.exists(disk / "filler"), "the sweep ended before the disk was filled"
    return code, "".join(out), "".join(err)


def test_store_and_sweep_on_a_full_disk_no_thread_dies_and_the_sweep_fails(disk):
    code, _, err = sweep_filling_the_disk(disk)
    assert code != 0
    assert "Exception in thread sweeplab-outbox" not in err
    assert "ERROR mlflow.store.db.utils" not in err  # MLflow's SQL tracebacks
    lost = [line for line in err.splitlines() if "they are lost" in line]
    assert len(lost) <= 1, lost  # the job training when the disk filled


@pytest.mark.xfail(reason="the job log's FileHandler prints a traceback per line it cannot "
                          "write, and Hydra's next job set-up raises: the job lifecycle and "
                          "runner/joblog.py must stop the sweep at the first full-disk error")
def test_a_full_sweep_disk_is_one_line_and_every_run_closed(disk, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # the store is elsewhere: it can still be written
    code, _, err = sweep_filling_the_disk(disk, f"mlflow.tracking_uri={uri}")
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("sweeplab").experiment_id])
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err[-3000:]
    assert err.startswith("sweeplab: error: ") and "No space left on device" in err
