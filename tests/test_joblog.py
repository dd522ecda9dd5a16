"""runner/joblog.py in-process: the project's own job logging, real logging handlers, tmp files."""
import logging
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from runner import joblog
from runner.tracking import JobContext

SWEEPLAB_LOGGING = yaml.safe_load((ROOT / "conf/hydra/job_logging/sweeplab.yaml").read_text())


def test_console_only_drops_the_file_handler_everywhere_and_leaves_the_original_alone():
    console = joblog.console_only(SWEEPLAB_LOGGING)
    assert set(console["handlers"]) == {"console"}
    assert console["root"]["handlers"] == ["console"]
    assert console["loggers"]["sweeplab.steps"]["handlers"] == []
    assert SWEEPLAB_LOGGING["root"]["handlers"] == ["console", "file"]  # a copy was changed
    assert joblog.console_only(None) is None


def test_routing_finds_the_file_format_and_the_loggers_that_write_to_the_file():
    route = joblog.routing(SWEEPLAB_LOGGING)
    assert route.file_format == SWEEPLAB_LOGGING["formatters"]["simple"]["format"]
    assert sorted(route.file_loggers) == ["", "sweeplab.steps"]
    assert joblog.routing(None) == joblog.Routing()


@pytest.fixture(autouse=True)
def info_level():
    """INFO lines pass, as Hydra's job logging sets them (root and sweeplab.steps)."""
    loggers = [logging.getLogger(), logging.getLogger(joblog.STEPS_LOGGER)]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
    yield
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


def contexts(tmp_path, nums):
    return [(num, JobContext(log_file=str(tmp_path / f"job{num}.log"))) for num in nums]


def test_jobs_sharing_a_process_each_get_their_own_lines(tmp_path):
    route = joblog.routing(SWEEPLAB_LOGGING)
    with joblog.job_files(route, contexts(tmp_path, [3, 4]), shared=True) as routed:
        assert [c.logger_name for c in routed] == ["sweeplab.steps.job3", "sweeplab.steps.job4"]
        for context in routed:
            logging.getLogger(context.logger_name).info("step of %s", context.logger_name)
        logging.getLogger("runner.somewhere").info("a line of no job")
    three, four = (Path(tmp_path / f"job{n}.log").read_text() for n in (3, 4))
    assert "step of sweeplab.steps.job3" in three and "job4" not in three
    assert "step of sweeplab.steps.job4" in four and "job3" not in four
    assert "a line of no job" not in three + four
    assert three.startswith("[") and "][sweeplab.steps.job3][INFO] - " in three  # the format
    # The handlers are gone afterwards: later lines reach no job's file.
    logging.getLogger("sweeplab.steps.job3").info("after")
    assert "after" not in Path(tmp_path / "job3.log").read_text()


def test_a_job_alone_gets_every_line_of_the_file_loggers(tmp_path):
    route = joblog.routing(SWEEPLAB_LOGGING)
    with joblog.job_files(route, contexts(tmp_path, [7]), shared=False) as [context]:
        assert context.logger_name is None  # the task's own loggers
        logging.getLogger("runner.anything").info("root line")
        logging.getLogger("sweeplab.steps").info("step line")
    root = logging.getLogger()
    text = Path(tmp_path / "job7.log").read_text()
    assert "root line" in text and "step line" in text
    assert not [h for h in root.handlers if isinstance(h, logging.FileHandler)
                and h.baseFilename == str(tmp_path / "job7.log")]


def test_a_job_log_on_a_full_disk_keeps_its_first_error_and_drops_the_rest(capsys):
    handler = joblog.JobFileHandler("/dev/full")  # every write: ENOSPC
    logger = logging.getLogger("sweeplab.test.fulldisk")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(50):
            logger.warning("line %d", i)
    finally:
        logger.removeHandler(handler)
        handler.close()  # its buffered lines are lost too: no error
    assert "No space left on device" in str(joblog.write_error("/dev/full"))
    assert capsys.readouterr().err == ""  # not logging's traceback per line
