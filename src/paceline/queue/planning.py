"""Moving an object's pending slots: compaction after a cancel, re-planning for a new window,
pushing them back after a late start.

Both keep I1 (slots a window apart, and after the object's last start) and I4 (acceptance
order); a job never gets a slot before it was created. Each runs in one transaction that locks
the object's slot row first, so enqueues of the object wait and see the result.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import asyncpg

from paceline.db import jobs as store
from paceline.db import slots
from paceline.db.pool import Connection
from paceline.queue.jobs import Job


@dataclasses.dataclass(frozen=True)
class SlotChange:
    """One pending job's slot, before and after a re-plan."""

    job_id: int
    object_id: int
    before: datetime
    after: datetime


async def cancel_and_compact(conn: Connection, job_id: int, window: float) -> Job | None:
    """Cancel a pending job and move the object's later jobs up into the freed slot.

    Returns the cancelled job, or None if it was not pending (or does not exist). Call inside
    a transaction.
    """
    key = await slots.key_of_job(conn, job_id=job_id)
    if key is None:
        return None
    kind, object_id = key
    await slots.lock_object_slots(conn, kind=kind, object_id=object_id)
    record = await slots.cancel_pending_job(conn, job_id=job_id)
    if record is None:
        return None
    cancelled = Job.from_record(record)
    later = await slots.pending_jobs_of_object(
        conn, kind=kind, object_id=object_id, after_job_id=job_id
    )
    last_start = await slots.last_start_of_object(conn, kind=kind, object_id=object_id)
    step = timedelta(seconds=window)
    floor = last_start + step if last_start is not None else None
    slot = cancelled.run_at
    changes: list[tuple[int, datetime]] = []
    for row in later:
        # Up into the gap, but never before the job existed or the object's window allows,
        # and never later than it was already promised.
        candidate = max(slot, row["created_at"], *(f for f in (floor,) if f is not None))
        candidate = min(candidate, row["run_at"])
        changes.append((row["id"], candidate))
        slot = candidate + step
    if changes:
        await slots.move_slots(
            conn, job_ids=[job for job, _ in changes], run_at=[at for _, at in changes]
        )
    await slots.set_next_slot(conn, kind=kind, object_id=object_id, next_slot=slot)
    return cancelled


async def replan(
    conn: Connection, *, old_window: float, new_window: float, apply: bool
) -> list[SlotChange]:
    """Re-space every object's pending jobs to `new_window`; what changes (or would, dry).

    Call inside a transaction; with `apply=False` nothing is written.
    """
    await slots.lock_replan(conn)
    step = timedelta(seconds=new_window)
    changes: list[SlotChange] = []
    for kind, object_id in await slots.objects_with_pending_jobs(conn):
        if apply:
            await slots.lock_object_slots(conn, kind=kind, object_id=object_id)
        pending = await slots.pending_jobs_of_object(conn, kind=kind, object_id=object_id)
        last_start = await slots.last_start_of_object(conn, kind=kind, object_id=object_id)
        previous = last_start
        ids: list[int] = []
        new_slots: list[datetime] = []
        for row in pending:
            candidate = row["created_at"]
            if previous is not None:
                candidate = max(candidate, previous + step)
            ids.append(row["id"])
            new_slots.append(candidate)
            if candidate != row["run_at"]:
                changes.append(SlotChange(row["id"], object_id, row["run_at"], candidate))
            previous = candidate
        if apply and ids:
            await slots.move_slots(conn, job_ids=ids, run_at=new_slots)
            await slots.set_next_slot(
                conn, kind=kind, object_id=object_id, next_slot=new_slots[-1] + step
            )
    if apply:
        await slots.respace_idle_objects(conn, old_window=old_window, new_window=new_window)
    return changes


async def shift_later_slots(pool: asyncpg.Pool, late: list[Job], window: float) -> None:
    """Shift the later slots of each object whose job started late (after a worker outage or
    backlog) to a window apart from that start, so each waiting job's run_at stays an honest
    prediction. The claim enforces I1 either way; this only keeps the promises true."""
    # One read for the whole claim: only objects with jobs waiting behind need a move (a drain
    # of overdue jobs over distinct objects needs none).
    waiting = await slots.objects_with_pending(
        pool, keys=[(job.kind, job.object_id) for job in late]
    )
    for job in late:
        if (job.kind, job.object_id) not in waiting:
            continue
        assert job.started_at is not None
        async with pool.acquire() as conn, conn.transaction():
            await store.plan_per_call(conn)  # see paceline.db.plans
            await slots.lock_object_slots(conn, kind=job.kind, object_id=job.object_id)
            await store.shift_later_slots(
                conn,
                kind=job.kind,
                object_id=job.object_id,
                job_id=job.id,
                after=job.started_at,
                window=window,
            )


WINDOW_STATE = "rate_window"


async def adopt_window(
    conn: Connection, window: float, *, dry_run: bool = False
) -> tuple[float | None, list[SlotChange]]:
    """Make `window` the one pending slots are planned with; (the previous one, the changes).

    The first start records it; a start with another PACELINE_RATE_WINDOW re-spaces every
    pending job (and the objects' next free slots) to the new one. Call inside a transaction.
    """
    # Replicas starting together with the new window: the second one, once it has the lock,
    # reads the window the first one stored and has nothing left to do.
    await slots.lock_replan(conn)
    stored = await slots.read_state(conn, name=WINDOW_STATE)
    previous = float(stored) if stored is not None else None
    changes: list[SlotChange] = []
    if previous is not None and previous != window:
        changes = await replan(conn, old_window=previous, new_window=window, apply=not dry_run)
    if not dry_run and previous != window:
        await slots.write_state(conn, name=WINDOW_STATE, value=repr(window))
    return previous, changes
