"""runner/signals.py in-process: what the handler records, who counts as a child, the job
guard. What only real processes show (workers stopping, orphans exiting) is in
test_reliability.py and test_stacked_launcher.py."""
import os
import signal
import subprocess
import sys
import time

import pytest

from runner import signals


@pytest.fixture
def fresh(monkeypatch):
    """The module's process-wide state as in a new process; handlers restored afterwards."""
    monkeypatch.setattr(signals, "_received", None)
    monkeypatch.setattr(signals, "_launcher_pid", None)
    monkeypatch.setattr(signals, "_busy", False)
    handlers = {s: signal.getsignal(s) for s in signals.STOP_SIGNALS}
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def test_the_first_signal_is_kept_and_gives_the_exit_code(fresh):
    assert signals.received() is None
    signals._on_signal(signal.SIGTERM)
    signals._on_signal(signal.SIGINT)  # a second one changes nothing
    assert signals.received() == signal.SIGTERM
    assert signals.exit_code() == 143 and signals.name(signal.SIGINT) == "SIGINT"


def test_the_launcher_records_a_real_signal_and_lives_on(fresh, capfd):
    signals.install_launcher()
    assert signals.is_launcher()
    os.kill(os.getpid(), signal.SIGINT)
    deadline = time.monotonic() + 5
    while signals.received() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # Python runs the handler between bytecodes of the main thread
    assert signals.received() == signal.SIGINT and signals.exit_code() == 130
    assert "sweeplab: SIGINT: stopping at the next metrics log" in capfd.readouterr().err


def test_children_are_read_from_proc():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in signals.children(os.getpid())
        assert os.getpid() not in signals.children(os.getpid())
    finally:
        child.kill()
        child.wait()


def test_a_job_marks_the_process_busy_and_the_launcher_is_no_worker(fresh):
    signals.install_launcher()
    with signals.job():
        assert signals._busy
        assert not signals._worker_ready  # the launcher does not make itself a worker
    assert not signals._busy
