"""Leases on running jobs: renewed while the handler runs, given up when they cannot be.

A claim gives the worker a lease on each job (PACELINE_LEASE). The keeper renews all of them,
and beats the replica's heart, every lease / 3. A job whose renewal comes back empty was taken
back (its lease expired, another replica's reaper requeued it): its handler is stopped and
nothing is written for that attempt. When the database cannot be reached, a job whose lease
has run out by the monotonic clock is stopped too, since it may be running elsewhere by now.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence

import asyncpg

from paceline.db import jobs as store
from paceline.db.jobs import MAX_IDS_PER_STATEMENT
from paceline.queue.jobs import log_extra
from paceline.queue.running import JobState, RunningJob, RunningJobs
from paceline.queue.service import Backoff, Service

log = logging.getLogger(__name__)


class LeaseKeeper(Service):
    """Renews the leases of the worker's running jobs every lease / 3 until stopped."""

    name = "paceline-leases"
    failure = "renewing leases failed"

    def __init__(
        self,
        pool: asyncpg.Pool,
        running: RunningJobs,
        *,
        worker_id: uuid.UUID,
        concurrency: int,
        kinds: Sequence[str],
        lease: float,
        row_lock: asyncio.Lock,
    ) -> None:
        interval = lease / 3
        # A failed round is tried again at the next interval, like any other.
        super().__init__(logger=log, retry=Backoff(interval, interval))
        self._pool = pool
        self._running = running
        self._worker_id = worker_id
        self._concurrency = concurrency
        self._kinds = list(kinds)
        self._lease = lease
        self._interval = interval
        # Shared with the completion writer: two statements of one worker locking the same
        # job rows in different orders could deadlock each other.
        self._row_lock = row_lock

    async def step(self) -> float:
        """Renew and beat."""
        await self._renew()
        await store.heartbeat(
            self._pool,
            worker_id=self._worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            concurrency=self._concurrency,
            running=len(self._running),
            kinds=self._kinds,
        )
        return self._interval

    def failed(self, exc: Exception) -> None:
        """No renewal this round: stop what may be running elsewhere by now."""
        self._abandon_expired()

    async def _renew(self) -> None:
        held = [entry for entry in self._running if entry.state is not JobState.LOST]
        for start in range(0, len(held), MAX_IDS_PER_STATEMENT):
            await self._renew_some(held[start : start + MAX_IDS_PER_STATEMENT])

    async def _renew_some(self, held: list[RunningJob]) -> None:
        sent = time.monotonic()
        # The lock is taken per statement, so outcomes are written in between.
        async with self._row_lock:
            renewed = await store.renew_leases(
                self._pool,
                job_ids=[entry.job.id for entry in held],
                attempts=[entry.job.attempts for entry in held],
                lease=self._lease,
                worker_id=self._worker_id,
                buckets=[entry.job.bucket for entry in held],
            )
        for entry in held:
            if entry.job.id in renewed:
                entry.lease_deadline = sent + self._lease
            elif not entry.task.done() and entry.state.leased:
                self._abandon(entry, "it was taken back")

    def _abandon_expired(self) -> None:
        now = time.monotonic()
        for entry in self._running:
            if now > entry.lease_deadline and entry.state.leased:
                self._abandon(entry, "its lease expired while the database was unreachable")

    def _abandon(self, entry: RunningJob, why: str) -> None:
        # The job may already run elsewhere as a new attempt: stop ours and write nothing.
        log.warning(
            "job %d attempt %d: stopping the handler, %s",
            entry.job.id,
            entry.job.attempts,
            why,
            extra=log_extra(entry.job),
        )
        self._running.abandon(entry)
