"""Shared test helpers: compose the project's config, run the real CLI in a tmp dir, read the
MLflow store it wrote, and write a tiny PTB-style corpus."""
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from runner.config import register_configs

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"
# A budget that exercises training, evaluation and tracking in seconds.
TINY = ("train.steps=30", "train.eval_every=10", "train.eval_size=50")

register_configs()


def compose_cfg(*overrides, config_dir=CONF_DIR):
    """The real `config` composed with `overrides`, as `python -m runner OVERRIDES` sees it."""
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def cli_env(cwd, **extra):
    """The CLI's environment in a test: this checkout first, no user Keras cache."""
    return dict(os.environ, PYTHONPATH=str(ROOT), KERAS_HOME=str(Path(cwd) / "keras_home"),
                **extra)


def run_cli(args, cwd, store=None, timeout=600):
    """`python -m runner ARGS` in `cwd`; returns the CompletedProcess (never raises)."""
    if store:
        args = [*args, f"mlflow.tracking_uri={store}"]
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, env=cli_env(cwd),
                          capture_output=True, text=True, timeout=timeout)


def runs_of(store, experiment="sweeplab"):
    """(client, every run of `experiment`) in the store at `store`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}: nothing was tracked"
    return client, client.search_runs([found.experiment_id], max_results=1000)


def children_of(runs):
    """{run name: run} for the runs that belong to a sweep."""
    return {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}


@pytest.fixture
def store(tmp_path):
    """A fresh sqlite MLflow store in the test's tmp dir."""
    return f"sqlite:///{tmp_path}/mlflow.db"


def tiny_corpus(directory):
    """ptb.{train,valid,test}.txt from a small grammar: learnable, perplexity stays above 1."""
    rng = random.Random(0)
    subjects, verbs = ["the cat", "a dog", "the big bird", "my friend"], ["saw", "ate", "liked"]
    objects = ["the fish", "a red ball", "some bread", "the house"]

    def text(lines):
        return "".join(f" {rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} \n"
                       for _ in range(lines))
    os.makedirs(directory, exist_ok=True)
    for name, lines in (("ptb.train.txt", 300), ("ptb.valid.txt", 40), ("ptb.test.txt", 40)):
        with open(os.path.join(directory, name), "w") as f:
            f.write(text(lines))
    return str(directory)


def mount_tmpfs(folder, size: str) -> None:
    """A real tmpfs of `size` at `folder` (a disk the tests can fill); skips without root."""
    import pytest

    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill ({mounted.stderr.strip()}): needs root")


# Headless Chromium for the browser tests (test_ui.py, test_server.py): Debian's `chromium`
# driven by selenium through Debian's /usr/bin/chromedriver, so nothing is downloaded.
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# As the machine's notes say: without the background-networking flags Chromium keeps trying
# to reach Google's hosts, which this closed network refuses.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1500,1000")


def chromium_missing():
    """What a browser test lacks here (a line naming the package), or None."""
    for binary, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(binary, os.X_OK):
            return f"{binary} missing: apt-get install {package}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium missing: pip install -e '.[ui-test]'"
    return None


def start_chromium(profile_dir):
    """A headless Chromium with a fresh profile in `profile_dir`; quit() it when done. Set
    SE_OFFLINE=true around it: a driver path is given, so Selenium Manager has nothing to
    look up, and offline it tries no download even if it were asked."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


class Proc:
    """A command in its own process group (signals reach all it starts); its output, stdout
    and stderr together, collected line by line while it runs."""

    def __init__(self, args, cwd, env):
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern, timeout=300):
        """Block until a line matches `pattern` (the process still running)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(re.search(pattern, line) for line in self.lines):
                return
            if self.proc.poll() is not None:
                time.sleep(0.5)  # let the reader catch up
                raise AssertionError(f"exited ({self.proc.returncode}) before {pattern!r}:\n"
                                     + self.output[-4000:])
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n" + self.output[-4000:])

    def finish(self, timeout=600) -> int:
        code = self.proc.wait(timeout)
        self.reader.join(10)
        return code
