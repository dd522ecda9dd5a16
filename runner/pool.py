"""Worker processes that take work items from a launcher, one at a time, and send back results.

Spawned (not forked: TensorFlow's threads do not survive a fork) when the pool is made, so
that each worker does its slow set-up (`setup`, e.g. importing TensorFlow) while the launcher
prepares the work. A worker stops like a signalled process and exits when its launcher dies,
even by SIGKILL (runner/signals.py); its progress events are drawn by the launcher
(runner/progress.py). A worker that dies fails only the item it held; the launcher never
waits for a dead process.
"""
import logging
import multiprocessing
import os
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing import connection
from typing import Callable, List, Optional, Sequence

from runner import progress, signals

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0  # how often the launcher checks that its workers are alive


def _worker(todo, conn, target: Callable, setup: Optional[Callable], setup_args: tuple,
            launcher: int) -> None:
    """A worker process: set up once, then `target(item)` for each item until told to stop."""
    signals.prepare_worker(launcher)  # stoppable, and gone with its launcher, from the start
    lock = threading.Lock()  # progress may come from a task's thread

    def send(message) -> None:
        with lock:
            conn.send(message)

    progress.forward_to(lambda event: send(("progress", event)))
    send(("ready", None))  # its handler is in: from now on a stop signal reaches it
    if setup is not None:
        setup(*setup_args)
    while True:
        item = todo.get()
        if item is None:
            return
        with signals.job():
            try:
                message = ("done", target(item))
            except BaseException as err:  # the target's own failure: this item fails alone
                message = ("raised", traceback.format_exception_only(type(err), err)[-1].strip())
        send(message)


@dataclass(eq=False)
class _Worker:
    process: multiprocessing.process.BaseProcess
    todo: object  # its own queue: the launcher always knows which item a worker holds
    conn: object  # what it sends back; its end of the pipe closes when it exits
    held: Optional[int] = None  # the index of the item it trains
    ready: bool = False  # it has its signal handler (runner.signals.prepare_worker)
    told: bool = False  # a stop signal the launcher got was passed on to it, ready


class Pool:
    """`n` spawned workers running `target` (picklable by reference) on the items of `run`."""

    def __init__(self, n: int, target: Callable, setup: Optional[Callable] = None,
                 setup_args: tuple = ()) -> None:
        spawn = multiprocessing.get_context("spawn")
        self.workers: List[_Worker] = []
        for i in range(n):
            todo, (reader, writer) = spawn.Queue(), spawn.Pipe(duplex=False)
            process = spawn.Process(target=_worker, name=f"sweeplab-worker-{i}", args=(
                todo, writer, target, setup, setup_args, os.getpid()))
            with signals.ignored_by_children():  # a stop signal must not kill it while it starts
                process.start()
            writer.close()  # the worker's end only: reading it then ends when the worker does
            self.workers.append(_Worker(process, todo, reader))
        self.closed = False

    @property
    def processes(self) -> list:
        return [w.process for w in self.workers]

    @property
    def size(self) -> int:
        return len(self.workers)

    def close(self) -> None:
        """Workers finish what they hold and exit (also when no item ever came)."""
        if self.closed:
            return
        self.closed = True
        for w in self.workers:
            if w.process.is_alive():
                w.todo.put(None)
        for w in self.workers:
            w.process.join(timeout=60)
            if w.process.is_alive():
                w.process.terminate()

    def run(self, items: Sequence, done: Callable[[int, object], None],
            died: Callable[[int, str], None]) -> None:
        """Every item to a worker, one at a time each; then the workers exit.

        `done(index, value)` as each item ends; `died(index, why)` for an item whose worker
        died (or whose target raised) and, once no worker is left, for the items none took.
        """
        todo = list(range(len(items)))[::-1]  # popped from the end: in order
        live = list(self.workers)
        while live and (todo or any(w.held is not None for w in live)):
            for w in live:
                if w.held is None and todo:
                    w.held = todo.pop()
                    w.todo.put(items[w.held])
            connection.wait([w.conn for w in live] + [w.process.sentinel for w in live],
                            timeout=POLL_SECONDS)
            for w in list(live):
                if self._receive(w, done, died):
                    self._pass_on_stop(w)
                    continue
                live.remove(w)
                w.process.join(timeout=10)
                if w.held is not None:
                    why = f"its worker process {w.process.pid} died (exit code " \
                          f"{w.process.exitcode})"
                    log.error("item %d failed: %s", w.held, why)
                    died(w.held, why)
        for index in todo[::-1]:
            died(index, "no worker process is left to take it")
        self.close()

    @staticmethod
    def _pass_on_stop(w: _Worker) -> None:
        """A stop signal the launcher got while `w` was starting (ignored there, see
        `Pool`) is passed on once `w` has its handler, so it skips or stops its job."""
        signum = signals.received()
        if signum and w.ready and not w.told:
            w.told = True
            try:
                os.kill(w.process.pid, signum)
            except ProcessLookupError:
                pass

    @staticmethod
    def _receive(w: _Worker, done, died) -> bool:
        """Handle what `w` sent; False once it is gone (its pipe closed or it exited)."""
        try:
            while w.conn.poll():
                kind, payload = w.conn.recv()
                if kind == "progress":
                    progress.replay(payload)
                    continue
                if kind == "ready":
                    w.ready = True
                    continue
                index, w.held = w.held, None
                if kind == "done":
                    done(index, payload)
                else:
                    died(index, f"its worker process {w.process.pid} raised {payload}")
        except (EOFError, OSError):
            return False
        return w.process.is_alive()


def idle_cores(window: float = 0.3) -> int:
    """Cores this process may use that are idle now (>= 0): the machine's idle CPU time over
    `window` seconds (Linux's /proc/stat), else what its 1-minute load leaves.

    Not the load average alone: it decays over minutes, so a sweep started right after
    another one (make bench-sweep's rows, a script of sweeps) saw the previous sweep's load
    and trained on one core of two idle ones.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    busy = _busy_cores(window)
    if busy is None:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(0, min(cores, int(cores - busy + 0.5)))


def _busy_cores(window: float) -> Optional[float]:
    """Cores' worth of CPU time used over the next `window` seconds; None off Linux."""
    def sample():
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle  # user..steal: guest time is already in user
    try:
        total_before, idle_before = sample()
        time.sleep(window)
        total_after, idle_after = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total_after - total_before
    if total <= 0:
        return None
    host_cores = os.cpu_count() or 1  # /proc/stat's first line adds up every CPU
    return host_cores * (total - (idle_after - idle_before)) / total


def choose_workers(jobs: Optional[int], job_steps: Optional[int], idle: int,
                   max_workers: int = 4, min_steps: int = 1000) -> int:
    """How many workers a sweep should get; 1 = train in the launching process.

    A worker costs a process start and a TensorFlow import (~5 s of one core) and ~1 GB; it
    pays only when it takes real training off a core nobody else uses. So: at most one per
    idle core (a busy machine gets 1: two workers fighting for one core made an 8-job sweep
    47 % slower than the basic launcher), one per two jobs (a worker should stack), one per
    `min_steps` job-steps of training (jobs x steps: a small sweep is over before a worker
    has loaded), and `max_workers` (memory).
    """
    if not jobs:
        return 1
    by_size = (jobs * job_steps) // min_steps if job_steps else jobs
    return max(1, min(idle, jobs // 2, by_size, max_workers))
