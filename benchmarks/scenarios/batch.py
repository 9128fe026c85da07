"""Scenario 2: batch enqueue — POST /jobs with a JSON array of up to 1000 jobs, one statement;
and the same batches with a 1 KiB JSON payload on every job, as a ratio to the payload-less
ones, the two taking turns run by run (the pgbench ceiling too).

The API it measures (probed first, so that a revision without it reports "n/a" rather than
fail; paceline has it since the batch issue):
  POST /jobs, Content-Type application/json, body a JSON array of 1..1000 job requests, each
  exactly the single-job body {"object_id": <int64>} (with "payload" in the payload runs).
  Answer 201 with {"jobs": [...]}, the created jobs in request order, each as GET /jobs/{id}
  shows it. All jobs are inserted by one statement (all or nothing). Jobs of one object keep
  array order: each takes the object's next slot, a window after the one before, also when the
  object repeats inside the batch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import aiohttp
import asyncpg

from benchmarks.context import (
    PAYLOAD_BYTES,
    PAYLOAD_LABEL,
    WINDOW,
    Bench,
    StatementCounts,
    counts_between,
    format_statements,
    per_job,
    statement_counts,
)
from benchmarks.load import PGBENCH_SCRIPTS, HttpRun, wrk
from benchmarks.procs import CpuMeter
from benchmarks.report import Goal, Row, median
from benchmarks.scenarios.common import WAKE_BASE, WITHIN_PLAIN, count_jobs, turns

SCENARIO = "2 batch enqueue"
BATCH = 1000
CONNECTIONS = 8
PGBENCH_CLIENTS = 4
# The performance issue's goal: 0.6 of pgbench's 1000-job statement in the same run.
GOAL = Goal(">=", 0.6, on="ratio")
ASSUMED = (
    "assumed API: POST /jobs with a JSON array of {object_id} (≤1000) → 201 + {jobs: [...]} "
    "in request order, one statement, repeats of an object take consecutive slots"
)
PLAIN = "no payload"
WITH_PAYLOAD = PAYLOAD_LABEL
# Each load's settings: wrk's environment, pgbench's payload size.
LOADS: dict[str, tuple[dict[str, str], int]] = {
    PLAIN: ({"BENCH_BATCH": str(BATCH)}, 0),
    WITH_PAYLOAD: (
        {"BENCH_BATCH": str(BATCH), "BENCH_PAYLOAD_BYTES": str(PAYLOAD_BYTES)},
        PAYLOAD_BYTES,
    ),
}


async def run(bench: Bench) -> None:
    """The pgbench ceilings, then the service if it takes arrays."""
    ceilings = await _ceilings(bench)
    for name, (rate, samples) in ceilings.items():
        payload = name != PLAIN
        bench.report.add(
            Row(
                "2 ceilings",
                f"pgbench {BATCH}-job statement, {PGBENCH_CLIENTS} clients"
                + (f", {name}" if payload else ""),
                rate,
                "jobs/s",
                ceiling=ceilings[PLAIN][0] if payload else None,
                ceiling_label=PLAIN,
                samples=samples,
                note="every 10th job repeats an object of its batch; slots exact"
                + (
                    "; each payload made as text and parsed into jsonb in the statement (the "
                    "service sends the batch's payloads as a jsonb[] parameter)"
                    if payload
                    else ""
                ),
            )
        )
    ceiling = ceilings[PLAIN][0]
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
            loads = {name: _Load(bench.cpu_meter(replicas)) for name in LOADS}
            for env, _ in LOADS.values():
                await wrk(ports, connections=CONNECTIONS, seconds=bench.config.warmup, env=env)
            for index in range(bench.config.runs):
                for name in turns(list(LOADS), index):
                    load = loads[name]
                    counts = await statement_counts(url)
                    load.meter.start()
                    load.runs.append(
                        await wrk(
                            ports,
                            connections=CONNECTIONS,
                            seconds=bench.config.seconds,
                            env=LOADS[name][0],
                        )
                    )
                    load.meter.stop()
                    load.counts = counts_between(counts, await statement_counts(url), load.counts)
            wrong = await _slot_errors(url)
            jobs = await count_jobs(url) - before
            plain, loaded = loads[PLAIN], loads[WITH_PAYLOAD]
            bench.report.add(
                Row(
                    SCENARIO,
                    figure,
                    plain.rate,
                    "jobs/s",
                    ceiling=ceiling,
                    ceiling_label="pgbench",
                    goal=GOAL,
                    samples=plain.samples,
                    note=f"p99 {plain.p99:.0f} ms per batch; {jobs} jobs (both loads); "
                    f"slot check: {wrong or 'exact'}",
                )
            )
            bench.report.add(
                Row(
                    SCENARIO,
                    f"{figure}, {WITH_PAYLOAD}",
                    loaded.rate,
                    "jobs/s",
                    ceiling=plain.rate,
                    ceiling_label=PLAIN,
                    goal=WITHIN_PLAIN,
                    samples=loaded.samples,
                    note=f"p99 {loaded.p99:.0f} ms per batch ({PLAIN}: {plain.p99:.0f}); "
                    f"vs pgbench with the payload {loaded.rate / ceilings[WITH_PAYLOAD][0]:.2f} "
                    f"({PLAIN}: {plain.rate / ceiling:.2f}); CPU per job: {loaded.cpu_per_job()} "
                    f"({PLAIN}: {plain.cpu_per_job()}); CPU: {loaded.meter.total()}",
                )
            )
            for name, load in loads.items():
                bench.report.detail(
                    f"batch.{count}r.{'payload' if name != PLAIN else 'plain'}",
                    {
                        "runs": [dataclasses.asdict(run) for run in load.runs],
                        "cpu": dataclasses.asdict(load.meter.total()),
                    },
                )
            bench.report.section(
                f"Statements per job, batch enqueue, {count} replica(s) (pg_stat_statements; "
                "workers included)",
                "\n\n".join(
                    f"{name}: {load.jobs():,} jobs\n"
                    + format_statements(per_job(load.counts, load.jobs()))
                    for name, load in loads.items()
                ),
            )


@dataclasses.dataclass
class _Load:
    """One load's runs: wrk's answers, the CPU and the statements they cost."""

    meter: CpuMeter
    runs: list[HttpRun] = dataclasses.field(default_factory=list)
    counts: StatementCounts = dataclasses.field(default_factory=dict)

    @property
    def samples(self) -> list[float]:
        return [run.rps * BATCH for run in self.runs]

    @property
    def rate(self) -> float:
        return median(self.samples)

    @property
    def p99(self) -> float:
        return median([run.p99_ms for run in self.runs])

    def jobs(self) -> int:
        return sum(run.requests for run in self.runs) * BATCH

    def cpu_per_job(self) -> str:
        """CPU time per job enqueued (the workers' draining of the backlog included), by whom."""
        jobs = self.jobs()
        if not jobs:
            return "n/a"
        cpu = self.meter.total()
        paceline = cpu.paceline * cpu.seconds / jobs * 1e6
        postgres = cpu.postgres * cpu.seconds / jobs * 1e6
        return f"paceline {paceline:.0f} µs, postgres {postgres:.0f} µs"


async def _ceilings(bench: Bench) -> dict[str, tuple[float, list[float]]]:
    """pgbench's batch statement without and with the payload, in turns: (median, samples)."""
    samples: dict[str, list[float]] = {name: [] for name in LOADS}
    async with bench.cluster.database("ceiling_batch") as url:
        for index in range(bench.config.runs):
            for name in turns(list(LOADS), index):
                run = await bench.pgbench(
                    url,
                    PGBENCH_SCRIPTS / "enqueue_batch.sql",
                    clients=PGBENCH_CLIENTS,
                    seconds=bench.config.seconds,
                    defines={"window": WINDOW, "payload_bytes": LOADS[name][1]},
                )
                samples[name].append(run.tps * BATCH)
        wrong = await _slot_errors(url)
        if wrong:
            raise RuntimeError(f"the reference batch statement broke the slots: {wrong}")
    return {name: (median(values), values) for name, values in samples.items()}


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
