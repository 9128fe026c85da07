"""Putting a job back to PENDING: retries, releases at shutdown, and attempts lost with a replica.

One transaction each: lock the job (only if this attempt still holds it), lock the object's
slot row (so no enqueue slips a job in between), give the job its new slot, and move the
object's later pending jobs back behind it. Jobs are always locked before object_slots rows,
here and in the reaper, so the two cannot deadlock.
"""

from __future__ import annotations

from datetime import datetime

from paceline.db import jobs as store
from paceline.db import slots
from paceline.db.pool import Connection


async def requeue(
    conn: Connection,
    job_id: int,
    attempt: int,
    *,
    delay: float,
    window: float,
    error: str | None,
    outcome: str,
) -> datetime | None:
    """Requeue attempt `attempt` of job `job_id`; its new `run_at`, or None if it was taken back.

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
        conn,
        job_id=job_id,
        attempt=attempt,
        delay=delay,
        window=window,
        error=error,
        outcome=outcome,
    )
    if run_at is not None:
        await store.shift_later_slots(
            conn, kind=kind, object_id=object_id, job_id=job_id, after=run_at, window=window
        )
    return run_at
