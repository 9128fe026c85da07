"""Scenario 2: batch enqueue — POST /jobs with a JSON array of up to 1000 jobs, one statement.

The API it measures (probed first, so that a revision without it reports "n/a" rather than
fail; paceline has it since the batch issue):
  POST /jobs, Content-Type application/json, body a JSON array of 1..1000 job requests, each
  exactly the single-job body {"object_id": <int64>}. Answer 201 with {"jobs": [...]}, the created
  jobs in request order, each as GET /jobs/{id} shows it. All jobs are inserted by one statement
  (all or nothing). Jobs of one object keep array order: each takes the object's next slot, a
  window after the one before, also when the object repeats inside the batch.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import aiohttp
import asyncpg

from benchmarks.context import WINDOW, Bench
from benchmarks.load import PGBENCH_SCRIPTS, wrk
from benchmarks.report import Goal, Row, median
from benchmarks.scenarios.common import WAKE_BASE, count_jobs

SCENARIO = "2 batch enqueue"
BATCH = 1000
CONNECTIONS = 8
PGBENCH_CLIENTS = 4
GOAL = Goal(">=", 50_000, unit="jobs/s")
ASSUMED = (
    "assumed API: POST /jobs with a JSON array of {object_id} (≤1000) → 201 + {jobs: [...]} "
    "in request order, one statement, repeats of an object take consecutive slots"
)


async def run(bench: Bench) -> None:
    """The pgbench ceiling, then the service if it takes arrays."""
    ceiling = await _ceiling(bench)
    bench.report.add(
        Row(
            "2 ceilings",
            f"pgbench {BATCH}-job statement, {PGBENCH_CLIENTS} clients",
            ceiling,
            "jobs/s",
            note="every 10th job repeats an object of its batch; slots exact",
        )
    )
    for count in bench.config.replica_counts:
        async with (
            bench.cluster.database(f"batch_{count}") as url,
            bench.replicas(url, count, name=f"batch-{count}") as replicas,
        ):
            figure = f"jobs/s, {BATCH}-job arrays, {CONNECTIONS} conn, {count} replica(s)"
            missing = await _probe(replicas[0].url)
            if missing is not None:
                bench.report.add(
                    Row(
                        SCENARIO,
                        figure,
                        None,
                        "jobs/s",
                        ceiling=ceiling,
                        ceiling_label="pgbench",
                        goal=GOAL,
                        note=f"n/a (not implemented); {missing}; {ASSUMED}",
                    )
                )
                continue
            before = await count_jobs(url)
            ports = [replica.port for replica in replicas]
            env = {"BENCH_BATCH": str(BATCH)}
            await wrk(
                ports,
                connections=CONNECTIONS,
                seconds=bench.config.warmup,
                env=env,
            )
            runs = [
                await wrk(
                    ports,
                    connections=CONNECTIONS,
                    seconds=bench.config.seconds,
                    env=env,
                )
                for _ in range(bench.config.runs)
            ]
            rate = median([run.rps * BATCH for run in runs])
            wrong = await _slot_errors(url)
            jobs = await count_jobs(url) - before
            bench.report.add(
                Row(
                    SCENARIO,
                    figure,
                    rate,
                    "jobs/s",
                    ceiling=ceiling,
                    ceiling_label="pgbench",
                    goal=GOAL,
                    samples=[run.rps * BATCH for run in runs],
                    note=f"p99 {median([r.p99_ms for r in runs]):.0f} ms per batch; {jobs} jobs; "
                    f"slot check: {wrong or 'exact'}",
                )
            )


async def _ceiling(bench: Bench) -> float:
    async with bench.cluster.database("ceiling_batch") as url:
        runs = [
            await bench.pgbench(
                url,
                PGBENCH_SCRIPTS / "enqueue_batch.sql",
                clients=PGBENCH_CLIENTS,
                seconds=bench.config.seconds,
                defines={"window": WINDOW},
            )
            for _ in range(bench.config.runs)
        ]
        wrong = await _slot_errors(url)
        if wrong:
            raise RuntimeError(f"the reference batch statement broke the slots: {wrong}")
    return median([run.tps * BATCH for run in runs])


async def _probe(base_url: str) -> str | None:
    """None if POST /jobs takes an array as assumed; else what it answered."""
    object_id = WAKE_BASE - 1
    body = [{"object_id": object_id}, {"object_id": object_id}]
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url}/jobs", json=body) as response,
    ):
        text = await response.text()
        answer: Any = None
        if response.content_type.endswith("json"):
            answer = await response.json(content_type=None)
    created = answer.get("jobs") if isinstance(answer, dict) else None
    if response.status != 201 or not isinstance(created, list) or len(created) != 2:
        return f"a 2-job array got {response.status}: {text[:120]}"
    first, second = (dt.datetime.fromisoformat(job["run_at"]) for job in created)
    if (second - first).total_seconds() < WINDOW:
        return f"a repeated object got slots {first} and {second}, less than a window apart"
    return None


async def _slot_errors(url: str) -> str:
    """What breaks the per-object slots: jobs less than W apart, or a slot row out of step."""
    conn = await asyncpg.connect(url)
    try:
        close = await conn.fetchval(
            "SELECT count(*) FROM (SELECT run_at - lag(run_at) OVER "
            "(PARTITION BY kind, object_id ORDER BY id) AS gap FROM jobs) AS g "
            "WHERE gap < make_interval(secs => $1)",
            WINDOW,
        )
        stale = await conn.fetchval(
            "SELECT count(*) FROM object_slots AS s JOIN "
            "(SELECT kind, object_id, max(run_at) AS last FROM jobs GROUP BY kind, object_id) "
            "AS j USING (kind, object_id) WHERE s.next_slot < j.last + make_interval(secs => $1)",
            WINDOW,
        )
    finally:
        await conn.close()
    problems = []
    if close:
        problems.append(f"{close} jobs less than W after the previous of their object")
    if stale:
        problems.append(f"{stale} objects whose next slot is less than W after their last job")
    return "; ".join(problems)
