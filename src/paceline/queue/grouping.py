"""Group commit for POST /jobs: concurrent plain enqueues share one statement and one commit.

A request's job is written at once when a writer is free; while writers are busy, the jobs
arriving meanwhile wait and go out together as one `enqueue_batch` (up to 1000; see
batching.BatchWriter). That trades no latency at low load for far fewer round trips and WAL
flushes under load. Per-key slots stay exact: a batch takes each key's row lock like
single enqueues do, and repeats of a key inside a batch get consecutive slots in arrival
order.
"""

from __future__ import annotations

import asyncpg

from paceline.queue.batching import BatchWriter
from paceline.queue.jobs import Job, NewJob
from paceline.queue.scheduling import create_each

MAX_GROUP = 1000


class EnqueueGrouper(BatchWriter[NewJob, Job]):
    """`enqueue()` one job; `writers` statements may be in flight at once."""

    name = "paceline-grouper"

    def __init__(self, pool: asyncpg.Pool, *, writers: int = 4) -> None:
        super().__init__(max_batch=MAX_GROUP, writers=writers)
        self._pool = pool

    async def enqueue(self, new: NewJob) -> Job:
        """Create the job in its key's next free slot; raises what the statement raised."""
        return await self.submit(new)

    async def _write(self, items: list[NewJob]) -> list[Job | Exception]:
        # Jobs of keys one statement cannot plan (their limit, a pause, a scheduled job in the
        # way) are placed by the exact planner after it, each in its own transaction: each
        # request gets its own job, or its own error.
        return await create_each(self._pool, items)
