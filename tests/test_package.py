"""runner/__init__.py: TensorFlow's C++ INFO/WARNING lines are hidden in every process that
imports sweeplab, spawned workers included, unless the user chose a level."""
import subprocess
import sys

from conftest import cli_env

SHOW = "import os; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))"
# A worker started the way the stacked launcher starts them (multiprocessing's spawn).
SPAWN = ("import multiprocessing, os, runner\n"
         "def level(queue):\n"
         "    queue.put(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))\n"
         "if __name__ == '__main__':\n"
         "    ctx = multiprocessing.get_context('spawn')\n"
         "    queue = ctx.Queue()\n"
         "    worker = ctx.Process(target=level, args=(queue,))\n"
         "    worker.start()\n"
         "    print(queue.get(timeout=60))\n"
         "    worker.join()\n")


def _run(code, tmp_path, **env):
    """The last word `python -c code` prints (`code` a path: that script)."""
    base = {k: v for k, v in cli_env(tmp_path).items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    argv = [str(code)] if hasattr(code, "is_file") else ["-c", code]
    done = subprocess.run([sys.executable, *argv], cwd=tmp_path, env={**base, **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()[-1]


def test_importing_any_part_of_sweeplab_sets_level_2(tmp_path):
    for module in ("runner", "runner.data", "runner.tasks"):
        assert _run(f"import {module}; {SHOW}", tmp_path) == "2"


def test_a_spawned_worker_has_it(tmp_path):
    script = tmp_path / "spawn.py"
    script.write_text(SPAWN)
    assert _run(script, tmp_path) == "2"


def test_the_users_level_is_kept(tmp_path):
    assert _run(f"import runner; {SHOW}", tmp_path, TF_CPP_MIN_LOG_LEVEL="0") == "0"
