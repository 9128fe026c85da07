"""Scenario 5: lateness — started_at - run_at on the database clock — at idle and at half of the
service's max POST throughput (1 replica). The idle figure has a same-run reference: the floor
of `benchmarks.floor`, an insert and one statement after it in the same pattern without the
service, the share of lateness that is this machine's and this server's."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from typing import Any

import asyncpg

from benchmarks.context import Bench, wait_until
from benchmarks.load import HttpRun, wrk
from benchmarks.procs import ROOT
from benchmarks.report import Goal, Row
from benchmarks.scenarios.common import LATENESS_BASE, measure_post, tuned_unless_fixed
from paceline.client import PacelineClient
from paceline.contract import DEFAULT_KIND

SCENARIO = "5 lateness"
IDLE_GOAL = Goal("<=", 5, unit="ms")
CHAIN_GOAL = Goal("<=", 10, unit="ms")
LOAD_GOAL = Goal("<=", 50, unit="ms")
# At idle: objects posted one after another, each twice: the first job is due at once (woken by
# NOTIFY), the second a window later (woken by the timer on the next due slot).
# 500 objects x 2 jobs: a p99 over 1,000 samples.
IDLE_OBJECTS = 500
IDLE_WINDOW = 0.5
IDLE_GAP = 0.02
# A backlog of one object: CHAIN_LENGTH jobs submitted at once take slots a window apart, and
# each start may be no closer than W to the one before, so a late start delays the next one.
CHAIN_OBJECTS = 10
CHAIN_LENGTH = 20
CHAIN_WINDOW = 0.05
CONNECTIONS = 16
DONE = "SELECT NOT EXISTS (SELECT 1 FROM jobs WHERE status IN ('PENDING', 'PROCESSING'))"


async def run(bench: Bench) -> None:
    """Idle first, then paced load at half the best POST rate."""
    await _idle(bench)
    await _chain(bench)
    tuned = tuned_unless_fixed(bench)
    # The goal is issue 16's "fast by default": lateness at half load with default settings.
    if tuned:
        await _half_load(bench, {}, goal=LOAD_GOAL, label=", default concurrency 8")
    await _half_load(
        bench, tuned, goal=None if tuned else LOAD_GOAL, label=", concurrency 256" if tuned else ""
    )


async def _idle(bench: Bench) -> None:
    async with (
        bench.cluster.database("lateness_idle") as url,
        bench.replicas(url, 1, name="lateness-idle") as replicas,
        PacelineClient(replicas[0].url) as paceline,
    ):
        # The window is the database's (the template's `migrate` seeded the default kind's):
        # set through the API, as a user would; a replica's environment no longer changes it.
        await paceline.set_limit(DEFAULT_KIND, window=IDLE_WINDOW, limit=1, max_running=1)
        for index in range(IDLE_OBJECTS):
            for _ in range(2):
                await paceline.submit(LATENESS_BASE + index)
            await asyncio.sleep(IDLE_GAP)
        await _all_ran(url, within=30)
        overall = await _lateness(url)
        at_once = await _lateness(url, kind="first")
        timed = await _lateness(url, kind="later")
    async with bench.cluster.database("lateness_floor") as url:
        floor = await _floor(url)
    bench.report.add(
        Row(
            SCENARIO,
            "floor: an insert, then one statement, no service; p99 at idle",
            floor["all"]["p99"],
            "ms",
            note=f"p50 {floor['all']['p50']:.1f} ms over {floor['all']['n']} jobs; due at once: "
            f"p50 {floor['at_once']['p50']:.1f} / p99 {floor['at_once']['p99']:.1f} ms; due a "
            f"window later: p50 {floor['timed']['p50']:.1f} / p99 "
            f"{floor['timed']['p99']:.1f} ms (benchmarks/floor.py)",
        )
    )
    bench.report.add(
        Row(
            SCENARIO,
            "p99 lateness at idle",
            overall["p99"],
            "ms",
            ceiling=floor["all"]["p99"],
            ceiling_label="floor, same run",
            goal=IDLE_GOAL,
            note=f"p50 {overall['p50']:.1f} ms over {overall['n']} jobs (floor "
            f"{floor['all']['p50']:.1f}); due at once (the replica wakes its worker): p50 "
            f"{at_once['p50']:.1f} / p99 {at_once['p99']:.1f} ms; due a window later "
            f"(timer): p50 {timed['p50']:.1f} / p99 {timed['p99']:.1f} ms",
        )
    )
    bench.report.detail(
        "lateness.idle", {"all": overall, "at_once": at_once, "timed": timed, "floor": floor}
    )


async def _floor(url: str) -> dict[str, Any]:
    """`benchmarks.floor` in a process of its own (as a replica is), in the idle pattern."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.floor",
        url,
        str(IDLE_OBJECTS),
        str(IDLE_WINDOW),
        str(IDLE_GAP),
        cwd=ROOT,  # `-m benchmarks.floor` from the repository, as `-m benchmarks` runs
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"benchmarks.floor exited with {process.returncode}")
    figures: dict[str, Any] = json.loads(out)
    return figures


async def _half_load(bench: Bench, env: dict[str, str], *, goal: Goal | None, label: str) -> None:
    suffix = "_tuned" if env else ""
    async with (
        bench.cluster.database(f"lateness_load{suffix}") as url,
        bench.replicas(url, 1, name=f"lateness-load{suffix}", env=env) as replicas,
    ):
        best = max(
            (bench.figures.get(f"post.{c}.1", 0.0) for c in bench.config.connections), default=0.0
        )
        if not best:
            best = (await measure_post(bench, url, replicas, max(bench.config.connections))).rps
        target = best / 2
        port = replicas[0].port
        delay = await _calibrate(port, target)
        # Start from an empty queue: what calibration (and a fallback POST run) left must be
        # done first, or its backlog would count as lateness of the measured jobs.
        await _all_ran(url, within=300)
        began = await _now(url)
        result = await wrk(
            [port],
            connections=CONNECTIONS,
            seconds=max(10, 2 * bench.config.seconds),
            env={"BENCH_DELAY_MS": f"{delay:.3f}"},
        )
        ended = await _now(url)
        backlog = await _backlog(url)
        await _all_ran(url, within=300)
        stats = await _lateness(url, between=(began, ended))
        stall = await _longest_stall(url, began, ended)
    bench.report.add(
        Row(
            SCENARIO,
            f"p99 lateness at {result.rps:,.0f} req/s (half of {best:,.0f}){label}",
            stats["p99"],
            "ms",
            goal=goal,
            note=f"p50 {stats['p50']:.1f} ms, max {stats['max']:.0f} ms over {stats['n']} jobs; "
            f"{stats['over_50ms']} jobs over 50 ms late; longest time without a start while a "
            f"job was due: {stall:.0f} ms; due jobs waiting when the load stopped: {backlog}; "
            f"POST p99 {result.p99_ms:.1f} ms",
        )
    )
    bench.report.detail(
        f"lateness.half_load{suffix}", {**stats, "rps": result.rps, "target": target}
    )


async def _calibrate(port: int, target: float) -> float:
    """The per-request pause (ms) that makes CONNECTIONS connections send `target` req/s."""
    period = CONNECTIONS * 1000 / target
    delay = period
    for _ in range(2):
        trial: HttpRun = await wrk(
            [port], connections=CONNECTIONS, seconds=2, env={"BENCH_DELAY_MS": f"{delay:.3f}"}
        )
        latency = CONNECTIONS * 1000 / trial.rps - delay
        delay = max(0.0, period - latency)
    return delay


async def _chain(bench: Bench) -> None:
    """CHAIN_OBJECTS objects with CHAIN_LENGTH jobs each, submitted at once: how late the
    n-th job of an object starts after its slot, n = 1 .. CHAIN_LENGTH (median over objects)."""
    async with (
        bench.cluster.database("lateness_chain") as url,
        bench.replicas(url, 1, name="lateness-chain") as replicas,
        PacelineClient(replicas[0].url) as paceline,
    ):
        await paceline.set_limit(DEFAULT_KIND, window=CHAIN_WINDOW, limit=1, max_running=1)
        # A warm replica (its statements prepared, its pool connected): the chain measures
        # how starts follow one another, not a first claim.
        await paceline.submit(LATENESS_BASE - 1)
        await _all_ran(url, within=30)
        objects = [LATENESS_BASE + index for index in range(CHAIN_OBJECTS)]
        await paceline.submit_batch([o for o in objects for _ in range(CHAIN_LENGTH)])
        await _all_ran(url, within=60)
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                """
                SELECT position,
                       percentile_cont(0.5) WITHIN GROUP (ORDER BY late) AS p50,
                       max(late) AS max
                FROM (
                    SELECT EXTRACT(EPOCH FROM started_at - run_at)::float8 * 1000 AS late,
                           row_number() OVER (PARTITION BY object_id ORDER BY run_at) AS position
                    FROM jobs
                    WHERE started_at IS NOT NULL AND object_id >= $1
                ) AS j
                GROUP BY position ORDER BY position
                """,
                LATENESS_BASE,
            )
            # Each start's own lateness: after the start before it + W, the earliest the window
            # let it start (what a step adds to the chain).
            own = await conn.fetchrow(
                """
                SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY own) AS p50,
                       percentile_cont(0.9) WITHIN GROUP (ORDER BY own) AS p90
                FROM (
                    SELECT EXTRACT(EPOCH FROM started_at - lag(started_at)
                               OVER (PARTITION BY object_id ORDER BY run_at))::float8 * 1000
                           - $2::float8 * 1000 AS own
                    FROM jobs
                    WHERE started_at IS NOT NULL AND object_id >= $1
                ) AS j
                WHERE own IS NOT NULL
                """,
                LATENESS_BASE,
                CHAIN_WINDOW,
            )
        finally:
            await conn.close()
    assert own is not None
    by_position = {int(row["position"]): (row["p50"], row["max"]) for row in rows}
    if CHAIN_LENGTH not in by_position:
        raise RuntimeError(f"no object's job {CHAIN_LENGTH} started: {by_position}")
    p50, worst = by_position[CHAIN_LENGTH]
    steps = ", ".join(
        f"{n}: {by_position[n][0]:.1f}" for n in (1, 2, 5, 10, 15, CHAIN_LENGTH) if n in by_position
    )
    bench.report.add(
        Row(
            SCENARIO,
            f"lateness of job {CHAIN_LENGTH} of a backlogged object, W {CHAIN_WINDOW:g}s",
            p50,
            "ms",
            goal=CHAIN_GOAL,
            note=f"median over {CHAIN_OBJECTS} objects, max {worst:.1f} ms; median ms by "
            f"position in the backlog: {steps}; each start's own lateness (after the start "
            f"before it + W): p50 {own['p50']:.2f} / p90 {own['p90']:.2f} ms; a start more than "
            "50 ms late re-plans the key's later slots from it, and their lateness counts from "
            "the new slots",
        )
    )
    bench.report.detail("lateness.chain", {str(n): v[0] for n, v in by_position.items()})


async def _all_ran(url: str, *, within: float) -> None:
    """Wait until every job ran; a figure of the jobs that did would be a wrong one."""
    if not await wait_until(url, DONE, within=within):
        raise RuntimeError(f"jobs still waiting after {within:g} s")


async def _now(url: str) -> dt.datetime:
    conn = await asyncpg.connect(url)
    try:
        moment: dt.datetime = await conn.fetchval("SELECT clock_timestamp()")
        return moment
    finally:
        await conn.close()


async def _lateness(
    url: str, *, kind: str = "all", between: tuple[dt.datetime, dt.datetime] | None = None
) -> dict[str, Any]:
    """p50, p99, max of started_at - run_at in ms; `kind` first/later job of each object."""
    rank = {"all": "true", "first": "rank = 1", "later": "rank > 1"}[kind]
    low, high = between or (dt.datetime.min.replace(tzinfo=dt.UTC), dt.datetime.now(dt.UTC))
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            f"""
            SELECT count(*) AS n,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY late) AS p50,
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY late) AS p99,
                   max(late) AS max,
                   count(*) FILTER (WHERE late > 50) AS over_50ms
            FROM (
                SELECT EXTRACT(EPOCH FROM started_at - run_at)::float8 * 1000 AS late,
                       row_number() OVER (PARTITION BY object_id ORDER BY id) AS rank
                FROM jobs
                WHERE started_at IS NOT NULL AND created_at BETWEEN $1 AND $2
            ) AS j
            WHERE {rank}
            """,  # rank is one of three fixed strings above, not input
            low,
            high,
        )
    finally:
        await conn.close()
    assert row is not None
    return {
        key: (row[key] if row[key] is not None else 0.0)
        for key in ("n", "p50", "p99", "max", "over_50ms")
    }


async def _longest_stall(url: str, began: dt.datetime, ended: dt.datetime) -> float:
    """The longest gap (ms) between consecutive starts while the next job had been due: time
    the workers did nothing though they could have (a stalled event loop, a missed wake-up)."""
    conn = await asyncpg.connect(url)
    try:
        gap: float | None = await conn.fetchval(
            """
            SELECT max(EXTRACT(EPOCH FROM started_at - GREATEST(previous, run_at)) * 1000)::float8
            FROM (
                SELECT started_at, run_at, lag(started_at) OVER (ORDER BY started_at) AS previous
                FROM jobs
                WHERE started_at IS NOT NULL AND created_at BETWEEN $1 AND $2
            ) AS s
            WHERE previous IS NOT NULL
            """,
            began,
            ended,
        )
    finally:
        await conn.close()
    return gap or 0.0


async def _backlog(url: str) -> int:
    """Due jobs not started yet: more than a handful means the workers fall behind the load."""
    conn = await asyncpg.connect(url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM jobs WHERE status = 'PENDING' AND run_at <= now()"
        )
        return count
    finally:
        await conn.close()
