"""Running finished jobs again: a FAILED or CANCELLED job back to PENDING (issue 18).

The HTML pages and the JSON API (`POST /jobs/{id}/retry`, `POST /jobs/retry`) both call
`retry_job` and `retry_jobs`; their names and signatures are what the pages code against.

A retried job takes its key's next free slot under the limit in force now, as a new submit of
it would (`scheduling.place_again`): a plain job after the key's pending jobs, one with
`not_before` at the first free slot at or after it; a paused key's jobs wait for the resume
(`run_at` null). Every limit holds for retried jobs as for new ones: a bulk retry of one
key's 50 jobs takes 50 slots, N per window, never a burst. The job keeps its id, kind, object,
payload and its attempt history (`job_attempts`); `attempts` goes on counting, and
`attempts_at_retry` records where PACELINE_MAX_ATTEMPTS starts counting again, so the job
gets its whole budget of attempts afresh. Its start, end, duration, error and result are
cleared: it looks like a job that has not run yet (its history still shows what happened).

Locks: the keys' slot rows first (in key order), then the job rows, as every multi-step
change of slots takes them (db/slots.sql): a retry serializes with the key's enqueues, and
two retries of one job cannot both succeed (the second finds it PENDING).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from paceline.db import jobs as jobs_store
from paceline.db import rerun as store
from paceline.db.pool import Connection
from paceline.queue.jobs import Job, Status
from paceline.queue.scheduling import FOREVER, Pending, place_again
from paceline.queue.wakeup import CHANNEL

log = logging.getLogger(__name__)

# The statuses a job may be retried from.
RETRYABLE = frozenset({Status.FAILED, Status.CANCELLED})
# Jobs per transaction of a bulk retry: one statement locks them, one writes their slots
# (the ids go in arrays, searched linearly: MAX_IDS_PER_STATEMENT), and the slot rows of
# their keys stay locked only this long.
JOBS_PER_TRANSACTION = jobs_store.MAX_IDS_PER_STATEMENT


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
    """Put a FAILED or CANCELLED job back to PENDING at its key's next free slot; the job.

    Raises JobNotFound if there is no such job, JobNotRetryable if it is pending, running or
    succeeded (nothing is changed then)."""
    async with pool.acquire() as conn, conn.transaction():
        await jobs_store.plan_per_call(conn)  # every statement here finds rows by key or id
        current = await jobs_store.get_job(conn, job_id=job_id)
        if current is None:
            raise JobNotFound(job_id)
        retried = await _retry_these(conn, [(job_id, current["kind"], current["object_id"])])
        if not retried:
            # It changed meanwhile, or was never retryable: say what it is now.
            now = await jobs_store.get_job(conn, job_id=job_id)
            if now is None:
                raise JobNotFound(job_id)
            raise JobNotRetryable(job_id, Status(now["status"]))
    (job,) = retried
    log.info(
        "job %d (%s object %d) retried by hand; run_at %s",
        job.id,
        job.kind,
        job.object_id,
        job.run_at,
        extra={"job_id": job.id, "kind": job.kind, "object_id": job.object_id},
    )
    return job


async def retry_jobs(
    pool: asyncpg.Pool,
    *,
    status: Status,
    kind: str | None = None,
    object_id: int | None = None,
    payload: dict[str, Any] | None = None,
    dry_run: bool = False,
) -> RetrySummary:
    """Retry every job of `status` (FAILED or CANCELLED) that matches the filters (`payload`:
    a JSON object the job's payload contains), in slot order, oldest first; with `dry_run`,
    plan them exactly as the retry would, in a transaction that is rolled back.

    The matches are those of the moment the request starts; they are retried
    JOBS_PER_TRANSACTION at a time, each batch in one transaction (a statement to lock them,
    one to write their slots, the planner's few reads per key), so no key's submits wait for
    the whole retry. A job that changed meanwhile (retried by someone else) is left alone."""
    if status not in RETRYABLE:
        raise ValueError(f"only FAILED or CANCELLED jobs can be retried, not {status.value}")
    payload_json = None if payload is None else msgspec.json.encode(payload).decode()
    async with pool.acquire() as conn:
        if not dry_run:
            summary = await _retry_matching(conn, status, kind, object_id, payload_json)
            log.info(
                "%d %s job(s) retried by hand (kind %s, object %s, payload %s): slots %s to %s",
                summary.retried,
                status.value,
                kind,
                object_id,
                payload_json,
                summary.first_run_at,
                summary.last_run_at,
            )
            return summary
        try:
            async with conn.transaction():
                summary = await _retry_matching(conn, status, kind, object_id, payload_json)
                raise _DryRun(summary)
        except _DryRun as done:
            return done.summary
    raise AssertionError("unreachable")  # pragma: no cover


class _DryRun(Exception):
    """Rolls a dry run's transaction back, carrying what it found."""

    def __init__(self, summary: RetrySummary) -> None:
        super().__init__("dry run")
        self.summary = summary


async def _retry_matching(
    conn: Connection,
    status: Status,
    kind: str | None,
    object_id: int | None,
    payload_json: str | None,
) -> RetrySummary:
    matches = await store.retry_candidates(
        conn, status=status.value, kind=kind, object_id=object_id, payload=payload_json
    )
    candidates = [(row["id"], row["kind"], row["object_id"]) for row in matches]
    retried = 0
    slots: list[datetime] = []
    for start in range(0, len(candidates), JOBS_PER_TRANSACTION):
        batch = candidates[start : start + JOBS_PER_TRANSACTION]
        async with conn.transaction():
            await jobs_store.plan_per_call(conn)
            jobs = await _retry_these(conn, batch, only=status)
        retried += len(jobs)
        slots += [job.run_at for job in jobs if job.run_at is not None]
    return RetrySummary(retried, min(slots, default=None), max(slots, default=None))


async def _retry_these(
    conn: Connection,
    candidates: Sequence[tuple[int, str, int]],
    *,
    only: Status | None = None,
) -> list[Job]:
    """Retry those of the jobs (id, kind, object_id; in slot order) that are still retryable
    (and of status `only`, if given); the jobs as they are now, in that order. In the
    caller's transaction."""
    await store.lock_slot_rows(conn, keys=[(kind, obj) for _, kind, obj in candidates])
    rows = {
        row["id"]: row
        for row in await store.lock_jobs_to_retry(
            conn, job_ids=[job_id for job_id, _, _ in candidates]
        )
    }
    by_key: dict[tuple[str, int], list[Pending]] = {}
    for job_id, _, _ in candidates:
        row = rows.get(job_id)
        if row is None or Status(row["status"]) not in RETRYABLE:
            continue
        if only is not None and row["status"] != only.value:
            continue
        by_key.setdefault((row["kind"], row["object_id"]), []).append(
            Pending(job_id, row["created_at"], None, row["not_before"])
        )
    if not by_key:
        return []
    job_ids: list[int] = []
    run_at: list[datetime] = []
    for (kind, object_id), jobs in sorted(by_key.items()):
        placed = await place_again(conn, kind, object_id, jobs)
        job_ids += [job.id for job in jobs]
        run_at += [FOREVER if slot is None else slot for slot in placed]
    records = await store.retry_jobs(conn, job_ids=job_ids, run_at=run_at)
    due = [moment for moment in run_at if moment != FOREVER]
    if due:
        # At commit: wake the workers of every replica for the first new slot (I5).
        await jobs_store.notify_due_at(conn, channel=CHANNEL, at=min(due))
    order = {job_id: position for position, (job_id, _, _) in enumerate(candidates)}
    return sorted((Job.from_record(record) for record in records), key=lambda j: order[j.id])
