"""Recording finished attempts in batches: one statement and one commit for all that ended
while the previous write was in flight (see batching.BatchWriter)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import asyncpg

from paceline.db import jobs as store
from paceline.db.jobs import MAX_IDS_PER_STATEMENT
from paceline.queue.batching import BatchWriter
from paceline.queue.jobs import Job, Status
from paceline.queue.service import retry_until

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Outcome:
    job: Job
    status: Status
    duration: float
    error: str | None
    result: str | None  # JSON text
    give_up_at: float  # monotonic; past it the job's lease has surely expired


class CompletionWriter(BatchWriter[_Outcome, bool]):
    """Writes SUCCESS/FAILED outcomes for one worker; `finish()` waits until it is written."""

    name = "paceline-completions"

    def __init__(self, pool: asyncpg.Pool, *, lease: float, row_lock: asyncio.Lock) -> None:
        super().__init__(max_batch=MAX_IDS_PER_STATEMENT)
        self._pool = pool
        self._lease = lease
        # Shared with the lease keeper: two statements of one worker locking the same job rows
        # in different orders could deadlock each other.
        self._row_lock = row_lock

    async def finish(
        self,
        job: Job,
        status: Status,
        duration: float,
        error: str | None,
        result: str | None = None,
    ) -> bool:
        """Record the outcome (and the result, JSON text); False if the attempt was taken back
        (nothing written)."""
        give_up_at = time.monotonic() + self._lease
        return await self.submit(_Outcome(job, status, duration, error, result, give_up_at))

    async def _write(self, items: list[_Outcome]) -> list[bool]:
        async def write() -> list[bool]:
            async with self._row_lock:
                recorded = await store.finish_jobs(
                    self._pool,
                    job_ids=[o.job.id for o in items],
                    attempts=[o.job.attempts for o in items],
                    statuses=[o.status.value for o in items],
                    durations=[o.duration for o in items],
                    errors=[o.error for o in items],
                    results=[o.result for o in items],
                    buckets=[o.job.bucket for o in items],
                )
            return [outcome.job.id in recorded for outcome in items]

        def give_up_at() -> float:
            return min(o.give_up_at for o in items)

        def waiting(exc: Exception) -> None:
            log.warning("cannot record %d finished job(s) yet (%s)", len(items), exc)

        # Transient (an outage, a deadlock): again, until some job's lease has surely run out;
        # then the outcomes are the reaper's, and the submitters hear why.
        return await retry_until(give_up_at, write, waiting)
