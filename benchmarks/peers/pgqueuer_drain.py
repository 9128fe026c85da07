"""pgqueuer's drain, as its own benchmark tool runs it (tools/benchmark.py --strategy drain):
`jobs` no-op jobs enqueued, then `managers` PgQueuer instances, each on its own asyncpg
connection, fetching `batch` jobs per dequeue, in drain mode, on uvloop. Prints one JSON line.

Run by the pgqueuer virtualenv's Python: `python pgqueuer_drain.py DSN JOBS MANAGERS BATCH`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import asyncpg
import uvloop
from pgqueuer import AsyncpgDriver, PgQueuer, Queries
from pgqueuer.models import Job
from pgqueuer.types import QueueExecutionMode

ENQUEUE_CHUNK = 10_000


async def main(dsn: str, jobs: int, managers: int, batch: int) -> None:
    setup = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(setup))
    if not await setup.fetchval("SELECT to_regclass('pgqueuer') IS NOT NULL"):
        await queries.install()
    await queries.clear_queue()
    for start in range(0, jobs, ENQUEUE_CHUNK):
        size = min(ENQUEUE_CHUNK, jobs - start)
        await queries.enqueue(["fetch"] * size, [None] * size, [0] * size)
    await setup.execute("VACUUM ANALYZE pgqueuer")

    done = 0
    instances: list[PgQueuer] = []
    for _ in range(managers):
        pgq = PgQueuer(AsyncpgDriver(await asyncpg.connect(dsn)))

        @pgq.entrypoint("fetch")
        async def fetch(job: Job) -> None:
            nonlocal done
            done += 1

        instances.append(pgq)

    started = time.perf_counter()
    await asyncio.gather(
        *(pgq.run(batch_size=batch, mode=QueueExecutionMode.drain) for pgq in instances)
    )
    seconds = time.perf_counter() - started
    left = await setup.fetchval("SELECT count(*) FROM pgqueuer")
    await setup.close()
    print(json.dumps({"jobs": done, "left": left, "seconds": seconds}))


if __name__ == "__main__":
    dsn, jobs, managers, batch = sys.argv[1], *map(int, sys.argv[2:5])
    uvloop.run(main(dsn, jobs, managers, batch))
