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
import queue
from typing import Callable, Dict, List, Optional, Sequence

from runner import progress, signals
from runner.outbox import one_line

log = logging.getLogger(__name__)
POLL_SECONDS = 1.0  # how often the launcher checks that its workers are alive


def _worker(todo, results, target: Callable, setup: Optional[Callable], setup_args: tuple,
            launcher: int) -> None:
    """A worker process: set up once, then `target(item)` for each item until told to stop."""
    signals.prepare_worker(launcher)  # stoppable, and gone with its launcher, from the start
    progress.forward_to(lambda event: results.put(("progress", None, event)))
    if setup is not None:
        setup(*setup_args)
    while True:
        got = todo.get()
        if got is None:
            return
        index, item = got
        results.put(("start", index, os.getpid()))
        with signals.job():
            try:
                value = target(item)
            except BaseException as err:  # the target's own failure: this item fails alone
                results.put(("raised", index, f"{type(err).__name__}: {one_line(err)}"))
                continue
        results.put(("done", index, value))


class Pool:
    """`n` spawned workers running `target` (picklable by reference) on the items of `run`."""

    def __init__(self, n: int, target: Callable, setup: Optional[Callable] = None,
                 setup_args: tuple = ()) -> None:
        spawn = multiprocessing.get_context("spawn")
        self.todo, self.results = spawn.Queue(), spawn.Queue()
        self.processes = [spawn.Process(target=_worker, name=f"sweeplab-worker-{i}",
                                        args=(self.todo, self.results, target, setup,
                                              setup_args, os.getpid()))
                          for i in range(n)]
        for process in self.processes:
            process.start()
        self.closed = False

    def close(self) -> None:
        """Workers finish what they hold and exit (also when no item ever came)."""
        if self.closed:
            return
        self.closed = True
        for _ in self.processes:
            self.todo.put(None)
        for process in self.processes:
            process.join(timeout=60)
            if process.is_alive():
                process.terminate()

    def run(self, items: Sequence, done: Callable[[int, object], None],
            died: Callable[[int, str], None]) -> None:
        """Every item to the workers, once; then the workers exit.

        `done(index, value)` as each item ends; `died(index, why)` for an item whose worker
        died (or whose target raised) and, once no worker is left, for the items none took.
        """
        for pair in enumerate(items):
            self.todo.put(pair)
        for _ in self.processes:
            self.todo.put(None)  # each worker exits once the items are taken
        self.closed = True
        held: Dict[int, int] = {}  # item index -> pid of the worker holding it
        pending = set(range(len(items)))

        def handle(message) -> None:
            kind, index, payload = message
            if kind == "progress":
                progress.replay(payload)
            elif kind == "start":
                held[index] = payload
            elif index in pending:
                pending.discard(index)
                if kind == "done":
                    done(index, payload)
                else:
                    died(index, f"its worker process {held.get(index)} raised {payload}")

        def fail(index: int, why: str) -> None:
            pending.discard(index)
            log.error("item %d failed: %s", index, why)
            died(index, why)

        while pending:
            try:
                handle(self.results.get(timeout=POLL_SECONDS))
                continue
            except queue.Empty:
                pass
            dead = {p.pid: p.exitcode for p in self.processes if not p.is_alive()}
            if not dead:
                continue
            _drain(self.results, handle)  # what a worker sent just before it exited
            for index, pid in list(held.items()):
                if pid in dead and index in pending:
                    fail(index, f"its worker process {pid} died (exit code {dead[pid]})")
            if len(dead) == len(self.processes):
                for index in sorted(pending):
                    fail(index, "no worker process is left to take it")
        for process in self.processes:
            process.join()

    @property
    def size(self) -> int:
        return len(self.processes)


def _drain(results, handle) -> None:
    while True:
        try:
            handle(results.get_nowait())
        except queue.Empty:
            return


def idle_cores() -> int:
    """Cores this process may use that the machine's 1-minute load leaves idle (>= 0)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(0, int((cores or 1) - load + 0.5))


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
