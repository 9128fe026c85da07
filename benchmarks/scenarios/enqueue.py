"""Scenario 1: POST /jobs throughput and p50/p99 at 16 and 64 connections, workers running,
random object ids, 1 and 2 replicas — against pgbench running the enqueue as one statement.

The machine is shared, so its speed drifts within minutes: every service run is paired with a
pgbench run of the ceiling right before it (once the workers have run what the previous run
left), and the reference scripts take turns with the one-statement enqueue, so each ratio
compares runs made under the same conditions.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import asyncpg

from benchmarks.context import (
    WINDOW,
    Bench,
    format_statements,
    reset_statements,
    statements_per_job,
)
from benchmarks.load import PGBENCH_SCRIPTS, HttpRun
from benchmarks.procs import Replica
from benchmarks.report import Goal, Row, median
from benchmarks.scenarios.common import PostResult, count_jobs, profile_post, quiesce
from paceline.db.queries import QUERIES

SCENARIO = "1 POST /jobs"
CEILING = "1 ceilings"
ONE_STATEMENT = PGBENCH_SCRIPTS / "enqueue_one.sql"
RPS_64 = Goal(">=", 3500, unit="req/s")
P99_16 = Goal("<=", 20, unit="ms")
SHARE_16 = Goal(">=", 0.20, on="ratio")
# Scripts compared with the one-statement enqueue at this many clients.
REFERENCE_CLIENTS = 16


async def run(bench: Bench) -> None:
    """References first (the database alone), then the service at each replica count."""
    async with bench.cluster.database("ceiling_enqueue") as ceiling_url:
        await _references(bench, ceiling_url)
        statements = []
        for count in bench.config.replica_counts:
            async with (
                bench.cluster.database(f"enqueue_{count}") as url,
                bench.replicas(url, count, name=f"enqueue-{count}") as replicas,
            ):
                for connections in bench.config.connections:
                    result, ceiling = await _measure(bench, url, ceiling_url, replicas, connections)
                    _add_rows(bench, count, connections, result, ceiling)
                    bench.figures[f"post.{connections}.{count}"] = result.rps
                    table = format_statements(result.statements)
                    label = f"{count} replica(s), {connections} connections"
                    statements.append(f"{label}: {result.jobs} jobs\n{table}")
                if bench.config.profile and count == 1:
                    connections = max(bench.config.connections)
                    text = await profile_post(bench, replicas[0], connections, "enqueue")
                    title = f"Profile: POST /jobs, 1 replica, {connections} connections (py-spy)"
                    bench.report.section(title, text)
    bench.report.section(
        "Statements per POST /jobs (pg_stat_statements; workers included)", "\n\n".join(statements)
    )


async def _measure(
    bench: Bench, url: str, ceiling_url: str, replicas: list[Replica], connections: int
) -> tuple[PostResult, float]:
    """Warm-up, then `runs` pairs: the pgbench ceiling, then the service; medians."""
    await bench.http_runs(replicas, connections, runs=0)
    await reset_statements(url)
    before = await count_jobs(url)
    meter = bench.cpu_meter(replicas)
    runs: list[HttpRun] = []
    ceilings: list[float] = []
    for _ in range(bench.config.runs):
        await quiesce(url)
        ceilings.append(await _tps(bench, ceiling_url, ONE_STATEMENT, connections))
        meter.start()
        runs.extend(await bench.http_runs(replicas, connections, runs=1, warmup=False))
        meter.stop()
    cpu = meter.total()
    jobs = await count_jobs(url) - before
    result = PostResult(runs, cpu, jobs, await statements_per_job(url, jobs))
    return result, median(ceilings)


def _add_rows(
    bench: Bench, count: int, connections: int, result: PostResult, ceiling: float
) -> None:
    replicas = f"{count} replica{'s' if count > 1 else ''}"
    goal = RPS_64 if connections == 64 else SHARE_16 if connections == 16 else None
    errors = f"; {result.errors} failed requests" if result.errors else ""
    bench.report.add(
        Row(
            SCENARIO,
            f"req/s, {connections} conn, {replicas}",
            result.rps,
            "req/s",
            ceiling=ceiling,
            ceiling_label=f"pgbench {connections}c",
            goal=goal,
            note=f"CPU: {result.cpu}{errors}",
            samples=[run.rps for run in result.runs],
        )
    )
    p90 = median([run.p90_ms for run in result.runs])
    bench.report.add(
        Row(
            SCENARIO,
            f"p99 latency, {connections} conn, {replicas}",
            result.p99,
            "ms",
            goal=P99_16 if connections == 16 else None,
            note=f"p50 {result.p50:.1f} ms, p90 {p90:.1f} ms",
            samples=[run.p99_ms for run in result.runs],
        )
    )
    bench.report.detail(
        f"enqueue.{count}r.{connections}c",
        {
            "runs": [dataclasses.asdict(run) for run in result.runs],
            "cpu": dataclasses.asdict(result.cpu),
            "statements": result.statements,
            "ceiling_tps": ceiling,
        },
    )


async def _references(bench: Bench, url: str) -> None:
    """The one-statement enqueue and what to compare it with, taking turns run by run:
    two statements, a bare INSERT, paceline's own enqueue SQL, and the one statement followed
    by a NOTIFY per job (what DueNotifier's one NOTIFY per burst avoids)."""
    scripts: dict[str, Path] = {
        "enqueue, one statement": ONE_STATEMENT,
        "enqueue, two statements": PGBENCH_SCRIPTS / "enqueue_two.sql",
        "bare INSERT": PGBENCH_SCRIPTS / "insert_bare.sql",
        "enqueue, then NOTIFY in its own tx": _then_notify_script(bench),
    }
    live = await _live_enqueue_script(bench, url)
    if isinstance(live, Path):
        scripts["paceline's enqueue SQL"] = live
    else:
        bench.report.add(Row(CEILING, "pgbench paceline's enqueue SQL", None, "", note=live))
    samples: dict[str, list[float]] = {label: [] for label in scripts}
    for _ in range(bench.config.runs):
        for label, script in scripts.items():
            samples[label].append(await _tps(bench, url, script, REFERENCE_CLIENTS))
    base = median(samples["enqueue, one statement"])
    for label, values in samples.items():
        is_base = label == "enqueue, one statement"
        bench.report.add(
            Row(
                CEILING,
                f"pgbench {label}, {REFERENCE_CLIENTS} clients",
                median(values),
                "tx/s",
                ceiling=None if is_base else base,
                ceiling_label="one statement",
                samples=values,
            )
        )


async def _tps(bench: Bench, url: str, script: Path, clients: int) -> float:
    result = await bench.pgbench(
        url, script, clients=clients, seconds=bench.config.seconds, defines={"window": WINDOW}
    )
    return result.tps


def _then_notify_script(bench: Bench) -> Path:
    """enqueue_one.sql, then a NOTIFY as a transaction of its own (pgbench autocommits each
    statement of a script without BEGIN). A transaction that notifies holds the server-wide
    notify-queue lock through its commit, so such commits run one at a time."""
    script = bench.workdir / "enqueue_then_notify.sql"
    script.write_text(
        ONE_STATEMENT.read_text().rstrip() + "\nSELECT pg_notify('paceline_jobs', '0');\n"
    )
    return script


# The signatures of paceline's `enqueue` the benchmark knows, and the pgbench text of each
# parameter (the variables PGBENCH_DEFINES gives): the job without a payload, as POST sends it.
_ENQUEUE_PARAMETERS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("int8", "float8"): (":object_id", ":window"),
    # kind, object_id, W, payload (JSON text; a JSON null is none), absorbed (NULL: not append)
    ("text", "int8", "float8", "jsonb", "int4"): (
        ":kind",
        ":object_id",
        ":window",
        "NULLIF(:payload, 'null')",
        "NULL",
    ),
}


async def _live_enqueue_script(bench: Bench, url: str) -> Path | str:
    """paceline's `enqueue` as a pgbench script, if its parameters are ones the benchmark knows."""
    sql = QUERIES.get("enqueue")
    if sql is None:
        return "n/a: paceline has no query named enqueue"
    conn = await asyncpg.connect(url)
    try:
        types = tuple(t.name for t in (await conn.prepare(sql)).get_parameters())
    finally:
        await conn.close()
    values = _ENQUEUE_PARAMETERS.get(types)
    if values is None:
        return f"n/a: enqueue now takes ({', '.join(types)}), unknown to the benchmark"
    body = re.sub(r"\$(\d+)\b", lambda found: values[int(found.group(1)) - 1], sql)
    script = bench.workdir / "paceline_enqueue.sql"
    script.write_text(
        "-- Generated from paceline.db.queries['enqueue'].\n"
        "\\set object_id random(1, 1000000000000)\n" + body.rstrip().rstrip(";") + ";\n"
    )
    return script
