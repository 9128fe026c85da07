"""The cluster's shape, measured through paceline's data layer (not yet a `make bench` row):
enqueue and drain the same jobs on one server of the embedded build and on the local Citus
cluster (scripts/citus), same host, same run; then the statements each node ran
(pg_stat_statements) per drained job, to show where the per-job work lands.

    scripts/citus start && .venv/bin/python -m benchmarks.citus_shape [--jobs 4000]

The drain claims up to 50 due jobs per call and records their outcomes in one statement, as a
worker does, without the HTTP layer or handlers: the database's share of a job.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from paceline.db import jobs as store
from paceline.db import migrate
from paceline.db.embedded import EmbeddedPostgres
from paceline.db.queries import use_citus

CLUSTER = "postgresql://postgres@127.0.0.1:9700/postgres"
TABLES = "jobs, job_attempts, object_slots, object_starts"


async def _reset(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"TRUNCATE {TABLES}")
        await conn.execute(
            "INSERT INTO kind_limits (kind, window_seconds, per_window, max_running)"
            " VALUES ('default', 300, 1, 1) ON CONFLICT (kind) DO NOTHING"
        )
    finally:
        await conn.close()


async def _nodes(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT nodename, nodeport FROM pg_dist_node ORDER BY groupid")
    finally:
        await conn.close()
    return [f"postgresql://postgres@{r['nodename']}:{r['nodeport']}/postgres" for r in rows]


async def _statements(node: str, reset: bool) -> int:
    conn = await asyncpg.connect(node)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        if reset:
            await conn.execute("SELECT pg_stat_statements_reset()")
            return 0
        calls: int = await conn.fetchval(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements"
            " WHERE query !~* 'pg_stat_statements'"
        )
        return calls
    finally:
        await conn.close()


async def measure(dsn: str, jobs: int, citus: bool) -> dict[str, float]:
    """Enqueue `jobs` jobs of distinct objects (batches of 500), then drain them."""
    use_citus(citus)
    await _reset(dsn)
    nodes = await _nodes(dsn) if citus else [dsn]
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=8)
    assert pool is not None
    try:
        began = time.monotonic()
        for start in range(0, jobs, 500):
            ids = list(range(start, min(start + 500, jobs)))
            await store.enqueue_batch(
                pool, kinds=["default"] * len(ids), object_ids=ids, payloads=[None] * len(ids)
            )
        enqueued = time.monotonic() - began
        for node in nodes:
            await _statements(node, reset=True)
        worker = uuid.uuid4()
        done = 0
        began = time.monotonic()
        while done < jobs:
            if citus:
                await store.seconds_until_next_due(pool, kinds=["default"])
            claimed = await store.claim_due_jobs(
                pool, limit=50, lease=30, worker_id=worker, kinds=["default"]
            )
            if not claimed:
                continue
            await store.finish_jobs(
                pool,
                job_ids=[r["id"] for r in claimed],
                attempts=[r["attempts"] for r in claimed],
                statuses=["SUCCESS"] * len(claimed),
                durations=[0.0] * len(claimed),
                errors=[None] * len(claimed),
                results=[None] * len(claimed),
            )
            done += len(claimed)
        drained = time.monotonic() - began
        calls = [await _statements(node, reset=False) for node in nodes]
    finally:
        await pool.close()
    result = {"enqueue jobs/s": jobs / enqueued, "drain jobs/s": jobs / drained}
    for index, count in enumerate(calls):
        result[f"node {index} statements/job"] = count / jobs
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=4000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        server = EmbeddedPostgres(
            Path(directory), server_settings={"shared_preload_libraries": "pg_stat_statements"}
        )
        server.start()
        try:
            migrate.upgrade(server.dsn)
            plain = asyncio.run(measure(server.dsn, args.jobs, citus=False))
        finally:
            server.stop()
    migrate.upgrade(CLUSTER)
    cluster = asyncio.run(measure(CLUSTER, args.jobs, citus=True))
    print(f"{'':32} {'one server':>12} {'cluster':>12}")
    for name in sorted(set(plain) | set(cluster)):
        one = f"{plain[name]:.1f}" if name in plain else "-"
        many = f"{cluster[name]:.1f}" if name in cluster else "-"
        print(f"{name:32} {one:>12} {many:>12}")


if __name__ == "__main__":
    main()
