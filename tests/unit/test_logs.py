"""The log formats: text lines as `logging.Formatter(TEXT_FORMAT)` writes them, one JSON object per
line with the extras, and the format setting."""

from __future__ import annotations

import json
import logging
import sys
import time

import pytest

from paceline.config import ConfigError, Settings
from paceline.logs import TEXT_FORMAT, JsonFormatter, TextFormatter


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
