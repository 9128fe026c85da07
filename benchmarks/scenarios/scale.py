"""Scenario 6: scale — POST /jobs and the drain again with pending future jobs and finished jobs
already in the table (1M and 5M with --scale, a tenth of that by default), as ratios to the same
load on an empty table, run in turn with it; and the plans the hot paths rely on, on that table."""

from __future__ import annotations

import time

import asyncpg

from benchmarks import plans
from benchmarks.context import (
    WINDOW,
    Bench,
    format_statements,
    reset_statements,
    statements_per_job,
)
from benchmarks.procs import Replica
from benchmarks.report import Goal, Row, median
from benchmarks.scenarios.common import (
    SCALE_FINISHED_BASE,
    SCALE_PENDING_BASE,
    drain,
    quiesce,
    tuned_unless_fixed,
)

SCENARIO = "6 scale"
GOAL = Goal(">=", 0.8, on="ratio")
CONNECTIONS = 64
PENDING_PER_OBJECT = 10
# History as the attempts table keeps it, when the schema has one (migration 0002 on).
ATTEMPT_COLUMNS = {"job_id", "attempt", "object_id", "started_at", "finished_at", "outcome"}


async def run(bench: Bench) -> None:
    """Fill, then POST and drain on the filled table and on an empty one in turn; plans."""
    pending, finished = bench.config.scale_pending, bench.config.scale_finished
    label = f"{pending:,} pending + {finished:,} finished"
    async with (
        bench.cluster.database("scale_empty") as empty_url,
        bench.cluster.database("scale") as url,
    ):
        began = time.monotonic()
        await fill(url, pending=pending, finished=finished)
        filled = time.monotonic() - began
        async with (
            bench.replicas(empty_url, 1, name="scale-empty") as empty,
            bench.replicas(url, 1, name="scale") as full,
        ):
            posts = await _posts(bench, empty, full, (empty_url, url))
            drains = await _drain_pairs(bench, ((empty_url, empty), (url, full)), "")
        # The drain goal is measured tuned (scenario 3), so its scale ratio is too.
        tuned = tuned_unless_fixed(bench)
        tuned_drains: tuple[float, float] | None = None
        if tuned:
            async with (
                bench.replicas(empty_url, 1, name="scale-empty-tuned", env=tuned) as empty,
                bench.replicas(url, 1, name="scale-tuned", env=tuned) as full,
            ):
                tuned_drains = await _drain_pairs(
                    bench, ((empty_url, empty), (url, full)), ", concurrency 256"
                )
        conn = await asyncpg.connect(url)
        try:
            job_id = await conn.fetchval("SELECT min(id) FROM jobs WHERE status = 'SUCCESS'")
            explained = await plans.hot_paths(conn, WINDOW, job_id=job_id or 1, timed_runs=5)
        finally:
            await conn.close()
    (empty_rps, empty_samples), (full_rps, full_samples) = posts
    bench.report.add(
        Row(
            SCENARIO,
            f"POST req/s, {CONNECTIONS} conn, 1 replica, {label}",
            full_rps,
            "req/s",
            ceiling=empty_rps,
            ceiling_label="empty table",
            goal=GOAL,
            samples=full_samples,
            note=f"empty table runs {', '.join(f'{v:.0f}' for v in empty_samples)} req/s, "
            f"taking turns with these; table filled in {filled:.0f} s",
        )
    )
    for variant, rates in (("", drains), (", concurrency 256", tuned_drains)):
        if rates is None:
            continue
        empty_rate, full_rate = rates
        bench.report.add(
            Row(
                SCENARIO,
                f"drain jobs/s, 1 replica{variant}, {label}",
                full_rate,
                "jobs/s",
                ceiling=empty_rate,
                ceiling_label="empty table",
                goal=GOAL,
                note=f"{bench.config.drain_jobs:,} due jobs per drain, medians of "
                f"{bench.config.runs} drains each taking turns with one on an empty table",
            )
        )
    bench.report.section(f"Plans of the hot paths with {label} jobs", plans.format_plans(explained))


async def _drain_pairs(
    bench: Bench,
    targets: tuple[tuple[str, list[Replica]], tuple[str, list[Replica]]],
    label: str,
) -> tuple[float, float]:
    """Drains on the empty and the filled table, taking turns; the median rate of each. The
    statements of each table's last drain go to the report."""
    rates: list[list[float]] = [[], []]
    for run in range(bench.config.runs):
        for index, (target_url, replicas) in enumerate(targets):
            last = run == bench.config.runs - 1
            if last:
                await reset_statements(target_url)
            result = await drain(bench, target_url, replicas)
            rates[index].append(result.rate)
            if last:
                table = ("empty table", "filled table")[index]
                bench.report.section(
                    f"Statements per drained job, scale, {table}{label} (pg_stat_statements)",
                    format_statements(await statements_per_job(target_url, result.finished)),
                )
    return median(rates[0]), median(rates[1])


async def _posts(
    bench: Bench, empty: list[Replica], full: list[Replica], urls: tuple[str, str]
) -> list[tuple[float, list[float]]]:
    """POST runs on the empty and the filled table, taking turns; (median, runs) of each."""
    for replicas in (empty, full):
        await bench.http_runs(replicas, CONNECTIONS, runs=0)
    samples: list[list[float]] = [[], []]
    for _ in range(bench.config.runs):
        for index, replicas in enumerate((empty, full)):
            await quiesce(*urls)
            (result,) = await bench.http_runs(replicas, CONNECTIONS, runs=1, warmup=False)
            samples[index].append(result.rps)
    return [(median(values), values) for values in samples]


async def fill(url: str, *, pending: int, finished: int) -> None:
    """Bulk-load the history and the deferred backlog, as if the service had run for a while.

    Secondary indexes are dropped and rebuilt around the load (much faster than maintaining
    them row by row), foreign-key triggers are off for this session only, and statistics are
    fresh afterwards, as autovacuum would have them on a table that grew slowly.
    """
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET maintenance_work_mem = '512MB'")
        await conn.execute("SET session_replication_role = replica")
        indexes = await _drop_secondary_indexes(conn, ("jobs", "job_attempts"))
        await conn.execute(
            """
            INSERT INTO jobs (object_id, status, created_at, run_at, started_at, finished_at,
                              duration, attempts)
            SELECT $2::bigint + g % 1000000, 'SUCCESS', t, t, t, t + interval '1 ms', 0.001, 1
            FROM generate_series(1, $1::int) AS g,
                 LATERAL (SELECT now() - interval '1 day' + g * interval '10 ms') AS x(t)
            """,
            finished,
            SCALE_FINISHED_BASE,
        )
        await _fill_attempts(conn)
        await conn.execute(
            """
            INSERT INTO jobs (object_id, run_at)
            SELECT $2::bigint + g % ($1::int / $3::int),
                   now() + interval '1 hour' + (g / ($1::int / $3::int)) * make_interval(secs => $4)
            FROM generate_series(0, $1::int - 1) AS g
            """,
            pending,
            SCALE_PENDING_BASE,
            PENDING_PER_OBJECT,
            WINDOW,
        )
        await conn.execute(
            """
            INSERT INTO object_slots (kind, object_id, next_slot)
            SELECT kind, object_id, max(run_at) + make_interval(secs => $2)
            FROM jobs WHERE object_id >= $1 AND status = 'PENDING' GROUP BY kind, object_id
            """,
            SCALE_PENDING_BASE,
            WINDOW,
        )
        for definition in indexes:
            await conn.execute(definition)
        await conn.execute("SET session_replication_role = DEFAULT")
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def _drop_secondary_indexes(conn: asyncpg.Connection, tables: tuple[str, ...]) -> list[str]:
    """Drop the indexes that back no constraint; their CREATE statements, to rebuild them."""
    rows = await conn.fetch(
        """
        SELECT i.indexname, i.indexdef FROM pg_indexes AS i
        WHERE i.schemaname = 'public' AND i.tablename = ANY($1::text[])
          AND NOT EXISTS (SELECT 1 FROM pg_constraint AS c WHERE c.conname = i.indexname)
        """,
        list(tables),
    )
    for row in rows:
        await conn.execute(f'DROP INDEX "{row["indexname"]}"')
    return [row["indexdef"] for row in rows]


async def _fill_attempts(conn: asyncpg.Connection) -> None:
    columns = {
        row["column_name"]
        for row in await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'job_attempts'"
        )
    }
    if not columns >= ATTEMPT_COLUMNS:
        return
    await conn.execute(
        """
        INSERT INTO job_attempts (job_id, attempt, object_id, started_at, finished_at, outcome)
        SELECT id, 1, object_id, started_at, finished_at, 'SUCCESS'
        FROM jobs WHERE status = 'SUCCESS'
        """
    )
