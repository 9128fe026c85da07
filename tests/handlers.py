"""Handlers the tests plug in through PACELINE_HANDLER=tests.handlers:<name>."""

from __future__ import annotations

import asyncio
import json
import os

from paceline.queue.handlers import PermanentFailure, RetryLater
from paceline.queue.jobs import Job


async def record(job: Job) -> None:
    """Append `job_id attempt pid` to $PACELINE_TEST_RUN_LOG: proof of every run, per process.

    Then works for $PACELINE_TEST_RUN_SECONDS; a first attempt works for
    $PACELINE_TEST_FIRST_RUN_SECONDS instead, when that is set (a slow run, then a quick retry).
    """
    _append_line(f"{job.id} {job.attempts} {os.getpid()}\n")
    seconds = os.environ.get("PACELINE_TEST_RUN_SECONDS", "0")
    if job.attempts == 1:
        seconds = os.environ.get("PACELINE_TEST_FIRST_RUN_SECONDS", seconds)
    await asyncio.sleep(float(seconds))


async def explode(job: Job) -> None:
    """Fails every job, with an error text that must be shown escaped."""
    raise RuntimeError(f"<script>alert('job {job.id}')</script> upstream said no")


def not_async(job: Job) -> None:
    """Not a coroutine function: PACELINE_HANDLER must refuse it."""


async def flaky(job: Job) -> None:
    """Fails the first two attempts, succeeds on the third."""
    if job.attempts < 3:
        raise ConnectionError(f"upstream refused attempt {job.attempts}")


async def rate_limited(job: Job) -> None:
    """Upstream says 429 with Retry-After: 0.6 on the first attempt."""
    if job.attempts == 1:
        raise RetryLater(0.6, "upstream answered 429, Retry-After: 0.6")


async def refuses(job: Job) -> None:
    """Retrying cannot help (like an HTTP 400)."""
    raise PermanentFailure("upstream answered 400: unknown object")


async def blocks(job: Job) -> None:
    """Runs until cancelled."""
    await asyncio.Event().wait()


async def by_object(job: Job) -> None:
    """Object 2 fails for good; object 3 fails its first attempt; the rest succeed."""
    if job.object_id == 2:
        raise PermanentFailure("upstream answered 400: unknown object")
    if job.object_id == 3 and job.attempts == 1:
        raise ConnectionError("upstream refused the first attempt")


def _append_line(line: str) -> None:
    # O_APPEND writes of one short line do not interleave between processes.
    fd = os.open(os.environ["PACELINE_TEST_RUN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _log_received(handler: str, job: Job) -> None:
    """One JSON line to $PACELINE_TEST_RUN_LOG, when set: what the handler itself received."""
    if "PACELINE_TEST_RUN_LOG" in os.environ:
        seen = {"handler": handler, "id": job.id, "kind": job.kind, "payload": job.payload}
        _append_line(json.dumps(seen) + "\n")


async def echo(job: Job) -> dict[str, object]:
    """Returns what it was given (its result); logs it (`_log_received`)."""
    _log_received("echo", job)
    await asyncio.sleep(float(os.environ.get("PACELINE_TEST_RUN_SECONDS", "0")))
    return {"handler": "echo", "kind": job.kind, "payload": job.payload}


async def shout(job: Job) -> str:
    """Another kind's handler: the payload's `text`, upper-cased; logs it (`_log_received`)."""
    _log_received("shout", job)
    return str(job.payload["text"]).upper()


async def unencodable(job: Job) -> object:
    """Returns something that is not JSON: the job still succeeds, its result stays null."""
    return object()


async def oversized(job: Job) -> str:
    """Returns more than a result may hold (64 KiB as JSON)."""
    return "x" * 70_000
