"""Processes as Linux's /proc shows them: for the code that finds a process's children, the
members of a process group, a process's start time or its CPU time.

Each process is its pid and the fields of /proc/PID/stat after the command name (which may hold
spaces and parentheses): [0] state, [1] ppid, [2] process group, [11] utime, [12] stime (clock
ticks), [19] start time (ticks since boot). Where there is no /proc there are no processes.
"""
import os
from typing import Iterator, List, Optional, Tuple

STATE, PPID, PGRP, UTIME, STIME, START_TIME = 0, 1, 2, 11, 12, 19


def stat(pid: int) -> Optional[List[str]]:
    """The stat fields of `pid`; None if it is gone (or there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def processes() -> Iterator[Tuple[int, List[str]]]:
    """(pid, stat fields) of every process alive while it is read."""
    if not os.path.isdir("/proc"):
        return
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat(int(entry))
            if fields is not None:  # gone meanwhile
                yield int(entry), fields


def cpu_seconds(fields: List[str]) -> float:
    """User + system CPU time of a process's stat fields."""
    return (int(fields[UTIME]) + int(fields[STIME])) / os.sysconf("SC_CLK_TCK")
