"""Scenario 3: drain — due jobs over distinct objects, noop handler, 1 and 2 replicas, against
pgbench claiming 50 (and 1) per statement, and against pgqueuer's and graphile-worker's tuned
drains in the same run."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Awaitable, Callable

import asyncpg

from benchmarks import profiling
from benchmarks.context import (
    WINDOW,
    Bench,
    format_statements,
    reset_statements,
    statements_per_job,
)
from benchmarks.load import PGBENCH_SCRIPTS
from benchmarks.peers import baseline, graphile
from benchmarks.report import Goal, Row, median
from benchmarks.scenarios.common import (
    DRAIN_BASE,
    TUNED,
    DrainResult,
    drain,
    preload_due,
    reset_tables,
    tuned_unless_fixed,
)

SCENARIO = "3 drain"
# Tuned, 1 replica: at least 0.6 of the pgbench claim + finish ceiling of the same run.
CEILING_GOAL = Goal(">=", 0.6, on="ratio")
# Against pgqueuer's tuned drain in the same run, by (default settings?, replicas): fast by
# default, ahead with the tuned setting (the performance issue's goals).
PEER_GOALS = {
    (True, 1): Goal(">=", 0.6, on="ratio"),
    (False, 1): Goal(">=", 1.2, on="ratio"),
    (False, 2): Goal(">=", 1.5, on="ratio"),
}
# Against graphile-worker's performance configuration, paceline tuned (the issue: "beat it
# too"); it drained faster than pgqueuer tuned here, so at least level with it.
GRAPHILE_GOAL = Goal(">=", 1.0, on="ratio")
PGBENCH_CLIENTS = 4


async def run(bench: Bench) -> None:
    """Ceilings, then `runs` drains per replica count (emptied tables, same replicas)."""
    ceiling = await drain_ceilings(bench)
    peer = await pgqueuer_drain(bench, ceiling)
    graphile_peer = await graphile_drain(bench, ceiling)
    # --concurrency fixes the setting for the whole run; otherwise the default and tuned.
    fixed = not tuned_unless_fixed(bench)
    variants: list[tuple[str, dict[str, str]]] = [("", {})]
    if not fixed:
        variants.append((f", concurrency {TUNED['PACELINE_CONCURRENCY']}", TUNED))
    for label, env in variants:
        for count in bench.config.replica_counts:
            results = await _drains(bench, count, env)
            rate = median([result.rate for result in results])
            # Later scenarios (scale) compare with the figure at the run's own settings.
            if not env:
                bench.figures[f"drain.{count}"] = rate
            incomplete = sum(not result.complete for result in results)
            cap = f"; {incomplete} run(s) stopped at the {bench.config.drain_cap:.0f}s cap"
            untuned = not fixed and not env
            bench.report.add(
                Row(
                    SCENARIO,
                    f"jobs/s, {bench.config.drain_jobs:,} due jobs, {count} replica(s){label}",
                    rate,
                    "jobs/s",
                    ceiling=ceiling,
                    ceiling_label="pgbench claim 50",
                    goal=CEILING_GOAL if env and count == 1 else None,
                    samples=[result.rate for result in results],
                    note=(
                        ("default PACELINE_CONCURRENCY (8); " if untuned else "")
                        + f"CPU: {results[0].cpu}{cap if incomplete else ''}"
                    ),
                )
            )
            if peer is not None:
                bench.report.add(
                    Row(
                        SCENARIO,
                        f"jobs/s, {count} replica(s){label or ', default settings'}, "
                        "vs pgqueuer tuned",
                        rate,
                        "jobs/s",
                        ceiling=peer,
                        ceiling_label="pgqueuer tuned",
                        goal=PEER_GOALS.get((not env, count)),
                        note="paceline checks every object's window in its claim; pgqueuer has "
                        "no such check",
                    )
                )
            if graphile_peer is not None and env:
                bench.report.add(
                    Row(
                        SCENARIO,
                        f"jobs/s, {count} replica(s){label}, vs graphile-worker tuned",
                        rate,
                        "jobs/s",
                        ceiling=graphile_peer,
                        ceiling_label="graphile-worker tuned",
                        goal=GRAPHILE_GOAL,
                        note="paceline checks every object's window in its claim and keeps "
                        "finished jobs; graphile-worker has no such check and deletes them; its "
                        "rate includes its start-up",
                    )
                )
            suffix = "-tuned" if env else ""
            bench.report.detail(f"drain.{count}r{suffix}", [dataclasses.asdict(r) for r in results])
    if bench.config.profile:
        title = "Profile: drain, 1 replica, tuned (py-spy)"
        bench.report.section(title, await _profile(bench))


async def _drains(bench: Bench, count: int, env: dict[str, str]) -> list[DrainResult]:
    results: list[DrainResult] = []
    suffix = "-tuned" if env else ""
    async with (
        bench.cluster.database(f"drain_{count}{suffix.replace('-', '_')}") as url,
        bench.replicas(url, count, name=f"drain-{count}{suffix}", env=env) as replicas,
    ):
        for _ in range(bench.config.runs):
            await reset_tables(url)
            await reset_statements(url)
            results.append(await drain(bench, url, replicas))
            if len(results) == 1:
                statements = await statements_per_job(url, results[0].finished)
                bench.report.section(
                    f"Statements per drained job, {count} replica(s){suffix} (pg_stat_statements)",
                    format_statements(statements),
                )
    return results


async def _profile(bench: Bench) -> str:
    async with (
        bench.cluster.database("drain_profile") as url,
        # Tuned, like the goal's rows: at the default concurrency the replica mostly waits.
        bench.replicas(url, 1, name="drain-profile", env=tuned_unless_fixed(bench)) as replicas,
    ):
        seconds = int(min(15, bench.config.drain_cap))
        output = bench.config.results / "profile-drain.speedscope.json"
        recorded, _ = await asyncio.gather(
            profiling.record(replicas[0].pid, seconds, output),
            drain(bench, url, replicas, cap=seconds),
        )
    if recorded is None:
        return "py-spy unavailable or failed (see stderr)"
    return f"{output.name}\n\n{profiling.top_frames(output)}"


# How a peer drains once on a fresh database of the run's server.
DrainOnce = Callable[[str], Awaitable[baseline.PeerDrain]]


async def _peer_drain(
    bench: Bench,
    ceiling: float,
    figure: str,
    database: str,
    setup: Callable[[], Awaitable[tuple[DrainOnce, str]]],
) -> float | None:
    """A peer's drain, `runs` times, as a "3 peers" row; None if it could not be installed or
    run (the row says why). `setup` installs the peer and returns its drain and the row's note."""
    try:
        drain_once, note = await setup()
        samples = []
        for _ in range(bench.config.runs):
            async with bench.cluster.database(database) as url:
                samples.append((await drain_once(url)).rate)
    except baseline.PeerUnavailable as exc:
        bench.report.add(Row("3 peers", figure, None, "jobs/s", note=f"not measured: {exc}"))
        return None
    rate = median(samples)
    bench.report.add(
        Row(
            "3 peers",
            figure,
            rate,
            "jobs/s",
            ceiling=ceiling,
            ceiling_label="pgbench claim 50",
            samples=samples,
            note=note,
        )
    )
    return rate


async def pgqueuer_drain(bench: Bench, ceiling: float) -> float | None:
    """pgqueuer's tuned drain of as many no-op jobs, on this run's server; None if it could
    not be installed or run (the row says why)."""
    figure = (
        f"pgqueuer {baseline.VERSION} drain, {baseline.MANAGERS} managers x batch {baseline.BATCH} "
        "(its tuned setting)"
    )
    jobs = bench.config.drain_jobs

    async def setup() -> tuple[DrainOnce, str]:
        python = await baseline.pgqueuer_python()
        note = f"{jobs:,} jobs, one process on uvloop, as its tools/benchmark.py drains"
        return (lambda url: baseline.pgqueuer_drain(python, url, jobs)), note

    return await _peer_drain(bench, ceiling, figure, "peer_pgqueuer", setup)


async def graphile_drain(bench: Bench, ceiling: float) -> float | None:
    """graphile-worker's drain of as many no-op jobs with its performance configuration, on
    this run's server; None if it could not be installed or run (the row says why)."""
    figure = (
        f"graphile-worker {graphile.VERSION} drain, its performance configuration "
        f"(concurrentJobs {graphile.CONCURRENT_JOBS}, localQueue {graphile.LOCAL_QUEUE})"
    )
    jobs = bench.config.drain_jobs

    async def setup() -> tuple[DrainOnce, str]:
        node = await graphile.graphile_node()
        version = await graphile.node_version(node)
        note = (
            f"{jobs:,} jobs, one Node {version} process, maxPoolSize "
            f"{graphile.MAX_POOL_SIZE}, completions batched (delay 0), info logging off; from "
            "just before its runner starts to the last handler start; its table empty after"
        )
        return (lambda url: graphile.graphile_drain(node, url, jobs)), note

    return await _peer_drain(bench, ceiling, figure, "peer_graphile", setup)


async def drain_ceilings(bench: Bench) -> float:
    """pgbench claim + finish with 50 jobs per claim (the ceiling) and with 1 (a reference)."""
    rates: dict[int, float] = {}
    for batch in (50, 1):
        jobs = bench.config.drain_jobs if batch > 1 else min(bench.config.drain_jobs, 5_000)
        samples = [await _claim_run(bench, batch, jobs) for _ in range(bench.config.runs)]
        rates[batch] = median(samples)
        bench.report.add(
            Row(
                "3 ceilings",
                f"pgbench claim {batch}/statement + finish, {PGBENCH_CLIENTS} clients",
                rates[batch],
                "jobs/s",
                ceiling=rates.get(50) if batch != 50 else None,
                ceiling_label="claim 50",
                samples=samples,
                note=f"{jobs:,} due jobs over distinct objects; spacing check in the claim",
            )
        )
    return rates[50]


async def _claim_run(bench: Bench, batch: int, jobs: int) -> float:
    async with bench.cluster.database("ceiling_drain") as url:
        await preload_due(url, jobs, DRAIN_BASE, WINDOW)
        transactions = math.ceil(jobs / batch / PGBENCH_CLIENTS)
        result = await bench.pgbench(
            url,
            PGBENCH_SCRIPTS / "claim_finish.sql",
            clients=PGBENCH_CLIENTS,
            transactions=transactions,
            defines={"batch": batch, "window": WINDOW},
        )
        conn = await asyncpg.connect(url)
        try:
            done: int = await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'SUCCESS'")
        finally:
            await conn.close()
    return done / result.seconds
