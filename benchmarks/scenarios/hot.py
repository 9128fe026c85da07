"""Scenario 4: hot objects — 10k jobs over 10 objects through POST /jobs. All but the 10 heads
wait windows ahead; the claim (and the next-due query every idle worker runs) must cost the
same with that deferred backlog as with an empty queue. Also: what 10 hot rows cost POST."""

from __future__ import annotations

import asyncio

import asyncpg

from benchmarks import plans
from benchmarks.context import WINDOW, Bench
from benchmarks.load import wrk
from benchmarks.report import Goal, Row
from benchmarks.scenarios.common import HOT_BASE, count_jobs
from paceline.db.queries import QUERIES

SCENARIO = "4 hot objects"
OBJECTS = 10
CONNECTIONS = 16
TIMED_RUNS = 25
# "Does not grow": a cost proportional to the backlog would be ~10x with 10x the backlog; the
# timings are tens of microseconds, so noise alone moves them by a third. At most 2x.
GOAL = Goal("<=", 2.0, on="ratio")
QUERIES_TIMED = ("claim_due_jobs", "seconds_until_next_due")


async def run(bench: Bench) -> None:
    """Time the queries with a tenth of the backlog and with all of it (and empty, for scale)."""
    target = bench.config.hot_jobs
    async with (
        bench.cluster.database("hot") as url,
        bench.replicas(url, 1, name="hot") as replicas,
    ):
        conn = await asyncpg.connect(url)
        try:
            empty = await _costs(conn)
            port = replicas[0].port
            await _load(url, port, max(target // 10, OBJECTS))
            await asyncio.sleep(1.0)  # the 10 heads are due at once: let them run
            tenth = await _costs(conn)
            jobs, rate = await _load(url, port, target)
            full = await _costs(conn)
            started = await conn.fetchval("SELECT count(*) FROM jobs WHERE started_at IS NOT NULL")
            claim = await _claim_plan(conn)
        finally:
            await conn.close()
    bench.report.add(
        Row(
            SCENARIO,
            f"POST req/s, {OBJECTS} hot objects, {CONNECTIONS} conn, 1 replica",
            rate,
            "req/s",
            ceiling=bench.figures.get(f"post.{CONNECTIONS}.1"),
            ceiling_label="random objects",
            note=f"{jobs:,} jobs; {started} started (the heads; the rest wait windows ahead)",
        )
    )
    for name in QUERIES_TIMED:
        _add_cost_row(bench, name, jobs, (empty.get(name), tenth.get(name), full.get(name)))
    bench.report.section(f"Plan: claim with {jobs:,} deferred jobs over {OBJECTS} objects", claim)


def _add_cost_row(
    bench: Bench, name: str, jobs: int, costs: tuple[float | str | None, ...]
) -> None:
    """One query's cost: with the whole backlog, against a tenth of it (and empty, in the note)."""
    empty, tenth, full = costs
    if not (isinstance(empty, float) and isinstance(tenth, float) and isinstance(full, float)):
        reason = next((cost for cost in costs if isinstance(cost, str)), "not measured")
        bench.report.add(Row(SCENARIO, f"{name} ms", None, "ms", note=reason))
        return
    bench.report.add(
        Row(
            SCENARIO,
            f"{name} ms, {jobs:,} deferred over {OBJECTS} objects",
            full,
            "ms",
            ceiling=tenth,
            ceiling_label="a tenth of the backlog",
            goal=GOAL if name == "claim_due_jobs" else None,
            note=f"median execution time of {TIMED_RUNS} EXPLAIN ANALYZE runs, rolled back; "
            f"empty queue {empty:.3f} ms",
        )
    )


async def _load(url: str, port: int, total: int) -> tuple[int, float]:
    """POST jobs over OBJECTS objects until the table holds `total`; (jobs, req/s of this load
    on the database clock)."""
    first = await count_jobs(url)

    async def enough() -> bool:
        return await count_jobs(url) >= total

    env = {"BENCH_OBJECTS": str(OBJECTS), "BENCH_OBJECT_BASE": str(HOT_BASE)}
    await wrk([port], connections=CONNECTIONS, seconds=600, env=env, until=enough)
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, "
            "EXTRACT(EPOCH FROM max(created_at) - min(created_at))::float8 AS span "
            "FROM (SELECT created_at FROM jobs ORDER BY id OFFSET $1) AS j",
            first,
        )
        total_jobs: int = await conn.fetchval("SELECT count(*) FROM jobs")
    finally:
        await conn.close()
    assert row is not None
    return total_jobs, row["n"] / row["span"] if row["span"] else 0.0


async def _costs(conn: asyncpg.Connection) -> dict[str, float | str]:
    """Median execution ms of each timed query, or why it cannot be timed. Statistics are made
    fresh first, as autovacuum would have them: a plan for a table the planner thinks is empty
    is not what a running service gets."""
    await conn.execute("ANALYZE")
    costs: dict[str, float | str] = {}
    candidates = plans.sample_args(WINDOW)
    for name in QUERIES_TIMED:
        if name not in QUERIES:
            costs[name] = f"n/a: no query named {name}"
            continue
        args = await plans.fitting_args(conn, QUERIES[name], candidates[name])
        if isinstance(args, str):
            costs[name] = args
            continue
        explained = await plans.explain(conn, name, args, timed_runs=TIMED_RUNS)
        costs[name] = explained.execution_ms
    return costs


async def _claim_plan(conn: asyncpg.Connection) -> str:
    name = "claim_due_jobs"
    if name not in QUERIES:
        return "n/a"
    args = await plans.fitting_args(conn, QUERIES[name], plans.sample_args(WINDOW)[name])
    if isinstance(args, str):
        return args
    return plans.format_plans([await plans.explain(conn, name, args)])
