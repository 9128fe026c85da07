"""Scenario 7: memory — RSS of one replica (noop handler, default settings) as it runs jobs:
at start and after each quarter of `memory_jobs` drained jobs, so growth shows as a trend."""

from __future__ import annotations

from benchmarks.context import Bench
from benchmarks.procs import rss_mb
from benchmarks.report import Goal, Row
from benchmarks.scenarios.common import drain

SCENARIO = "7 memory"
GOAL = Goal("<=", 150, unit="MB")
QUARTERS = 4


async def run(bench: Bench) -> None:
    """Drain the jobs in quarters, reading the replica's RSS after each."""
    quarter = max(bench.config.memory_jobs // QUARTERS, 1)
    cap = max(bench.config.drain_cap, 600.0)
    async with (
        bench.cluster.database("memory") as url,
        bench.replicas(url, 1, name="memory") as replicas,
    ):
        pid = replicas[0].pid
        trend = [(0, rss_mb(pid))]
        done = 0
        for _ in range(QUARTERS):
            result = await drain(bench, url, replicas, jobs=quarter, cap=cap)
            done += result.finished
            trend.append((done, rss_mb(pid)))
    steps = ", ".join(f"{mb:.0f} MB after {jobs:,}" for jobs, mb in trend)
    bench.report.add(
        Row(
            SCENARIO,
            f"RSS of a replica after {done:,} jobs",
            trend[-1][1],
            "MB",
            goal=GOAL,
            note=f"{steps} jobs",
        )
    )
    bench.report.detail("memory", trend)
