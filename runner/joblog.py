"""Per-job log files when one process trains several jobs.

Hydra's job logging (conf/hydra/job_logging) gives a job's process a console handler and a
file handler on the job's log file. A process that trains several jobs has no one file for
every line, so it logs to the console only (`console_only`), and each job's file gets that
job's own lines (`job_files`). Works on the job logging as a plain dict (Hydra's
`logging.config.dictConfig` form), so it is tested without Hydra.

A job's log file is written by `JobFileHandler` (Hydra's job logging names it, `job_files`
uses it): when the disk is full, it keeps the error (`write_error`: the job's run fails with it
at its next metrics call, runner/tracking.py) and drops the file's further lines, instead of
printing logging's traceback for every line it cannot write.
"""
import copy
import errno
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Dict, Iterator, List, Optional, Sequence

HYDRA_FILE_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's default
# The tasks' per-evaluation lines (runner.tasks); a stacked job's own logger is a child of it,
# so its lines go wherever the job logging sends this one's (the file only, by default).
STEPS_LOGGER = "sweeplab.steps"


@dataclass(frozen=True)
class Routing:
    """Where a job's file lines come from, in a process that is not the job's own."""
    file_format: str = HYDRA_FILE_FORMAT
    # The loggers Hydra's job logging gives the job's file ("" = root): a job alone in the
    # process gets all of their lines, as it would under Hydra's basic launcher.
    file_loggers: Sequence[str] = ("",)


FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # no room: as runner/store.py's
_write_errors: Dict[str, OSError] = {}  # {log file: why its lines are dropped}, this process


class JobFileHandler(logging.FileHandler):
    """A job's log file that, once the disk is full, drops its lines without a traceback each:
    the first error is kept for `write_error`, and the job fails with it."""

    def emit(self, record: logging.LogRecord) -> None:
        if self.baseFilename not in _write_errors:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if not self._kept(sys.exc_info()[1]):
            super().handleError(record)

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as err:  # lines buffered before the disk filled are lost too
            if not self._kept(err):
                raise

    def close(self) -> None:
        try:
            super().close()
        except OSError as err:
            if not self._kept(err):
                raise

    def _kept(self, err: Optional[BaseException]) -> bool:
        """A full disk: kept as the file's error (its first), True; anything else False."""
        if not isinstance(err, OSError) or err.errno not in FULL_ERRNOS:
            return False
        _write_errors.setdefault(self.baseFilename,
                                 OSError(err.errno, os.strerror(err.errno), self.baseFilename))
        return True


def write_error(log_file: Optional[str]) -> Optional[OSError]:
    """Why the job log `log_file` lost lines (a full disk), or None."""
    return _write_errors.get(os.path.abspath(log_file)) if log_file else None


def _file_handlers(conf: dict) -> set:
    return {name for name, h in (conf.get("handlers") or {}).items()
            if "FileHandler" in str(h.get("class", ""))}


def console_only(conf: Optional[dict]) -> Optional[dict]:
    """The job logging without its file handlers (a copy; None stays None)."""
    if conf is None:
        return None
    conf = copy.deepcopy(conf)
    files = _file_handlers(conf)
    for name in files:
        del conf["handlers"][name]
    for node in [conf.get("root") or {}, *(conf.get("loggers") or {}).values()]:
        if node.get("handlers"):
            node["handlers"] = [h for h in node["handlers"] if h not in files]
    return conf


def routing(conf: Optional[dict]) -> Routing:
    """The file lines' format and loggers of the job logging `conf`."""
    if conf is None:
        return Routing()
    files = _file_handlers(conf)
    named = {"": conf.get("root") or {}, **(conf.get("loggers") or {})}
    loggers = [name for name, node in named.items() if files & set(node.get("handlers") or ())]
    file_format = HYDRA_FILE_FORMAT
    for name in sorted(files)[:1]:
        formatter = (conf.get("formatters") or {}).get(conf["handlers"][name].get("formatter"))
        file_format = (formatter or {}).get("format", HYDRA_FILE_FORMAT)
    return Routing(file_format=file_format, file_loggers=loggers)


def job_logger(num: int) -> str:
    """The logger of job #num when it shares a process (and a graph) with others."""
    return f"{STEPS_LOGGER}.job{num}"


@contextmanager
def job_files(route: Routing, jobs: Sequence[tuple], shared: bool) -> Iterator[List]:
    """While jobs train, each job's log file gets its own lines; yields their contexts.

    `jobs`: (job number, JobContext) pairs. Alone (`shared` False), the job's file gets every
    line of `route.file_loggers`, as under Hydra's basic launcher. Shared, each job logs to a
    logger of its own (`JobContext.logger_name`) that writes to its file.
    """
    formatter = logging.Formatter(route.file_format)
    attached, contexts = [], []
    for num, context in jobs:
        handler = JobFileHandler(context.log_file)
        handler.setFormatter(formatter)
        if shared:
            loggers = [logging.getLogger(job_logger(num))]
            context = replace(context, logger_name=loggers[0].name)
        else:
            loggers = [logging.getLogger(name or None) for name in route.file_loggers]
        for logger in loggers:
            logger.addHandler(handler)
            attached.append((logger, handler))
        contexts.append(context)
    try:
        yield contexts
    finally:
        for logger, handler in attached:
            logger.removeHandler(handler)
            handler.close()
