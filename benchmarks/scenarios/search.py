"""Scenario 11: payload search — `GET /jobs?payload={"customer": 42}` at 1M jobs.

Fills a fresh database with 1M finished jobs (a tenth of them FAILED) whose payloads are
`{"customer": <0..9999>, "order": <n>, "region": "eu" | "us" | "ap"}`, builds the GIN index of
migration 0010 again to time its build (what the migration costs a database of that size),
ANALYZEs, and explains (ANALYZE, BUFFERS) the statement GET /jobs runs for a payload filter,
`list_jobs_by_payload`, as the API runs it (a cached plan: custom, and the generic plan a
prepared statement may switch to): a selective filter (one customer: 100 jobs), the same with
`status=FAILED`, and a broad one (one region: a third of the table).

Also runs alone against any database at the current migration (it creates, fills and drops a
table's worth of jobs in a database of its own):
`.venv/bin/python -m benchmarks.scenarios.search postgresql://…/postgres`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time

import asyncpg

from benchmarks import plans
from benchmarks.context import Bench
from benchmarks.report import Row
from paceline.contract import INT64_MAX
from paceline.db import migrate

SCENARIO = "11 payload search"
JOBS = 1_000_000
CUSTOMERS = 10_000
PAGE = 51  # GET /jobs asks for one more than its page of 50
SEARCHES = {
    "one customer (100 of 1M jobs)": ('{"customer": 4242}', None),
    "one customer, status FAILED": ('{"customer": 4242}', "FAILED"),
    "one region (1/3 of 1M jobs)": ('{"region": "eu"}', None),
}


@dataclasses.dataclass(frozen=True)
class Measured:
    jobs: int
    fill_seconds: float
    index_build_seconds: float
    explained: dict[str, plans.Explained]


async def fill(conn: asyncpg.Connection, jobs: int) -> float:
    """`jobs` finished jobs with customer payloads; seconds the fill took."""
    began = time.monotonic()
    await conn.execute(
        """
        INSERT INTO jobs (kind, object_id, status, run_at, started_at, finished_at, attempts,
                          payload, error)
        SELECT 'default', g % 50000, CASE WHEN g % 10 = 0 THEN 'FAILED' ELSE 'SUCCESS' END,
               now() - make_interval(secs => $1 - g), now(), now(), 1,
               jsonb_build_object('customer', g % $2, 'order', g,
                                  'region', (ARRAY['eu', 'us', 'ap'])[g % 3 + 1]),
               CASE WHEN g % 10 = 0 THEN 'boom' END
        FROM generate_series(1, $1::int) AS g
        """,
        jobs,
        CUSTOMERS,
    )
    return time.monotonic() - began


async def measure(url: str, *, jobs: int = JOBS, timed_runs: int = 5) -> Measured:
    """Fill, rebuild the payload index (timed), analyze, explain each search."""
    conn = await asyncpg.connect(url, command_timeout=3600)
    try:
        fill_seconds = await fill(conn, jobs)
        await conn.execute("DROP INDEX ix_jobs_payload")
        began = time.monotonic()
        await conn.execute(
            "CREATE INDEX ix_jobs_payload ON jobs USING gin (payload jsonb_path_ops) "
            "WHERE payload IS NOT NULL"
        )
        build = time.monotonic() - began
        await conn.execute("VACUUM ANALYZE jobs")
        explained = {
            label: await plans.explain(
                conn,
                "list_jobs_by_payload",
                (payload, None, None, status, INT64_MAX, PAGE),
                timed_runs=timed_runs,
            )
            for label, (payload, status) in SEARCHES.items()
        }
        return Measured(jobs, fill_seconds, build, explained)
    finally:
        await conn.close()


def format_measured(found: Measured) -> str:
    """The plans and timings as one text block."""
    blocks = [
        f"{found.jobs:,} jobs filled in {found.fill_seconds:.1f} s; "
        f"CREATE INDEX ix_jobs_payload (GIN, jsonb_path_ops): {found.index_build_seconds:.1f} s"
    ]
    for label, item in found.explained.items():
        blocks.append(f"=== {label}\n{plans.format_plans([item])}")
    return "\n\n".join(blocks)


async def run(bench: Bench) -> None:
    """Scenario 11 in the suite: a fresh clone of the template, 1M jobs (100k with --quick)."""
    jobs = bench.config.search_jobs
    async with bench.cluster.database("search") as url:
        found = await measure(url, jobs=jobs, timed_runs=bench.config.runs)
    for label, item in found.explained.items():
        bench.report.add(
            Row(SCENARIO, f"GET /jobs?payload=…, {label}, {jobs:,} jobs", item.execution_ms, "ms")
        )
    bench.report.add(
        Row(SCENARIO, f"building ix_jobs_payload, {jobs:,} jobs", found.index_build_seconds, "s")
    )
    bench.report.section("payload search plans", format_measured(found))


async def _alone(server_url: str) -> None:
    """A scratch database on `server_url`'s server, migrated to head, measured, dropped."""
    name = "paceline_bench_search"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        parts = server_url.rsplit("/", 1)
        url = f"{parts[0]}/{name}"
        await asyncio.to_thread(migrate.upgrade, url)
        print(format_measured(await measure(url)))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(_alone(sys.argv[1]))
