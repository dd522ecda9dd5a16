"""`sweeplab sync`: its bad input is one line and exit 2 (journals themselves: test_outbox.py;
a real server that went away: test_reliability.py)."""
import subprocess
import sys

from conftest import cli_env


def _sync(*args, cwd):
    return subprocess.run([sys.executable, "-m", "runner", "sync", *args], cwd=cwd,
                          env=cli_env(cwd), capture_output=True, text=True, timeout=120)


def test_a_missing_dir_is_one_line_and_exit_2(tmp_path):
    done = _sync(str(tmp_path / "no_such_sweep"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"sweeplab: error: sync: {tmp_path}/no_such_sweep does not exist; give a job or sweep "
        f"folder that holds mlflow_pending*.jsonl files, e.g. outputs/sweeps/<date>/<time>"]


def test_a_folder_without_journals_has_nothing_to_upload(tmp_path):
    done = _sync(str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.strip() == f"sweeplab sync: nothing to upload under {tmp_path}"
