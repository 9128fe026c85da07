"""Taking back the jobs of dead replicas: every replica with workers requeues (or fails, on
the last attempt) jobs whose lease expired.

All replicas run it; SKIP LOCKED lets them share the work without waiting on each other.
"""

from __future__ import annotations

import logging

import asyncpg

from paceline.db import jobs as store
from paceline.db import limits as limits_store
from paceline.queue.requeue import requeue
from paceline.queue.scheduling import replan_key
from paceline.queue.service import Backoff, Service

log = logging.getLogger(__name__)

REAP_BATCH = 100
# Parked jobs read per look for keys a cut-off resume left parked: bounds the look when a
# paused kind parks many (a stranded key behind them is found once those are resumed).
STRANDED_SCAN = 10_000


class Reaper(Service):
    """Requeues jobs whose lease expired, every `interval` seconds until stopped."""

    name = "paceline-reaper"
    failure = "reaping expired leases failed"

    def __init__(self, pool: asyncpg.Pool, *, max_attempts: int, interval: float) -> None:
        # Database outages are waited out a round at a time.
        super().__init__(logger=log, retry=Backoff(interval, interval))
        self._pool = pool
        self._max_attempts = max_attempts
        self._interval = interval

    async def step(self) -> float:
        """Reap until no expired lease is left; re-plan the keys a cut-off resume left parked."""
        while await self.reap_expired_leases() == REAP_BATCH:
            pass
        while await self.replan_stranded_keys() == REAP_BATCH:
            pass
        return self._interval

    async def replan_stranded_keys(self) -> int:
        """Re-plan, as their resume would have, the keys no longer paused whose jobs are still
        parked (a resume commits the end of the pause first, then re-plans its keys a few per
        transaction: cut off in between, it leaves them waiting for ever); how many keys."""
        keys = await limits_store.stranded_keys(self._pool, limit=REAP_BATCH, scan=STRANDED_SCAN)
        for kind, object_id in keys:
            async with self._pool.acquire() as conn, conn.transaction():
                await store.plan_per_call(conn)
                changes = await replan_key(conn, kind, object_id, from_now=True)
            log.warning(
                "%s object %d was resumed but its %d parked job(s) were not re-planned; "
                "re-planned now",
                kind,
                object_id,
                len(changes),
                extra={"kind": kind, "object_id": object_id},
            )
        return len(keys)

    async def reap_expired_leases(self) -> int:
        """Requeue (or fail, if it was the last attempt) jobs whose lease expired; how many."""
        async with self._pool.acquire() as conn, conn.transaction():
            await store.plan_per_call(conn)  # see paceline.db.plans
            expired = await store.expired_leases(conn, limit=REAP_BATCH)
            for row in expired:
                job_id, attempt = row["id"], row["attempts"]
                error = f"attempt {attempt} was lost: its replica stopped renewing the lease"
                # A job retried by hand counts its attempts since then (attempts_at_retry).
                if attempt - row["attempts_at_retry"] >= self._max_attempts:
                    await store.fail_lost_job(conn, job_id=job_id, attempt=attempt, error=error)
                    log.warning(
                        "job %d lost its last attempt %d; FAILED",
                        job_id,
                        attempt,
                        extra={
                            "job_id": job_id,
                            "kind": row["kind"],
                            "object_id": row["object_id"],
                            "attempt": attempt,
                        },
                    )
                    continue
                run_at = await requeue(
                    conn,
                    job_id,
                    attempt,
                    delay=0.0,
                    error=error,
                    outcome="LOST",
                )
                log.warning(
                    "job %d attempt %d was lost with its replica; requeued for %s",
                    job_id,
                    attempt,
                    run_at,
                    extra={
                        "job_id": job_id,
                        "kind": row["kind"],
                        "object_id": row["object_id"],
                        "attempt": attempt,
                    },
                )
            return len(expired)
