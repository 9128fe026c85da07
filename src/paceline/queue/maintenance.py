"""Housekeeping every replica with workers does: take back jobs of dead replicas, prune history.

All replicas run it; SKIP LOCKED lets them share the work without waiting on each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg

from paceline.db.plans import plan_per_call
from paceline.db.pool import is_unavailable
from paceline.db.queries import QUERIES
from paceline.queue.requeue import requeue
from paceline.queue.submit import IDEMPOTENCY_TTL

log = logging.getLogger(__name__)

REAP_BATCH = 100
PRUNE_BATCH = 500
PRUNE_EVERY = 60.0
# A dead replica's row stays this long on the replicas page, so an operator can see it died.
FORGET_DEAD_AFTER = 3600.0


class Janitor:
    """Reaps expired leases every `interval` seconds and prunes old jobs every minute."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        window: float,
        max_attempts: int,
        retention: float,
        interval: float,
    ) -> None:
        self._pool = pool
        self._window = window
        self._max_attempts = max_attempts
        self._retention = retention
        self._interval = interval
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Ask `run()` to return."""
        self._stopping.set()

    async def run(self) -> None:
        """Loop until stopped; database outages are waited out."""
        next_prune = time.monotonic()
        while not self._stopping.is_set():
            try:
                while await self.reap_expired_leases() == REAP_BATCH:
                    pass
                if time.monotonic() >= next_prune:
                    await self.prune()
                    next_prune = time.monotonic() + PRUNE_EVERY
            except Exception as exc:
                if not is_unavailable(exc):
                    log.exception("housekeeping failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)

    async def reap_expired_leases(self) -> int:
        """Requeue (or fail, if it was the last attempt) jobs whose lease expired; how many."""
        async with self._pool.acquire() as conn, conn.transaction():
            await plan_per_call(conn)  # see paceline.db.plans
            expired = await conn.fetch(QUERIES["expired_leases"], REAP_BATCH)
            for row in expired:
                job_id, attempt = row["id"], row["attempts"]
                error = f"attempt {attempt} was lost: its replica stopped renewing the lease"
                if attempt >= self._max_attempts:
                    await conn.execute(QUERIES["fail_lost_job"], job_id, attempt, error)
                    log.warning(
                        "job %d lost its last attempt %d; FAILED",
                        job_id,
                        attempt,
                        extra={"job_id": job_id, "object_id": row["object_id"], "attempt": attempt},
                    )
                    continue
                run_at = await requeue(
                    conn,
                    job_id,
                    attempt,
                    delay=0.0,
                    window=self._window,
                    error=error,
                    outcome="LOST",
                )
                log.warning(
                    "job %d attempt %d was lost with its replica; requeued for %s",
                    job_id,
                    attempt,
                    run_at,
                    extra={"job_id": job_id, "object_id": row["object_id"], "attempt": attempt},
                )
            return len(expired)

    async def prune(self) -> int:
        """Delete finished jobs past retention, in small batches; how many."""
        total = 0
        while not self._stopping.is_set():
            status = await self._pool.execute(
                QUERIES["prune_finished_jobs"], self._retention, PRUNE_BATCH
            )
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < PRUNE_BATCH:
                break
            await asyncio.sleep(0.05)  # let the hot paths in between batches
        await self._pool.execute(QUERIES["prune_passed_windows"], self._window)
        await self._pool.execute(
            QUERIES["prune_idempotency_keys"], IDEMPOTENCY_TTL, PRUNE_BATCH * 10
        )
        await self._pool.execute(QUERIES["forget_dead_workers"], FORGET_DEAD_AFTER)
        if total:
            log.info("pruned %d finished job(s) older than %gs", total, self._retention)
        return total
