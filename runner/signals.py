"""SIGINT and SIGTERM: stop cleanly, never in the middle of a write.

The handler only records the signal and passes it on to this process's children (a joblib
sweep's workers). Jobs poll `received()` (as `JobContext.should_stop`) at every metrics call
and stop there: the run is flushed and closed KILLED. Jobs not started yet are skipped; the
sweep closes its parent KILLED; the process exits 128 + signal (130 SIGINT, 143 SIGTERM).
Nothing raises from inside a handler, so a run is never cut off halfway through closing.

Worker processes: a launcher that spawns them (joblib/loky, the stacked launcher) blocks SIGINT/SIGTERM in its main
thread first (`shield_workers`), so a Ctrl-C reaching an idle worker cannot kill it (loky would
then SIGKILL the other workers while they close their runs). A spawned process does not keep
that block through exec, so the stacked launcher's pool also spawns its workers with the two
signals ignored (`ignored_by_children`) and passes a signal they missed on once they are
ready. The launcher receives its own signals in a watcher thread. A worker installs the handler
and unblocks the signals when it starts a job (`job`; a stacked worker at once,
`prepare_worker`); a signal that arrived before is then seen, and the job is skipped. Workers watch their launcher: if it dies (even by SIGKILL) they
stop as if signalled and exit, so none lives on as an orphan or starts another job.
"""
import contextlib
import os
import signal
import sys
import threading
import time
from typing import List, Optional

from runner import procfs

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
ORPHAN_EXIT_SECONDS = 120.0  # a worker whose launcher died waits this long for its job to close

# Process-wide by nature: signals are delivered to a process, not to a run.
_received: Optional[int] = None
_launcher_pid: Optional[int] = None
_worker_ready = False
_busy = False  # a job is running in this process


def received() -> Optional[int]:
    """The first stop signal this process got, or None."""
    return _received


def exit_code() -> int:
    return 128 + (_received or 0)


def name(signum: int) -> str:
    return signal.Signals(signum).name


def is_launcher() -> bool:
    """This process is the one the user started (not a worker it spawned)."""
    return _launcher_pid == os.getpid()


def _say(message: str) -> None:
    """A line on stderr, safe inside a signal handler (print() may be mid-write already)."""
    os.write(sys.stderr.fileno(), (message + "\n").encode())


def _on_signal(signum: int, frame=None) -> None:
    global _received
    if _received is not None:
        if is_launcher():
            _say(f"sweeplab: already stopping (closing runs); kill -9 {os.getpid()} stops at "
                 f"once, its open runs are then marked lost")
        return
    _received = signum
    if is_launcher():
        _say(f"sweeplab: {name(signum)}: stopping at the next metrics log; runs in progress "
             f"close as KILLED, jobs not started are skipped")
    for child in children(os.getpid()):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass


def children(pid: int) -> List[int]:
    """Direct child processes of `pid`, read from /proc (none where there is no /proc)."""
    return [child for child, fields in procfs.processes() if int(fields[procfs.PPID]) == pid]


def install_launcher() -> None:
    """In the process the user started, on its main thread: record SIGINT/SIGTERM."""
    global _launcher_pid
    _launcher_pid = os.getpid()
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_signal)


def shield_workers() -> None:
    """Before this launcher spawns worker processes: they inherit SIGINT/SIGTERM blocked."""
    if (not is_launcher() or not hasattr(signal, "pthread_sigmask")
            or threading.current_thread() is not threading.main_thread()):
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    threading.Thread(target=_receive_blocked, daemon=True, name="sweeplab-signals").start()


def _receive_blocked() -> None:
    """The launcher's blocked signals, taken one by one (threads started now inherit the
    block, so this one can wait for them)."""
    while True:
        _on_signal(signal.sigwait(STOP_SIGNALS))


@contextlib.contextmanager
def ignored_by_children():
    """Around spawning a worker: SIGINT and SIGTERM ignored, so the worker starts with them
    ignored. A spawned process does not keep its parent's blocked signals (`shield_workers`)
    through exec, but it keeps an ignored disposition; without this, a stop signal forwarded
    (or a Ctrl-C) in the second before the worker installs its handler killed it, and its job
    was recorded lost. The pool passes on a signal the worker missed once it is ready
    (runner.pool). Main thread only (elsewhere nothing changes); a signal that reaches this
    process within the few milliseconds of the spawn itself is lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        for signum, handler in saved.items():
            if handler is not None:  # None: set outside Python, nothing to restore it with
                signal.signal(signum, handler)


def prepare_worker(launcher: Optional[int] = None) -> None:
    """Once per worker process: the handler, the signals unblocked, a watch on the launcher.

    `launcher`: its pid, as the launcher gave it; else this process's parent now (a worker
    that starts after its launcher died would then watch the wrong process).
    """
    global _worker_ready
    if (_worker_ready or is_launcher()
            or threading.current_thread() is not threading.main_thread()):
        return
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_signal)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a pending one lands now
    threading.Thread(target=_watch_launcher, args=(launcher or os.getppid(),), daemon=True,
                     name="sweeplab-launcher-watch").start()
    _worker_ready = True


def _watch_launcher(launcher: int) -> None:
    """A worker whose launcher died stops like a signalled one, then exits."""
    while os.getppid() == launcher:
        time.sleep(1.0)
    _on_signal(signal.SIGTERM)
    deadline = time.monotonic() + ORPHAN_EXIT_SECONDS
    while _busy and time.monotonic() < deadline:
        time.sleep(0.2)
    os._exit(128 + signal.SIGTERM)


@contextlib.contextmanager
def job():
    """Around one job in this process: makes a worker process stoppable, marks it busy."""
    global _busy
    prepare_worker()
    _busy = True
    try:
        yield
    finally:
        _busy = False
