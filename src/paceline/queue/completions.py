"""Recording finished attempts in batches: one statement and one commit for all that ended
while the previous write was in flight. With no backlog a result is written at once; under
load the batch grows by itself, so the commit (a WAL flush) is shared, not paid per job."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import asyncpg

from paceline.db.pool import is_transient
from paceline.db.queries import QUERIES
from paceline.queue.jobs import Job, Status, fetch_committed

log = logging.getLogger(__name__)

MAX_BATCH = 500


@dataclasses.dataclass
class _Outcome:
    job: Job
    status: Status
    duration: float
    error: str | None
    recorded: asyncio.Future[bool]
    give_up_at: float  # monotonic; past it the job's lease has surely expired


class CompletionWriter:
    """Writes SUCCESS/FAILED outcomes for one worker; `finish()` waits until it is written."""

    def __init__(self, pool: asyncpg.Pool, *, lease: float, row_lock: asyncio.Lock) -> None:
        self._pool = pool
        self._lease = lease
        # Shared with the lease keeper: two statements of one worker locking the same job rows
        # in different orders could deadlock each other.
        self._row_lock = row_lock
        self._queue: list[_Outcome] = []
        self._wakeup = asyncio.Event()
        self._stopping = False

    async def finish(self, job: Job, status: Status, duration: float, error: str | None) -> bool:
        """Record the outcome; False if the attempt was taken back (nothing written)."""
        outcome = _Outcome(
            job,
            status,
            duration,
            error,
            asyncio.get_running_loop().create_future(),
            time.monotonic() + self._lease,
        )
        self._queue.append(outcome)
        self._wakeup.set()
        return await outcome.recorded

    def stop(self) -> None:
        """Return from `run()` once everything queued is written."""
        self._stopping = True
        self._wakeup.set()

    async def run(self) -> None:
        """Write batches until stopped and empty."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._write(batch)
            if self._stopping and not self._queue:
                return

    async def _write(self, batch: list[_Outcome]) -> None:
        backoff = 0.05
        while True:
            try:
                async with self._row_lock:
                    records = await fetch_committed(
                        self._pool,
                        QUERIES["finish_jobs"],
                        [o.job.id for o in batch],
                        [o.job.attempts for o in batch],
                        [o.status.value for o in batch],
                        [o.duration for o in batch],
                        [o.error for o in batch],
                    )
                recorded = {record["id"] for record in records}
                for outcome in batch:
                    if not outcome.recorded.done():
                        outcome.recorded.set_result(outcome.job.id in recorded)
                return
            except Exception as exc:
                give_up = not is_transient(exc) or time.monotonic() > min(
                    o.give_up_at for o in batch
                )
                if give_up:
                    for outcome in batch:
                        if not outcome.recorded.done():
                            outcome.recorded.set_exception(exc)
                    return
                log.warning("cannot record %d finished job(s) yet (%s)", len(batch), exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
