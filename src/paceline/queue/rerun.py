"""Running finished jobs again: a FAILED or CANCELLED job back to PENDING (issue 18).

The HTML pages and the JSON API both call these two functions; their names and signatures are
what the pages code against.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import asyncpg

from paceline.queue.jobs import Job, Status

# The statuses a job may be retried from.
RETRYABLE = frozenset({Status.FAILED, Status.CANCELLED})


class JobNotFound(LookupError):
    """No job has this id."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"there is no job {job_id}")
        self.job_id = job_id


class JobNotRetryable(Exception):
    """The job is not FAILED or CANCELLED (it is pending, running or succeeded)."""

    def __init__(self, job_id: int, status: Status) -> None:
        super().__init__(
            f"job {job_id} is {status.value}; only a FAILED or CANCELLED job can be retried"
        )
        self.job_id = job_id
        self.status = status


@dataclasses.dataclass(frozen=True, slots=True)
class RetrySummary:
    """What a bulk retry did (or, as a dry run, would do): how many jobs, and the first and
    last of their new slots (None if none was retried, or all wait for a paused key)."""

    retried: int
    first_run_at: datetime | None
    last_run_at: datetime | None


async def retry_job(pool: asyncpg.Pool, job_id: int) -> Job:
    """Put a FAILED or CANCELLED job back to PENDING at its key's next free slot; the job."""
    raise NotImplementedError


async def retry_jobs(
    pool: asyncpg.Pool,
    *,
    status: Status,
    kind: str | None = None,
    object_id: int | None = None,
    payload: dict[str, Any] | None = None,
    dry_run: bool = False,
) -> RetrySummary:
    """Retry every job of `status` (FAILED or CANCELLED) that matches the filters, in slot
    order; with `dry_run`, count and plan them without writing anything."""
    raise NotImplementedError
