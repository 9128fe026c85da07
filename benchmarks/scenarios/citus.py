"""Scenario 13: a Citus cluster (issue 19) beside one server of the same build, same host,
same run. One replica (tuned unless --concurrency is given) drains the same number of due
jobs and takes the same POST load on each; then every node's statements per drained job, to
show where the per-job work lands, and the plans of the hot statements (one task each).

It needs the local cluster of `scripts/citus` (`CITUS_SRC=<tree> scripts/citus build` once,
then `scripts/citus start`), or BENCH_CITUS_URL at another coordinator; without one the row
says how to get it and the run goes on. On one 2-core host the three nodes share the cores
with the replica and the load, so the cluster cannot be faster than one server here: what the
figures must show is that the coordinator does no per-job work (its statements per job stay a
fraction of one, independent of the workers' count), and what a job costs on the cluster.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from typing import Any

import asyncpg

from benchmarks.cluster import migrate
from benchmarks.context import Bench, StatementCounts, per_job, reset_statements
from benchmarks.report import Row, median
from benchmarks.scenarios.common import (
    DrainResult,
    drain,
    measure_post,
    reset_tables,
    tuned_unless_fixed,
)
from paceline.db.queries import QUERIES, use_citus
from paceline.observability.overview import read_overview

SCENARIO = "13 citus"
CLUSTER_URL = os.environ.get("BENCH_CITUS_URL", "postgresql://postgres@127.0.0.1:9700/postgres")
HOW = (
    "no Citus cluster at BENCH_CITUS_URL; build and start the local one: "
    "`CITUS_SRC=<citus source tree> scripts/citus build && scripts/citus start`"
)
# Fewer than the drain scenario's: the cluster drains slower, and the statements per job are
# the same at any count.
DRAIN_JOBS = 20_000
POST_CONNECTIONS = 16
# The hot statements whose plan on the coordinator must be one task (a single-shard statement),
# with arguments for one shard; `{bucket}` and `{buckets}` are filled in for that shard.
WORKER = uuid.UUID(int=0)


async def run(bench: Bench) -> None:
    """One server, then the cluster: drain and POST, then the cluster's statements and plans."""
    if not await _reachable(CLUSTER_URL):
        bench.report.add(Row(SCENARIO, "drain and POST on a Citus cluster", None, "", note=HOW))
        return
    env = tuned_unless_fixed(bench)
    jobs = min(DRAIN_JOBS, bench.config.drain_jobs)
    async with bench.cluster.database("citus_plain") as url:
        plain_drains, plain_post, plain_overview = await _measure(
            bench, url, env, jobs, name="citus-plain"
        )
    await migrate(CLUSTER_URL)
    nodes = await _nodes(CLUSTER_URL)
    await reset_tables(CLUSTER_URL)
    cluster_drains, cluster_post, cluster_overview = await _measure(
        bench, CLUSTER_URL, env, jobs, name="citus-cluster", nodes=nodes
    )
    label = ", concurrency 256" if env else ""
    plain_rate = median([d.result.rate for d in plain_drains])
    cluster_rate = median([d.result.rate for d in cluster_drains])
    bench.report.add(
        Row(
            SCENARIO,
            f"drain jobs/s, {jobs:,} due jobs, 1 replica{label}, coordinator + 2 workers",
            cluster_rate,
            "jobs/s",
            ceiling=plain_rate,
            ceiling_label="one server, same build",
            samples=[d.result.rate for d in cluster_drains],
            note=f"one 2-core host for all three nodes; CPU: {cluster_drains[0].result.cpu}",
        )
    )
    bench.report.add(
        Row(
            SCENARIO,
            f"POST req/s, {POST_CONNECTIONS} connections, 1 replica{label}, "
            "coordinator + 2 workers",
            cluster_post,
            "req/s",
            ceiling=plain_post,
            ceiling_label="one server, same build",
        )
    )
    bench.report.add(
        Row(
            SCENARIO,
            f"the page's overview read, ms, over {jobs:,} finished jobs, coordinator + 2 workers",
            cluster_overview,
            "ms",
            ceiling=plain_overview,
            ceiling_label="one server, same build",
            note="scatter-gather: the totals, lists and limits visit every shard (8)",
        )
    )
    bench.report.section(
        "Citus: statements per drained job, by node (pg_stat_statements)",
        _format_nodes(nodes, cluster_drains[0].counts, cluster_drains[0].result.finished),
    )
    bench.report.section("Citus: plans of the hot statements", await _plans(CLUSTER_URL))


# How often the page's overview is read over a drained history, for its median.
OVERVIEW_READS = 20


@dataclasses.dataclass
class _Drain:
    result: DrainResult
    # On the cluster, the first drain's: every node's statement counters over it.
    counts: list[StatementCounts]


async def _measure(
    bench: Bench,
    url: str,
    env: dict[str, str],
    jobs: int,
    *,
    name: str,
    nodes: list[str] | None = None,
) -> tuple[list[_Drain], float, float]:
    """`runs` drains of `jobs` due jobs, the overview read over the last, then POST at
    POST_CONNECTIONS: (the drains, req/s, the overview's ms).
    With `nodes` (a cluster's), the first drain also reads every node's statement counters."""
    drains: list[_Drain] = []
    async with bench.replicas(url, 1, name=name, env=env) as replicas:
        for run in range(bench.config.runs):
            await reset_tables(url)
            counted = nodes is not None and run == 0
            if counted:
                for node in nodes or []:
                    await reset_statements(node)
            result = await drain(bench, url, replicas, jobs=jobs, citus=nodes is not None)
            counts = [await _counts(node) for node in nodes or []] if counted else []
            drains.append(_Drain(result, counts))
        overview = await _overview_ms(url, citus=nodes is not None)
        await reset_tables(url)
        posted = await measure_post(bench, url, replicas, POST_CONNECTIONS)
    return drains, posted.rps, overview


async def _overview_ms(url: str, *, citus: bool) -> float:
    """The median time of one read of the page's overview (what the page and /metrics read
    each refresh: the cluster's totals and lists visit every shard) over the last drain's
    finished jobs, analyzed, in ms."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    assert pool is not None
    use_citus(citus)
    try:
        await pool.execute("ANALYZE jobs")
        times = []
        for _ in range(OVERVIEW_READS):
            started = time.perf_counter()
            await read_overview(pool)
            times.append((time.perf_counter() - started) * 1000)
        return median(times)
    finally:
        use_citus(False)
        await pool.close()


async def _reachable(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    try:
        citus: bool = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'citus')"
        )
        return citus
    finally:
        await conn.close()


async def _nodes(url: str) -> list[str]:
    """The coordinator's URL, then each worker's (same user and database)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT nodename, nodeport FROM pg_dist_node WHERE isactive ORDER BY groupid"
        )
    finally:
        await conn.close()
    return [f"postgresql://postgres@{r['nodename']}:{r['nodeport']}/postgres" for r in rows]


# The benchmark's own statements (preloading due jobs, which Citus copies into the shards,
# polling for the drain's end, emptying the tables), left out of the counts.
HARNESS = (
    "COPY ",
    "INSERT INTO jobs (kind, object_id, run_at",
    "INSERT INTO object_slots AS s (kind, object_id, next_slot",
    "SELECT NOT EXISTS",
    "SELECT count(",
    "SELECT max(object_id)",
    "SELECT quote_ident",
    "DELETE FROM jobs WHERE status = 'PENDING'",
    "VACUUM",
    "TRUNCATE",
    "ANALYZE",
)


async def _counts(node: str) -> StatementCounts:
    """Every statement paceline ran on this node since its counters were reset (any
    database; the benchmark's own left out)."""
    conn = await asyncpg.connect(node)
    try:
        rows = await conn.fetch(
            "SELECT query, sum(calls)::int8 AS calls, sum(total_exec_time) AS ms "
            "FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%' "
            "GROUP BY query"
        )
    finally:
        await conn.close()
    return {
        row["query"]: (row["calls"], row["ms"])
        for row in rows
        if not row["query"].lstrip().startswith(HARNESS)
    }


def _format_nodes(nodes: list[str], after: list[StatementCounts], jobs: int) -> str:
    """Per node: all statements per job, then the ones that took the most time."""
    lines = []
    for index, (node, counts) in enumerate(zip(nodes, after, strict=True)):
        role = "coordinator" if index == 0 else f"worker {index}"
        calls = sum(c for c, _ in counts.values())
        ms = sum(t for _, t in counts.values())
        lines.append(
            f"{role} ({node.split('@')[1].split('/')[0]}): {calls / max(jobs, 1):.3f} "
            f"statements per job, {ms / max(jobs, 1):.4f} ms per job"
        )
        for found in per_job(counts, jobs, top=6):
            lines.append(
                f"    {found['statement'][:44]:<44} {found['calls_per_job']:>8.3f}/job "
                f"{found['exec_ms_per_call']:>8.3f} ms/call"
            )
    return "\n".join(lines)


async def _plans(url: str) -> str:
    """The coordinator's plan of each hot statement for one shard: its task count."""
    use_citus(True)
    conn = await asyncpg.connect(url)
    try:
        shard = await conn.fetchrow(QUERIES["citus_shard_buckets"])
        assert shard is not None
        buckets: list[int] = list(shard["buckets"])
        bucket = buckets[0]
        statements: dict[str, tuple[Any, ...]] = {
            "enqueue (one key)": ("enqueue", ("default", 1, None, None)),
            "claim (one shard)": (
                "claim_due_jobs",
                (50, 30.0, WORKER, ["default"], bucket, buckets),
            ),
            "next due (one shard)": ("seconds_until_next_due", (["default"], bucket, buckets)),
            "finish (one shard)": (
                "finish_jobs",
                ([1], [1], ["SUCCESS"], [0.0], [None], [None], buckets),
            ),
            "renew leases (one shard)": ("renew_leases", ([1], [1], 30.0, WORKER, buckets)),
        }
        lines = []
        for label, (name, args) in statements.items():
            try:
                plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {QUERIES[name]}", *args))
            except asyncpg.PostgresError as exc:
                lines.append(f"{label:<28} could not explain: {exc}")
                continue
            tasks = next(
                (line.split(":")[1].strip() for line in plan.splitlines() if "Task Count" in line),
                "? (no Citus plan)",
            )
            lines.append(f"{label:<28} tasks: {tasks}")
        return "\n".join(lines)
    finally:
        await conn.close()
        use_citus(False)
