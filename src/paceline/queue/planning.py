"""Moving a key's pending slots when something happened to the key: a cancel (the jobs behind
move up), a late start (they move back). The slots themselves come from the exact planner
(`queue/scheduling.py`); each step runs in one transaction that locks the key's slot row
first, so enqueues of the key wait and then see the result.
"""

from __future__ import annotations

import asyncpg

from paceline.db import jobs as store
from paceline.db import limits, slots
from paceline.db.pool import Connection
from paceline.queue.jobs import Job
from paceline.queue.scheduling import replan_key, replan_keys


async def cancel_and_compact(conn: Connection, job_id: int) -> Job | None:
    """Cancel a pending job and move the key's later jobs up into the freed slot: each takes
    the earliest slot its limit allows, in the same order, never before it was created (or
    its not_before).

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
    await replan_key(conn, kind, object_id)
    return Job.from_record(record)


async def shift_later_slots(pool: asyncpg.Pool, late: list[Job]) -> None:
    """Re-plan the keys whose job started late (after a worker outage, behind a backlog, or
    waiting for a running job of its key), pushing their waiting jobs back so each `run_at`
    stays an honest prediction (I6). The claim enforces the limit either way; this only keeps
    the promises true."""
    # One read for the whole claim: only keys with jobs waiting behind need a move (a drain
    # of overdue jobs over distinct objects needs none).
    waiting = await slots.objects_with_pending(
        pool, keys=[(job.kind, job.object_id) for job in late]
    )
    if not waiting:
        return
    if limits.keys_share_a_transaction():
        # Every key in one transaction, a constant number of statements: behind a backlog,
        # where most claims start late, one transaction of nine round trips per key cost the
        # replica a tenth of its time during a batch load (py-spy).
        async with pool.acquire() as conn, conn.transaction():
            await store.plan_per_call(conn)  # see paceline.db.plans
            await replan_keys(conn, sorted(waiting), never_earlier=True)
        return
    for kind, object_id in sorted(waiting):
        async with pool.acquire() as conn, conn.transaction():
            await store.plan_per_call(conn)
            await replan_key(conn, kind, object_id, never_earlier=True)
