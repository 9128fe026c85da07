"""The log formats: one JSON object per line with the extras, and the format setting."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from paceline.config import ConfigError, Settings
from paceline.logs import JsonFormatter


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
