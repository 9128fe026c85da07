"""Jobs as the API and the workers see them, and the queries that create and read them."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import orjson

from paceline.contract import DEFAULT_KIND
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
class NewJob:
    """A job to create: its key (kind, object_id), its payload as compact JSON text, and the
    client's earliest start."""

    object_id: int
    kind: str = DEFAULT_KIND
    payload_json: str | None = None
    not_before: datetime | None = None


class Job(msgspec.Struct, frozen=True):
    """One row of `jobs`. A handler receives this; `payload` is what the client sent.

    A frozen msgspec Struct, not a frozen dataclass: one is made for every job a claim starts
    and every job an answer shows, and a Struct is made in 0.1 µs where the dataclass's
    __init__ (one object.__setattr__ per field) took 1.25 µs (timeit), a tenth of a replica's
    time under 1000-job batches."""

    id: int
    object_id: int
    status: Status
    created_at: datetime
    # The slot: the earliest start; None while its key is paused (it waits for the resume).
    run_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration: float | None
    attempts: int
    error: str | None
    kind: str = DEFAULT_KIND
    # JSON text as PostgreSQL returns it: the API embeds it as it is, without decoding it.
    payload_json: str | None = None
    result_json: str | None = None
    # The client's earliest start (POST /jobs "not_before"), if it chose one.
    not_before: datetime | None = None
    # `attempts` when the job was last retried by hand (0: never). `attempts` counts every
    # attempt of its life; PACELINE_MAX_ATTEMPTS allows that many since the retry.
    attempts_at_retry: int = 0
    # On a Citus cluster, the job's shard key (paceline_bucket(kind, object_id)) as the claim
    # returns it: the worker's statements about the job (its outcome, its lease) then name it and
    # reach the one shard that holds the job. None on one server, and where no claim said it.
    bucket: int | None = None

    @property
    def attempts_since_retry(self) -> int:
        """The attempts PACELINE_MAX_ATTEMPTS counts: those since the last retry by hand."""
        return self.attempts - self.attempts_at_retry

    @property
    def payload(self) -> Any:
        """The payload as Python values (None if the job has none)."""
        # msgspec, not orjson: an integer past 64 bits stays exact (orjson makes it a float).
        return None if self.payload_json is None else msgspec.json.decode(self.payload_json)

    @property
    def result(self) -> Any:
        """What the handler returned, as Python values (None until it succeeded)."""
        return None if self.result_json is None else msgspec.json.decode(self.result_json)

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> Job:
        """Build from a row that has every column of `jobs` (as the named queries return)."""
        return cls(
            id=record["id"],
            object_id=record["object_id"],
            status=Status(record["status"]),
            created_at=record["created_at"],
            run_at=finite(record["run_at"]),
            started_at=record["started_at"],
            finished_at=record["finished_at"],
            duration=record["duration"],
            attempts=record["attempts"],
            error=record["error"],
            kind=record["kind"],
            payload_json=record["payload"],
            result_json=record["result"],
            not_before=record["not_before"],
            attempts_at_retry=record["attempts_at_retry"],
            bucket=record.get("bucket"),
        )

    @classmethod
    def created(cls, new: NewJob, record: asyncpg.Record) -> Job:
        """The job an enqueue statement just made of `new`, from the little its row says:
        id, created_at, run_at and the stored payload (a new row's other columns are their
        defaults). Positional, with 6 lookups: 0.63 of from_record's time (timeit)."""
        return cls(
            record["id"],
            new.object_id,
            Status.PENDING,
            record["created_at"],
            finite(record["run_at"]),
            None,  # started_at
            None,  # finished_at
            None,  # duration
            0,  # attempts
            None,  # error
            new.kind,
            record["payload"],
            None,  # result_json
            new.not_before,
            0,  # attempts_at_retry
            record.get("bucket"),
        )

    def to_json(self) -> dict[str, Any]:
        """The API's view: the original fields plus the wait.

        `timestamp` keeps the original table's type, whole UNIX seconds (floor) as an integer,
        which typed clients read into an int64; `created_at` is the precise instant.
        """
        return {
            "id": self.id,
            "kind": self.kind,
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
            "payload": _embedded(self.payload_json),
            "result": _embedded(self.result_json),
            "not_before": isoformat(self.not_before),
            "attempts_at_retry": self.attempts_at_retry,
        }


def finite(moment: datetime) -> datetime | None:
    """A slot as the database holds it, or None for 'infinity' (a paused key's job waits for
    the resume). asyncpg reads PostgreSQL's infinities as naive datetime.max / .min."""
    return None if moment.tzinfo is None else moment


def _embedded(text: str | None) -> orjson.Fragment | None:
    # The database's JSON text goes into the answer as it is: no decoding and re-encoding of
    # payloads of up to 64 KiB per job listed.
    return None if text is None else orjson.Fragment(text)


def log_extra(job: Job) -> dict[str, Any]:
    """The fields every log line about a job carries."""
    return {"job_id": job.id, "kind": job.kind, "object_id": job.object_id, "attempt": job.attempts}


def unix_seconds(moment: datetime) -> int:
    """Whole UNIX seconds, floored, computed on integers (a float timestamp can round a
    moment in the last microsecond of a second up into the next one)."""
    return (moment - _EPOCH) // _SECOND


# The last instant isoformat wrote, and its text. A batch's answer is 1000 jobs created at
# one now(), most of them with run_at that same instant (new keys): their created_at and
# run_at are then written once, not 2000 times. One tuple, replaced whole, so a reader on
# another thread never sees an instant with another's text.
_last_written: tuple[datetime, str] = (_EPOCH, "1970-01-01T00:00:00Z")


def isoformat(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z`, microseconds kept (the window is exact to them)."""
    global _last_written  # noqa: PLW0603 - a one-entry cache, see above
    if moment is None:
        return None
    last = _last_written
    if moment == last[0]:  # the same instant, whatever its time zone: the same UTC text
        return last[1]
    # orjson writes the same text as datetime.isoformat() in a fraction of the time, and this
    # runs three times per job in every answer (docs/performance-notes.md).
    text = orjson.dumps(moment.astimezone(UTC), option=orjson.OPT_UTC_Z)[1:-1].decode()
    _last_written = (moment, text)
    return text


async def enqueue(db: Executor, new: NewJob, *, absorbed: int | None = None) -> Job | None:
    """Create a job in its key's next free slot (I1, I6), or at its `not_before` when that
    leaves the key's next free slot to the plain jobs, in one statement and one round trip;
    None if the key needs the exact planner (`paceline.queue.scheduling.place`)."""
    record = await store.enqueue(
        db,
        kind=new.kind,
        object_id=new.object_id,
        payload=new.payload_json,
        absorbed=absorbed,
        not_before=new.not_before,
    )
    return None if record is None else Job.from_record(record)


async def enqueue_batch(
    db: Executor, new: list[NewJob], *, independent: bool = False
) -> dict[int, Job]:
    """Create the jobs in one statement, repeats of a key a window apart, for the keys one
    statement may plan; {position in `new`: job}. The others need the exact planner.
    `independent`: separate requests, not all or none (see `paceline.db.jobs.enqueue_batch`)."""
    records = await store.enqueue_batch(
        db,
        kinds=[job.kind for job in new],
        object_ids=[job.object_id for job in new],
        payloads=[job.payload_json for job in new],
        independent=independent,
    )
    # The rows come in batch order, only those of the keys the statement planned; every job of
    # such a key is among them (all of them, most often: then there is nothing to pick).
    positions: Sequence[int] = range(len(new))
    if len(records) < len(new):
        planned = {(record["kind"], record["object_id"]) for record in records}
        positions = [n for n, job in enumerate(new) if (job.kind, job.object_id) in planned]
    return {
        position: Job.created(new[position], record)
        for position, record in zip(positions, records, strict=True)
    }


async def get_job(db: Executor, job_id: int) -> Job | None:
    """The job with this id, or None."""
    record = await store.get_job(db, job_id=job_id)
    return None if record is None else Job.from_record(record)


async def get_jobs(db: Executor, job_ids: list[int]) -> dict[int, Job]:
    """Those of the jobs that exist, by id."""
    records = await store.get_jobs(db, job_ids=job_ids)
    return {record["id"]: Job.from_record(record) for record in records}


# Where a page of `list_jobs` ended, and its text (the API's `next_cursor`) both ways.
PageEnd = store.PageEnd
parse_page_cursor = store.parse_page_cursor


def page_cursor(job: Job) -> str:
    """The `next_cursor` of a page of `list_jobs` whose last job is `job`."""
    return store.page_cursor(job.id, job.created_at)


async def list_jobs(
    db: asyncpg.Pool,
    *,
    kind: str | None = None,
    object_id: int | None = None,
    status: Status | None = None,
    payload: dict[str, Any] | None = None,
    after: PageEnd | None = None,
    limit: int = 50,
) -> list[Job]:
    """Jobs newest first, optionally of one kind, object and/or status, and whose payload
    contains `payload` (a JSON object: `{"customer": 42}` matches `{"customer": 42, "n": 1}`),
    after the end of a previous page."""
    records = await store.list_jobs(
        db,
        kind=kind,
        object_id=object_id,
        status=None if status is None else status.value,
        payload=None if payload is None else msgspec.json.encode(payload).decode(),
        after=after,
        limit=limit,
    )
    return [Job.from_record(record) for record in records]
