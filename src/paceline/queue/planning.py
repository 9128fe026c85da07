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

from paceline.db.pool import Connection
from paceline.db.queries import QUERIES
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
    object_id = await conn.fetchval(QUERIES["object_of_job"], job_id)
    if object_id is None:
        return None
    await conn.execute(QUERIES["lock_object_slots"], object_id)
    record = await conn.fetchrow(QUERIES["cancel_pending_job"], job_id)
    if record is None:
        return None
    cancelled = Job.from_record(record)
    later = await conn.fetch(QUERIES["pending_jobs_of_object"], object_id, job_id)
    last_start = await conn.fetchval(QUERIES["last_start_of_object"], object_id)
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
        await conn.execute(
            QUERIES["move_slots"], [job for job, _ in changes], [at for _, at in changes]
        )
    await conn.execute(QUERIES["set_next_slot"], object_id, slot)
    return cancelled


async def replan(
    conn: Connection, *, old_window: float, new_window: float, apply: bool
) -> list[SlotChange]:
    """Re-space every object's pending jobs to `new_window`; what changes (or would, dry).

    Call inside a transaction; with `apply=False` nothing is written.
    """
    await conn.execute(QUERIES["lock_replan"])
    step = timedelta(seconds=new_window)
    changes: list[SlotChange] = []
    for object_row in await conn.fetch(QUERIES["objects_with_pending_jobs"]):
        object_id = object_row["object_id"]
        if apply:
            await conn.execute(QUERIES["lock_object_slots"], object_id)
        pending = await conn.fetch(QUERIES["pending_jobs_of_object"], object_id, 0)
        last_start = await conn.fetchval(QUERIES["last_start_of_object"], object_id)
        previous = last_start
        ids: list[int] = []
        slots: list[datetime] = []
        for row in pending:
            candidate = row["created_at"]
            if previous is not None:
                candidate = max(candidate, previous + step)
            ids.append(row["id"])
            slots.append(candidate)
            if candidate != row["run_at"]:
                changes.append(SlotChange(row["id"], object_id, row["run_at"], candidate))
            previous = candidate
        if apply and ids:
            await conn.execute(QUERIES["move_slots"], ids, slots)
            await conn.execute(QUERIES["set_next_slot"], object_id, slots[-1] + step)
    if apply:
        await conn.execute(QUERIES["respace_idle_objects"], old_window, new_window)
    return changes


async def shift_later_slots(pool: asyncpg.Pool, late: list[Job], window: float) -> None:
    """Shift the later slots of each object whose job started late (after a worker outage or
    backlog) to a window apart from that start, so each waiting job's run_at stays an honest
    prediction. The claim enforces I1 either way; this only keeps the promises true."""
    # One read for the whole claim: only objects with jobs waiting behind need a move (a drain
    # of overdue jobs over distinct objects needs none).
    waiting = {
        record["object_id"]
        for record in await pool.fetch(
            QUERIES["objects_with_pending"], [job.object_id for job in late]
        )
    }
    for job in late:
        if job.object_id not in waiting:
            continue
        assert job.started_at is not None
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(QUERIES["lock_object_slots"], job.object_id)
            await conn.execute(
                QUERIES["shift_later_slots"], job.object_id, job.id, job.started_at, window
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
    await conn.execute(QUERIES["lock_replan"])
    stored = await conn.fetchval(QUERIES["read_state"], WINDOW_STATE)
    previous = float(stored) if stored is not None else None
    changes: list[SlotChange] = []
    if previous is not None and previous != window:
        changes = await replan(conn, old_window=previous, new_window=window, apply=not dry_run)
    if not dry_run and previous != window:
        await conn.execute(QUERIES["write_state"], WINDOW_STATE, repr(window))
    return previous, changes
