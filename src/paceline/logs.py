"""Logging for `paceline serve`: lines for people, or JSON objects for a log collector.

PACELINE_LOG_FORMAT=json writes one JSON object per line. Whatever a caller passes in
`extra=` (the job transitions pass `job_id`, `object_id`, `attempt`) becomes a field of it,
so a collector can follow one job or one object across replicas without parsing messages.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import traceback
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from paceline.config import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, written the way `logging.Formatter(TEXT_FORMAT)` writes it, for less: a
    replica under load writes thousands of lines a second (a job's accept, start and end), and
    the stock formatter spent a third of each line's time on its timestamp. This one formats
    the local date and time once a second and the rest of the line in one f-string; a record
    with an exception or a stack goes the stock way."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        # (the second, its "YYYY-mm-dd HH:MM:SS"): one tuple, so threads never see a torn pair.
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """`asctime` as the stock formatter writes it: local time, then the milliseconds."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached, stamp = self._second
        if cached != second:
            stamp = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = (second, stamp)
        return f"{stamp},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line (more when it carries an exception or a stack)."""
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)
        record.message = record.getMessage()
        record.asctime = self.formatTime(record)
        return f"{record.asctime} {record.levelname} {record.name}: {record.message}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC), level, logger, message, and the extras."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in document:
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra that JSON cannot hold (a UUID, a datetime) is still written.
        return orjson.dumps(document, default=str).decode()


class LoopPassHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler that writes the lines logged in one pass of the event loop together.

    Under load a replica logs every job's accept, start and end, thousands of lines a second,
    and sys.stderr hands each line to the kernel in a write of its own (it has no buffer below
    the text layer): 3-5% of a loaded replica's py-spy samples were in those writes
    (docs/performance-notes.md). A line logged on the event loop's thread waits for the end of
    the loop's pass (a `call_soon`, which runs after the callbacks already due), then every
    line of that pass goes out in one write, in order. A warning or worse, and a line logged
    where no loop runs (start-up, shutdown, another thread), is written at once after those
    waiting: nothing that explains a failure waits, and the order holds. Exit
    (`logging.shutdown`) flushes what waits; a SIGKILL loses at most the lines of the pass it
    interrupts, which the job rows in PostgreSQL still record.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._waiting: list[str] = []
        # The loop a write is scheduled on; another loop in this thread (a test's, or a
        # closed one whose callback never ran) schedules its own.
        self._scheduled_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        """Format the record; write it now or at the end of the loop's pass (above)."""
        try:
            line = self.format(record) + self.terminator
            self._waiting.append(line)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is None or record.levelno >= logging.WARNING:
                self._write_waiting()
            elif self._scheduled_on is not loop:
                self._scheduled_on = loop
                loop.call_soon(self._write_pass)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Write what waits, then flush the stream."""
        self.acquire()
        try:
            self._write_waiting()
        finally:
            self.release()

    def _write_pass(self) -> None:
        self.acquire()
        try:
            self._scheduled_on = None
            self._write_waiting()
        except Exception:
            # What handleError does with a failed write: say so on stderr (if it can) and go
            # on; the lines are dropped, as StreamHandler would have dropped them.
            if logging.raiseExceptions:
                traceback.print_exc(file=sys.stderr)
        finally:
            self.release()

    def _write_waiting(self) -> None:
        # Called with the handler's lock held (emit runs under it).
        if not self._waiting:
            return
        text = "".join(self._waiting)
        self._waiting.clear()
        self.stream.write(text)
        if hasattr(self.stream, "flush"):
            self.stream.flush()


def configure_logging(settings: Settings) -> None:
    """Send every log record to stderr, as text or JSON per PACELINE_LOG_FORMAT."""
    # Workers log every job's transitions, thousands of records a second under load. Neither
    # format shows the caller's file and line, thread or process, so skip collecting them
    # (the logging HOWTO's "Optimization" recipe): a fifth to a quarter less CPU per record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = LoopPassHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
