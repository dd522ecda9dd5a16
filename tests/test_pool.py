"""runner/pool.py: real spawned worker processes, in-process launcher side, no TensorFlow.

The targets below are module functions, as the pool needs (a worker imports them by name).
"""
import os
import signal
import subprocess
import sys
import time

import pytest

from runner import pool, progress


def double(x):
    return 2 * x


def die_on(x):
    if x == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def raise_on(x):
    raise ValueError(f"bad item {x}")


def report_progress(x):
    progress.reporter().job_started("key", f"job {x}", 10)
    progress.reporter().job_finished("key", "ok", "fine")
    return x


def run(n, target, items):
    """({index: value}, {index: why}) of one pool run."""
    done, died = {}, {}
    workers = pool.Pool(n, target)
    workers.run(items, done.__setitem__, died.__setitem__)
    assert not any(p.is_alive() for p in workers.processes)  # they exit with the batch
    return done, died


def test_every_item_comes_back_once_with_its_value():
    done, died = run(2, double, [1, 2, 3, 4, 5])
    assert done == {0: 2, 1: 4, 2: 6, 3: 8, 4: 10} and died == {}


def test_a_worker_that_dies_fails_only_the_item_it_held():
    done, died = run(2, die_on, ["a", "die", "b", "c"])
    assert done == {0: "a", 2: "b", 3: "c"}
    assert list(died) == [1]
    assert died[1].startswith("its worker process ") and died[1].endswith(
        "died (exit code -9)")


def test_once_no_worker_is_left_the_items_nobody_took_fail_at_once():
    started = time.monotonic()
    done, died = run(1, die_on, ["die", "a"])
    assert done == {} and "died (exit code -9)" in died[0]
    assert died[1] == "no worker process is left to take it"
    assert time.monotonic() - started < 60


def test_a_target_that_raises_fails_its_item_and_the_worker_goes_on():
    done, died = run(1, raise_on, ["x", "y"])
    assert done == {}
    assert died[0].endswith("raised ValueError: bad item x")
    assert died[1].endswith("raised ValueError: bad item y")


class Recorder:
    def __init__(self):
        self.events = []

    def job_started(self, key, name, steps):
        self.events.append(("started", key, name, steps))

    def job_finished(self, key, outcome, summary):
        self.events.append(("finished", key, outcome, summary))


def test_the_workers_progress_is_shown_by_the_launchers_reporter(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(progress, "_reporter", recorder)
    done, _ = run(1, report_progress, ["a"])
    assert done == {0: "a"}
    (started, key, name, steps), finished = recorder.events
    assert (started, name, steps) == ("started", "job a", 10)
    assert key[1] == "key" and key[0] != os.getpid()  # keyed by the worker's pid
    assert finished == ("finished", key, "ok", "fine")


def test_a_pool_closed_before_any_batch_ends_its_workers():
    workers = pool.Pool(2, double)
    workers.close()
    assert not any(p.is_alive() for p in workers.processes)
    workers.close()  # once only


@pytest.mark.parametrize("jobs, steps, idle, expected", [
    (8, 300, 2, 2),     # a quiet 2-core machine: two workers of four jobs
    (8, 300, 0, 1),     # busy: train in the launching process
    (8, 300, 1, 1),
    (28, 3000, 8, 4),   # never more than four (memory)
    (3, 3000, 2, 1),    # one per two jobs: a lone job per worker would not stack
    (4, 100, 2, 1),     # 400 job-steps: over before a worker has loaded TensorFlow
    (4, None, 2, 2),    # epochs: size unknown, judged by the count
    (None, 300, 2, 1),  # a sweep nobody could count
])
def test_the_number_of_workers_follows_the_sweep_and_the_idle_cores(jobs, steps, idle,
                                                                    expected):
    assert pool.choose_workers(jobs, steps, idle) == expected


def test_idle_cores_are_the_cores_minus_the_load():
    cores = len(os.sched_getaffinity(0))
    assert 0 <= pool.idle_cores() <= cores


def test_idle_cores_see_a_busy_core_now_not_a_minute_later():
    """A process spinning right now takes a core off at once (the 1-minute load average
    would take about a minute to show it, and as long to forget it)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # it is running
        assert pool.idle_cores() <= len(os.sched_getaffinity(0)) - 1
    finally:
        spinner.kill()
        spinner.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_while_a_worker_starts_does_not_kill_it(signum):
    # A spawned process does not inherit its launcher's blocked signals: a SIGTERM forwarded
    # (or a Ctrl-C) before the worker installed its handler killed it, and a resumed sweep
    # stopped at once recorded its jobs as lost instead of killed.
    workers = pool.Pool(2, double)
    for process in workers.processes:  # at once: the workers are still starting Python
        os.kill(process.pid, signum)
    done, died = {}, {}
    workers.run([1, 2], done.__setitem__, died.__setitem__)
    assert died == {} and done == {0: 2, 1: 4}
