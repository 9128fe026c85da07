"""Putting a job back to PENDING: retries, releases at shutdown, and attempts lost with a replica.

One transaction each: lock the job (only if this attempt still holds it), lock the key's
slot row (so no enqueue slips a job in between), give the job its new slot under the key's
limit, and move the key's later pending jobs back behind it (`scheduling.replan_key`). Jobs
are always locked before object_slots rows, here and in the reaper, so the two cannot deadlock.
"""

from __future__ import annotations

from datetime import datetime

from paceline.db import jobs as store
from paceline.db import slots
from paceline.db.pool import Connection
from paceline.queue.scheduling import FOREVER, replan_key, slot_of
from paceline.queue.wakeup import CHANNEL


async def requeue(
    conn: Connection,
    job_id: int,
    attempt: int,
    *,
    delay: float,
    error: str | None,
    outcome: str,
) -> datetime | None:
    """Requeue attempt `attempt` of job `job_id`; its new `run_at` (`FOREVER` if its key is
    paused), or None if it was taken back.

    Call inside a transaction. Its statements, and the rest of the transaction's, are planned
    per call out of index paths only (`paceline.db.plans`): requeues are rare, and a plan cached
    on small tables would scan `jobs` whole.
    """
    await store.plan_per_call(conn)
    key = await store.lock_running_job(conn, job_id=job_id, attempt=attempt)
    if key is None:
        return None
    kind, object_id = key
    await slots.lock_object_slots(conn, kind=kind, object_id=object_id)
    run_at = await store.requeue_job(
        conn, job_id=job_id, attempt=attempt, delay=delay, error=error, outcome=outcome
    )
    if run_at is None:
        return None
    # The job keeps its place at the front of its key; the planner moves it to where the
    # key's limit allows and the jobs behind it back.
    changes = await replan_key(conn, kind, object_id, first=job_id, never_earlier=True)
    slot = slot_of(changes, job_id, run_at)
    # A NOTIFY (sent at commit) with the seconds until the new slot: a job released or
    # reaped here is usually run by another replica, whose worker may be asleep until its
    # idle poll (I5). Requeues are rare; a NOTIFY each costs nothing that matters.
    if slot is None:  # its key is paused: it waits for the resume
        return FOREVER
    await store.notify_due_at(conn, channel=CHANNEL, at=slot)
    return slot
