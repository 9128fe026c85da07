"""Scenario 9: stale statistics (issue 20). A fresh database with autovacuum off on paceline's
tables, analyzed while empty; one replica whose workers cache their plans on the empty tables;
then a burst of POSTs with repeated objects. Its heads are held back (object_starts) until just
after the burst, then the replica must start them as fast as it does once the tables are
analyzed: starts/s in the 20 s after the burst, against the same backlog replayed after an
ANALYZE. Goal: at least half the analyzed rate."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from benchmarks.context import KIND, Bench
from benchmarks.load import wrk
from benchmarks.report import Goal, Row
from benchmarks.scenarios.common import post_one

SCENARIO = "9 stale statistics"
STALE_BASE = 8 * 10**12
TABLES = ("jobs", "object_slots", "object_starts", "job_attempts")
CONNECTIONS = 16
WINDOW = 300.0
MEASURE = 20.0  # seconds after the burst
HOLD = 3.0  # the heads become free this long after the burst ends
GOAL = Goal(">=", 0.5, on="ratio")
ENV = {"PACELINE_CONCURRENCY": "64", "PACELINE_LOG_LEVEL": "WARNING"}


async def run(bench: Bench) -> None:
    burst, objects = bench.config.stale_burst_seconds, bench.config.stale_objects
    async with bench.cluster.database("stale") as url:
        conn = await asyncpg.connect(url)
        try:
            for table in TABLES:
                await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
                await conn.execute(f"ANALYZE {table}")
            async with bench.replicas(url, 1, name="stale", env=ENV) as replicas:
                base_url = f"http://127.0.0.1:{replicas[0].port}"
                # Plans cached on empty tables: more than five claims (one per job) first.
                for k in range(10):
                    await post_one(base_url, STALE_BASE + objects + 1 + k)
                    await asyncio.sleep(0.2)
                # Every object of the burst started a run just now: its head waits until the
                # burst is over (I1), so the backlog is the burst's heads, due at one moment.
                free_at = await conn.fetchval(
                    "INSERT INTO object_starts (kind, object_id, last_started_at) "
                    "SELECT $5, $1::bigint + o, now() + make_interval(secs => $3) - "
                    "make_interval(secs => $4) FROM generate_series(1, $2::int) AS o "
                    "RETURNING last_started_at + make_interval(secs => $4)",
                    STALE_BASE,
                    objects,
                    burst + HOLD,
                    WINDOW,
                    KIND,
                )
                env = {"BENCH_OBJECTS": str(objects), "BENCH_OBJECT_BASE": str(STALE_BASE)}
                posted = await wrk(
                    [replicas[0].port], connections=CONNECTIONS, seconds=burst, env=env
                )
                jobs = await conn.fetchval("SELECT count(*) FROM jobs")
                stale_rate, backlog = await _starts(conn, free_at)
                # The same backlog again, once analyzed: the heads just started go back to
                # PENDING and their objects' windows are open again.
                await _replay(conn, free_at)
                for table in TABLES:
                    await conn.execute(f"ANALYZE {table}")
                again = await conn.fetchval("SELECT now()")
                await conn.execute("NOTIFY paceline_jobs, '0'")
                analyzed_rate, _ = await _starts(conn, again)
        finally:
            await conn.close()
    bench.report.add(
        Row(
            SCENARIO,
            f"starts/s in the {MEASURE:.0f} s after a burst, statistics of empty tables",
            stale_rate,
            "jobs/s",
            ceiling=analyzed_rate,
            ceiling_label="same backlog after ANALYZE",
            goal=GOAL,
            note=f"{posted.rps:,.0f} req/s for {burst} s over {objects:,} objects ({jobs:,} "
            f"jobs), autovacuum off; backlog {backlog:,} due heads; concurrency 64",
        )
    )


async def _starts(conn: asyncpg.Connection, since: object) -> tuple[float, int]:
    """(starts/s from `since` until the due heads are all started or MEASURE s have passed,
    the heads due at `since`)."""
    backlog: int = await conn.fetchval(
        "SELECT count(DISTINCT object_id) FROM jobs WHERE status = 'PENDING' OR started_at >= $1",
        since,
    )
    wait = await conn.fetchval("SELECT EXTRACT(EPOCH FROM $1::timestamptz - now())", since)
    await asyncio.sleep(max(0.0, float(wait)))
    began = time.monotonic()
    started = 0
    while time.monotonic() - began < MEASURE:
        await asyncio.sleep(0.5)
        started = await conn.fetchval("SELECT count(*) FROM jobs WHERE started_at >= $1", since)
        if started >= backlog:
            break
    return started / (time.monotonic() - began), backlog


async def _replay(conn: asyncpg.Connection, since: object) -> None:
    """Put the jobs started since `since` back as they were: pending, due, windows open."""
    await conn.execute(
        """
        WITH again AS (
            UPDATE jobs SET status = 'PENDING', started_at = NULL, finished_at = NULL,
                            duration = NULL, attempts = 0, lease_expires_at = NULL,
                            worker_id = NULL, error = NULL
            WHERE started_at >= $1 AND status <> 'PROCESSING'
            RETURNING id, kind, object_id
        ),
        attempts AS (DELETE FROM job_attempts WHERE job_id IN (SELECT id FROM again))
        UPDATE object_starts SET last_started_at = now() - make_interval(secs => $2)
        WHERE (kind, object_id) IN (SELECT kind, object_id FROM again)
        """,
        since,
        WINDOW,
    )
