"""Jobs as the API and the workers see them, and the queries that create and read them."""

from __future__ import annotations

import dataclasses
import enum
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from paceline.db import jobs as store
from paceline.db.pool import Executor

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


class Status(enum.StrEnum):
    """A job's state: PENDING → PROCESSING → SUCCESS | FAILED, or CANCELLED while pending."""

    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """One row of `jobs`."""

    id: int
    object_id: int
    status: Status
    created_at: datetime
    run_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration: float | None
    attempts: int
    error: str | None

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> Job:
        """Build from a row that has every column of `jobs` (as the named queries return)."""
        return cls(
            id=record["id"],
            object_id=record["object_id"],
            status=Status(record["status"]),
            created_at=record["created_at"],
            run_at=record["run_at"],
            started_at=record["started_at"],
            finished_at=record["finished_at"],
            duration=record["duration"],
            attempts=record["attempts"],
            error=record["error"],
        )

    def to_json(self) -> dict[str, Any]:
        """The API's view: the original fields plus the wait.

        `timestamp` keeps the original table's type, whole UNIX seconds (floor) as an integer,
        which typed clients read into an int64; `created_at` is the precise instant.
        """
        return {
            "id": self.id,
            "object_id": self.object_id,
            "status": self.status.value,
            "timestamp": unix_seconds(self.created_at),
            "created_at": isoformat(self.created_at),
            "duration": self.duration,
            "run_at": isoformat(self.run_at),
            "started_at": isoformat(self.started_at),
            "finished_at": isoformat(self.finished_at),
            "attempts": self.attempts,
            "error": self.error,
        }


def unix_seconds(moment: datetime) -> int:
    """Whole UNIX seconds, floored, computed on integers (a float timestamp can round a
    moment in the last microsecond of a second up into the next one)."""
    return (moment - _EPOCH) // _SECOND


def isoformat(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z`, microseconds kept (the window is exact to them)."""
    if moment is None:
        return None
    if moment.tzinfo is not UTC:  # asyncpg's timestamptz values already are
        moment = moment.astimezone(UTC)
    # orjson writes the same text as datetime.isoformat() in a fraction of the time, and this
    # runs three times per job in every answer (docs/performance-notes.md).
    return orjson.dumps(moment, option=orjson.OPT_UTC_Z)[1:-1].decode()


async def enqueue(db: Executor, object_id: int, window: float) -> Job:
    """Create a job in its object's next free slot (I1, I6); one statement, one round trip."""
    return Job.from_record(await store.enqueue(db, object_id=object_id, window=window))


async def enqueue_batch(db: Executor, object_ids: list[int], window: float) -> list[Job]:
    """Create one job per id, in request order, in one statement; repeats a window apart."""
    records = await store.enqueue_batch(db, object_ids=object_ids, window=window)
    return [Job.from_record(record) for record in records]


async def get_job(db: Executor, job_id: int) -> Job | None:
    """The job with this id, or None."""
    record = await store.get_job(db, job_id=job_id)
    return None if record is None else Job.from_record(record)


async def get_jobs(db: Executor, job_ids: list[int]) -> dict[int, Job]:
    """Those of the jobs that exist, by id."""
    records = await store.get_jobs(db, job_ids=job_ids)
    return {record["id"]: Job.from_record(record) for record in records}


async def list_jobs(
    db: asyncpg.Pool,
    *,
    object_id: int | None = None,
    status: Status | None = None,
    before: int = INT64_MAX,
    limit: int = 50,
) -> list[Job]:
    """Jobs newest first, optionally of one object and/or status, with ids below `before`."""
    records = await store.list_jobs(
        db,
        object_id=object_id,
        status=None if status is None else status.value,
        before=before,
        limit=limit,
    )
    return [Job.from_record(record) for record in records]
