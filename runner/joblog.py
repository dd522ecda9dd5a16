"""Per-job log files when one process trains several jobs.

Hydra's job logging (conf/hydra/job_logging) gives a job's process a console handler and a
file handler on the job's log file. A process that trains several jobs has no one file for
every line, so it logs to the console only (`console_only`), and each job's file gets that
job's own lines (`job_files`). Works on the job logging as a plain dict (Hydra's
`logging.config.dictConfig` form), so it is tested without Hydra.
"""
import copy
import logging
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator, List, Optional, Sequence

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
        handler = logging.FileHandler(context.log_file)
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
