"""Steps several scenarios share: POST load with its CPU split, preloading and draining jobs."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks import profiling
from benchmarks.context import (
    KIND,
    WINDOW,
    Bench,
    reset_statements,
    statements_per_job,
    wait_until,
)
from benchmarks.load import HttpRun, wrk
from benchmarks.procs import CpuSplit, Replica
from benchmarks.report import Goal, median
from paceline.client import PacelineClient

# Object ids of each kind of load, far apart, so no scenario's jobs share a window by accident.
# Issue 16's goal for the features' rows (1 KiB payloads, N = 10, 100k overrides, 10%
# `not_before`): each within 15% of the plain figure of the same run.
WITHIN_PLAIN = Goal(">=", 0.85, on="ratio")

RANDOM_OBJECTS = 10**12  # POST load draws from 1..10^12
DRAIN_BASE = 2 * 10**12
HOT_BASE = 3 * 10**12
LATENESS_BASE = 4 * 10**12
SCALE_FINISHED_BASE = 5 * 10**12
SCALE_PENDING_BASE = 6 * 10**12
WAKE_BASE = 7 * 10**12
# The drain and lateness goals compare with pgqueuer *tuned*, so paceline runs tuned there too:
# PACELINE_CONCURRENCY sets how many jobs run at once and so how many one claim may take. The
# default (8) suits handlers that wait on slow services; a no-op drain at 8 is bound by one
# claim round trip per 8 jobs. Those scenarios report the default beside it.
TUNED = {"PACELINE_CONCURRENCY": "256"}


def tuned_unless_fixed(bench: Bench) -> dict[str, str]:
    """TUNED, or nothing when --concurrency fixed the setting for the whole run."""
    return {} if "PACELINE_CONCURRENCY" in bench.config.replica_env else TUNED


# No job is running: whatever a worker was doing with earlier jobs is over.
QUIET = "SELECT NOT EXISTS (SELECT 1 FROM jobs WHERE status = 'PROCESSING')"
# Nothing due waits and nothing runs: the workers are idle.
IDLE = (
    "SELECT NOT EXISTS (SELECT 1 FROM jobs WHERE status = 'PENDING' AND run_at <= now()) "
    "AND NOT EXISTS (SELECT 1 FROM jobs WHERE status = 'PROCESSING')"
)


@dataclasses.dataclass
class PostResult:
    """POST /jobs at one connection count: the runs and what they cost."""

    runs: list[HttpRun]
    cpu: CpuSplit
    jobs: int
    statements: list[dict[str, Any]]

    @property
    def rps(self) -> float:
        """Median requests per second."""
        return median([run.rps for run in self.runs])

    @property
    def p50(self) -> float:
        """Median of the runs' p50, ms."""
        return median([run.p50_ms for run in self.runs])

    @property
    def p99(self) -> float:
        """Median of the runs' p99, ms."""
        return median([run.p99_ms for run in self.runs])

    @property
    def errors(self) -> int:
        """Failed requests over all runs (non-2xx, socket errors, timeouts)."""
        return sum(run.errors for run in self.runs)


async def count_jobs(url: str) -> int:
    """How many jobs the table holds."""
    conn = await asyncpg.connect(url)
    try:
        value: int = await conn.fetchval("SELECT count(*) FROM jobs")
        return value
    finally:
        await conn.close()


async def measure_post(
    bench: Bench, url: str, replicas: list[Replica], connections: int
) -> PostResult:
    """Warm-up and `runs` wrk runs of POST /jobs with random objects; CPU and statements."""
    await reset_statements(url)
    before = await count_jobs(url)
    meter = bench.cpu_meter(replicas)
    meter.start()
    runs = await bench.http_runs(replicas, connections)
    cpu = meter.stop()
    jobs = await count_jobs(url) - before
    return PostResult(runs, cpu, jobs, await statements_per_job(url, jobs))


async def profile_post(
    bench: Bench,
    replica: Replica,
    connections: int,
    label: str,
    *,
    env: Mapping[str, str] | None = None,
) -> str:
    """One extra wrk run (`env` for its script) with py-spy on `replica`; the top frames, or
    why there are none."""
    output = bench.config.results / f"profile-{label}.speedscope.json"
    seconds = max(bench.config.seconds, 5)
    recorded, _ = await asyncio.gather(
        profiling.record(replica.pid, seconds, output),
        wrk([replica.port], connections=connections, seconds=seconds, env=env),
    )
    return _profile_text(recorded, output)


def _profile_text(recorded: Path | None, output: Path) -> str:
    if recorded is None:
        return "py-spy unavailable or failed (see stderr)"
    return f"{output.name}\n\n{profiling.top_frames(output)}"


async def preload_due(
    url: str, jobs: int, base: int, window: float, *, citus: bool = False
) -> None:
    """`jobs` due jobs over distinct objects (and their slots), then fresh planner statistics.
    `citus`: the database is a Citus cluster's, whose rows carry their key's bucket."""
    bucket = (", bucket", ", paceline_bucket($3, $2::bigint + g)") if citus else ("", "")
    slot_bucket = (", bucket", ", paceline_bucket($4, $2::bigint + g)") if citus else ("", "")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            f"INSERT INTO jobs (kind, object_id, run_at{bucket[0]}) "
            f"SELECT $3, $2::bigint + g, now(){bucket[1]} FROM generate_series(1, $1::int) AS g",
            jobs,
            base,
            KIND,
        )
        await conn.execute(
            f"INSERT INTO object_slots AS s (kind, object_id, next_slot{slot_bucket[0]}) "
            f"SELECT $4, $2::bigint + g, now() + make_interval(secs => $3){slot_bucket[1]} "
            "FROM generate_series(1, $1::int) AS g "
            f"ON CONFLICT ({'bucket, ' if citus else ''}kind, object_id) DO UPDATE "
            "SET next_slot = GREATEST(s.next_slot, EXCLUDED.next_slot)",
            jobs,
            base,
            window,
            KIND,
        )
        await conn.execute("VACUUM ANALYZE jobs")
        await conn.execute("VACUUM ANALYZE object_slots")
    finally:
        await conn.close()


async def post_one(base_url: str, object_id: int) -> dict[str, Any]:
    """POST one job through paceline's own client (its NOTIFY wakes every replica's workers)."""
    async with PacelineClient(base_url) as paceline:
        job = await paceline.submit(object_id)
    return dict(job.raw)


@dataclasses.dataclass(frozen=True)
class DrainResult:
    """A drain: jobs finished over the span from the first start to the last finish."""

    finished: int
    seconds: float
    complete: bool
    cpu: CpuSplit

    @property
    def rate(self) -> float:
        """Jobs per second."""
        return self.finished / self.seconds if self.seconds > 0 else 0.0


async def drain(
    bench: Bench,
    url: str,
    replicas: list[Replica],
    *,
    jobs: int | None = None,
    cap: float | None = None,
    citus: bool = False,
) -> DrainResult:
    """Preload `jobs` due jobs, wake the workers, wait until done (or `cap` s); the rate.
    Both default to the run's --drain-jobs and its cap.

    The rate is measured on the database clock: finished jobs over (last finish - first start),
    so the replicas' start-up and the harness's polling do not count. Due jobs left over from
    earlier load are deleted first, and only the preloaded jobs (a range of objects of their
    own, new in this database) count, so other rows in the table do not disturb the figure.
    """
    jobs = bench.config.drain_jobs if jobs is None else jobs
    cap = bench.config.drain_cap if cap is None else cap
    low = await _fresh_drain_base(url)
    high = low + jobs - 1
    await preload_due(url, jobs, low - 1, bench_window(bench), citus=citus)
    meter = bench.cpu_meter(replicas)
    meter.start()
    await post_one(replicas[0].url, WAKE_BASE + int(time.time() * 1000))
    complete = await wait_until(
        url,
        "SELECT NOT EXISTS (SELECT 1 FROM jobs WHERE status = 'PENDING' "
        f"AND object_id BETWEEN {low} AND {high}) AND NOT EXISTS (SELECT 1 FROM jobs "
        f"WHERE status = 'PROCESSING' AND object_id BETWEEN {low} AND {high})",
        within=cap,
    )
    cpu = meter.stop()
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, "
            "EXTRACT(EPOCH FROM max(finished_at) - min(started_at))::float8 AS span "
            "FROM jobs WHERE status = 'SUCCESS' AND object_id BETWEEN $1 AND $2",
            low,
            high,
        )
    finally:
        await conn.close()
    assert row is not None
    return DrainResult(row["n"], row["span"] or 0.0, complete, cpu)


async def _fresh_drain_base(url: str) -> int:
    """Delete due jobs nobody ran yet; the first object id of a range no drain used here."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DELETE FROM jobs WHERE status = 'PENDING' AND run_at <= now()")
        await wait_until(url, QUIET, within=60, interval=0.1)
        used: int | None = await conn.fetchval(
            "SELECT max(object_id) FROM (SELECT max(object_id) AS object_id FROM jobs "
            "WHERE object_id BETWEEN $1 AND $2 UNION ALL SELECT max(object_id) "
            "FROM object_slots WHERE object_id BETWEEN $1 AND $2) AS used",
            DRAIN_BASE,
            HOT_BASE - 1,
        )
    finally:
        await conn.close()
    return DRAIN_BASE + 1 if used is None else used + 1_000_000


async def quiesce(*urls: str, within: float = 120.0) -> None:
    """Wait until the workers have run every due job of these databases, so the next
    measurement (a pgbench ceiling, the other replica's turn) does not share the machine with
    a backlog left by the one before."""
    for url in urls:
        await wait_until(url, IDLE, within=within, interval=0.1)


async def reset_tables(url: str) -> None:
    """Empty every table but the migration marker and the replicas' registry, so the next
    measurement starts from an empty queue with the replicas still running. Pending jobs go
    first and running ones may finish, so no worker writes about old jobs after the TRUNCATE."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DELETE FROM jobs WHERE status = 'PENDING'")
        await wait_until(url, QUIET, within=60, interval=0.1)
        tables = await conn.fetch(
            "SELECT quote_ident(tablename) AS name FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename NOT IN ('alembic_version', 'workers')"
        )
        names = ", ".join(row["name"] for row in tables)
        await conn.execute(f"TRUNCATE {names}")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def turns(loads: Sequence[str], run: int) -> list[str]:
    """The order loads compared in one run take in run number `run`: as given, then reversed,
    so a drift of the machine's speed over a run weighs on each alike."""
    return list(loads) if run % 2 == 0 else list(reversed(loads))


def bench_window(bench: Bench) -> float:
    """The window the replicas run with."""
    return float(bench.config.replica_env.get("PACELINE_RATE_WINDOW", WINDOW))
