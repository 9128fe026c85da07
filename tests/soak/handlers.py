"""The soak's handler: does what the job's payload says, and writes its own record of it.

Each start and each end is one JSON line appended to $PACELINE_SOAK_RUN_LOG (a file outside
the database): the audit compares it with the attempt history in the database. The payload
says what to do: `{"do": "ok" | "fail" | "fail_once" | "retry_later" | "timeout", "s": seconds}`;
an `append` job's payload is an array of those, and its last one counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from paceline.queue.handlers import RetryLater
from paceline.queue.jobs import Job


async def work(job: Job) -> dict[str, Any]:
    """Run the job as its payload says; log the start and how it ended."""
    order = _order(job.payload)
    _log(job, "start")
    outcome = "error"
    try:
        action, seconds = order.get("do", "ok"), float(order.get("s", 0))
        await asyncio.sleep(seconds)
        if action == "timeout":
            # Longer than PACELINE_JOB_TIMEOUT: the worker cancels it.
            await asyncio.sleep(3600)
        if action == "fail" or (action == "fail_once" and job.attempts == 1):
            raise RuntimeError(f"soak: {action} on attempt {job.attempts}")
        if action == "retry_later" and job.attempts == 1:
            outcome = "retry_later"
            raise RetryLater(0.4, "soak: upstream said 429")
        outcome = "ok"
        return {"done": job.id}
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        _log(job, "end", outcome=outcome)


def _order(payload: Any) -> dict[str, Any]:
    if isinstance(payload, list) and payload:
        payload = payload[-1]
    return payload if isinstance(payload, dict) else {}


def _log(job: Job, event: str, **fields: object) -> None:
    line = {
        "ev": event,
        "id": job.id,
        "attempt": job.attempts,
        "kind": job.kind,
        "object": job.object_id,
        "pid": os.getpid(),
        "t": time.time(),
        **fields,
    }
    # One short O_APPEND write per line: lines of several processes do not interleave.
    fd = os.open(os.environ["PACELINE_SOAK_RUN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)
