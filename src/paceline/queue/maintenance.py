"""Housekeeping every replica with workers does: prune finished jobs and what outlived them
(passed windows, idempotency keys, dead replicas, expired page sessions).

All replicas run it; the batches are small, so they share the work without long locks.
Taking back the jobs of dead replicas is the reaper's (reaper.Reaper).
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from paceline.db import jobs as store
from paceline.db import sessions, slots
from paceline.queue.service import Backoff, Service
from paceline.queue.submit import IDEMPOTENCY_TTL

log = logging.getLogger(__name__)

PRUNE_BATCH = 500
PRUNE_EVERY = 60.0
# A dead replica's row stays this long on the replicas page, so an operator can see it died.
FORGET_DEAD_AFTER = 3600.0


class Janitor(Service):
    """Prunes old jobs every minute until stopped; a failed round is tried again after
    `interval` seconds."""

    name = "paceline-janitor"
    failure = "housekeeping failed"

    def __init__(self, pool: asyncpg.Pool, *, retention: float, interval: float) -> None:
        super().__init__(logger=log, retry=Backoff(interval, interval))
        self._pool = pool
        self._retention = retention

    async def step(self) -> float:
        """One round of housekeeping."""
        await self.prune()
        return PRUNE_EVERY

    async def prune(self) -> int:
        """Delete finished jobs past retention, in small batches; how many."""
        total = 0
        while not self.stopping:
            deleted = await store.prune_finished_jobs(
                self._pool, retention=self._retention, batch=PRUNE_BATCH
            )
            total += deleted
            if deleted < PRUNE_BATCH:
                break
            await asyncio.sleep(0.05)  # let the hot paths in between batches
        async with self._pool.acquire() as conn, conn.transaction():
            await store.plan_per_call(conn)  # see paceline.db.plans
            await store.prune_passed_windows(conn)
        await slots.prune_idempotency_keys(self._pool, ttl=IDEMPOTENCY_TTL, batch=PRUNE_BATCH * 10)
        await store.forget_dead_workers(self._pool, silent_for=FORGET_DEAD_AFTER)
        # Page sign-ins past their lifetime (they are refused already; this frees the rows).
        while not self.stopping:
            ended = await sessions.prune_expired_sessions(self._pool, batch=PRUNE_BATCH)
            if ended < PRUNE_BATCH:
                break
        if total:
            log.info("pruned %d finished job(s) older than %gs", total, self._retention)
        return total
