"""The log formats: text lines as `logging.Formatter(TEXT_FORMAT)` writes them, one JSON object per
line with the extras, and the format setting."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterator

import pytest

from paceline.config import ConfigError, Settings
from paceline.logs import TEXT_FORMAT, JsonFormatter, LoopPassHandler, TextFormatter


def _record(created: float, exc_info: logging._SysExcInfoType | None = None) -> logging.LogRecord:
    record = logging.getLogger("paceline.queue.jobs").makeRecord(
        "paceline.queue.jobs",
        logging.INFO,
        __file__,
        1,
        "job %d (object %d) enqueued, slot %s",
        (7, 2, "2026-12-07T04:00:00.250000Z"),
        exc_info,
        extra={"job_id": 7, "object_id": 2, "attempt": 0},
    )
    record.created, record.msecs = created, (created - int(created)) * 1000
    return record


def test_text_lines_read_as_the_stock_format_writes_them() -> None:
    # Log readers parse these lines (time, level, logger, message); the faster formatter must
    # not change a character, across seconds (its cached part) and with a traceback.
    stock, fast = logging.Formatter(TEXT_FORMAT), TextFormatter()
    start = time.time()
    for created in (start, start + 0.001, start + 0.999, start + 1.0, start + 86_400.5, 0.0):
        assert fast.format(_record(created)) == stock.format(_record(created))
    try:
        raise ValueError("upstream said <no>")
    except ValueError:
        failed = _record(start, sys.exc_info())
    line = fast.format(failed)
    assert line == logging.Formatter(TEXT_FORMAT).format(_record(start, failed.exc_info))
    assert line.splitlines()[-1] == "ValueError: upstream said <no>"


def test_json_lines_carry_the_extras_and_the_exception() -> None:
    try:
        raise ValueError("upstream said <no>")
    except ValueError:
        record = logging.getLogger("paceline.queue.worker").makeRecord(
            "paceline.queue.worker",
            logging.WARNING,
            __file__,
            1,
            "job %d failed",
            (7,),
            sys.exc_info(),
            extra={"job_id": 7, "object_id": 2**63 - 1, "attempt": 2},
        )
    line = JsonFormatter().format(record)

    assert "\n" not in line  # one record, one line, even with a traceback
    document = json.loads(line)
    assert document["message"] == "job 7 failed"
    assert (document["level"], document["logger"]) == ("WARNING", "paceline.queue.worker")
    assert (document["job_id"], document["object_id"], document["attempt"]) == (7, 2**63 - 1, 2)
    assert document["time"].endswith("+00:00")
    assert "ValueError: upstream said <no>" in document["exception"]


def test_the_log_format_is_checked() -> None:
    assert Settings.from_env({"PACELINE_LOG_FORMAT": "json"}).log_format == "json"
    assert Settings.from_env({}).log_format == "text"
    with pytest.raises(ConfigError, match="PACELINE_LOG_FORMAT must be text or json"):
        Settings.from_env({"PACELINE_LOG_FORMAT": "xml"})


class _Stream:
    """A stream that keeps each write apart, as the kernel sees them."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


@pytest.fixture
def written() -> Iterator[tuple[logging.Logger, LoopPassHandler, list[str]]]:
    stream = _Stream()
    handler = LoopPassHandler(stream)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("paceline.test.loop_pass")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, handler, stream.writes
    logger.removeHandler(handler)


async def test_the_lines_of_one_loop_pass_go_out_in_one_write_in_order(
    written: tuple[logging.Logger, LoopPassHandler, list[str]],
) -> None:
    # A loaded replica logs thousands of job lines a second: one write for each pass of the
    # event loop, not one per line, and not a line lost or reordered.
    logger, _, writes = written
    for job in range(3):
        logger.info("job %d started", job)
    assert writes == []
    await asyncio.sleep(0)
    assert writes == ["INFO job 0 started\nINFO job 1 started\nINFO job 2 started\n"]
    logger.info("job 3 started")
    await asyncio.sleep(0)
    assert writes[1:] == ["INFO job 3 started\n"]


async def test_a_warning_does_not_wait_and_keeps_the_order(
    written: tuple[logging.Logger, LoopPassHandler, list[str]],
) -> None:
    logger, _, writes = written
    logger.info("job 7 started")
    logger.warning("job 7 failed")
    assert writes == ["INFO job 7 started\nWARNING job 7 failed\n"]
    await asyncio.sleep(0)
    assert len(writes) == 1


async def test_another_thread_writes_at_once_after_what_waits(
    written: tuple[logging.Logger, LoopPassHandler, list[str]],
) -> None:
    logger, _, writes = written
    logger.info("on the loop")
    await asyncio.to_thread(logger.info, "from a thread")
    assert writes == ["INFO on the loop\nINFO from a thread\n"]


def test_without_a_loop_and_at_exit_nothing_waits(
    written: tuple[logging.Logger, LoopPassHandler, list[str]],
) -> None:
    logger, handler, writes = written
    logger.info("starting")  # start-up: no loop runs yet
    assert writes == ["INFO starting\n"]

    # A loop that stops before its pass's write runs (the serve loop at exit): the exit's flush
    # (logging.shutdown calls it) writes what waits, and a loop after it schedules its own.
    loop = asyncio.new_event_loop()
    loop.call_soon(logger.info, "last line")
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.close()
    assert writes == ["INFO starting\n"]
    handler.flush()
    assert writes[-1] == "INFO last line\n"

    async def log() -> None:
        logger.info("next loop")
        await asyncio.sleep(0)

    asyncio.run(log())
    assert writes[-1] == "INFO next loop\n"
