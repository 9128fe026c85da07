"""Scenario 1: POST /jobs throughput and p50/p99 at 16 and 64 connections, workers running,
random object ids, 1 and 2 replicas — against pgbench running the enqueue as one statement;
and the same load with a 1 KiB JSON payload on every job, as a ratio to the payload-less one.

The machine is shared, so its speed drifts within minutes: every pair of service runs (without
and with the payload, taking turns on which goes first) follows a pgbench run of the ceiling,
each starting once the workers have run what the run before left, and the reference scripts
take turns with the one-statement enqueue, so each ratio compares runs made under the same
conditions.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import asyncpg

from benchmarks.context import (
    PAYLOAD_BYTES,
    PAYLOAD_LABEL,
    WINDOW,
    Bench,
    StatementCounts,
    counts_between,
    format_statements,
    payload_json,
    per_job,
    statement_counts,
)
from benchmarks.load import PGBENCH_SCRIPTS, HttpRun
from benchmarks.procs import CpuMeter, Replica
from benchmarks.report import Goal, Row, median
from benchmarks.scenarios.common import (
    WITHIN_PLAIN,
    PostResult,
    count_jobs,
    profile_post,
    quiesce,
    turns,
)
from paceline.db.queries import QUERIES

SCENARIO = "1 POST /jobs"
CEILING = "1 ceilings"
ONE_STATEMENT = PGBENCH_SCRIPTS / "enqueue_one.sql"
# The performance issue's goals: 64 connections at 0.55 of pgbench's one-statement enqueue,
# and a p99 of 10 ms at 16 connections on one replica while its workers drain.
RPS_64 = Goal(">=", 0.55, on="ratio")
P99_16 = Goal("<=", 10, unit="ms")
SHARE_16 = Goal(">=", 0.20, on="ratio")
# Scripts compared with the one-statement enqueue at this many clients.
REFERENCE_CLIENTS = 16
# The two loads of every measurement: wrk's settings for each.
PLAIN = "no payload"
WITH_PAYLOAD = PAYLOAD_LABEL
LOADS: dict[str, dict[str, str]] = {
    PLAIN: {},
    WITH_PAYLOAD: {"BENCH_PAYLOAD_BYTES": str(PAYLOAD_BYTES)},
}


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
                    results, ceiling = await _measure(
                        bench, url, ceiling_url, replicas, connections
                    )
                    result = results[PLAIN]
                    _add_rows(bench, count, connections, result, ceiling)
                    _add_payload_row(bench, count, connections, results)
                    bench.figures[f"post.{connections}.{count}"] = result.rps
                    label = f"{count} replica(s), {connections} connections"
                    for load, measured in results.items():
                        table = format_statements(measured.statements)
                        statements.append(f"{label}, {load}: {measured.jobs} jobs\n{table}")
                if bench.config.profile and count == 1:
                    connections = max(bench.config.connections)
                    for load, env in LOADS.items():
                        name = "enqueue" if not env else "enqueue-payload"
                        text = await profile_post(bench, replicas[0], connections, name, env=env)
                        title = (
                            f"Profile: POST /jobs, {load}, 1 replica, {connections} connections "
                            "(py-spy)"
                        )
                        bench.report.section(title, text)
    bench.report.section(
        "Statements per POST /jobs (pg_stat_statements; workers included; each load's runs "
        "until the workers had run their jobs)",
        "\n\n".join(statements),
    )


@dataclasses.dataclass
class _Load:
    """One load's runs so far, what they cost and which statements they ran."""

    meter: CpuMeter
    runs: list[HttpRun] = dataclasses.field(default_factory=list)
    counts: StatementCounts = dataclasses.field(default_factory=dict)
    jobs: int = 0

    def result(self) -> PostResult:
        return PostResult(self.runs, self.meter.total(), self.jobs, per_job(self.counts, self.jobs))


async def _measure(
    bench: Bench, url: str, ceiling_url: str, replicas: list[Replica], connections: int
) -> tuple[dict[str, PostResult], float]:
    """Warm-ups, then `runs` rounds: the pgbench ceiling, then the service without and with the
    payload (in turns, which first); each load's medians, and the ceiling's."""
    loads = {name: _Load(bench.cpu_meter(replicas)) for name in LOADS}
    for env in LOADS.values():
        await bench.http_runs(replicas, connections, runs=0, env=env)
    ceilings: list[float] = []
    for index in range(bench.config.runs):
        await quiesce(url)
        ceilings.append(await _tps(bench, ceiling_url, ONE_STATEMENT, connections))
        for name in turns(list(LOADS), index):
            load = loads[name]
            await quiesce(url)
            counts, jobs = await statement_counts(url), await count_jobs(url)
            load.meter.start()
            load.runs.extend(
                await bench.http_runs(replicas, connections, runs=1, warmup=False, env=LOADS[name])
            )
            load.meter.stop()
            # The workers' share of the load: what they ran of its jobs counts with it.
            await quiesce(url)
            load.counts = counts_between(counts, await statement_counts(url), load.counts)
            load.jobs += await count_jobs(url) - jobs
    return {name: load.result() for name, load in loads.items()}, median(ceilings)


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
            goal=P99_16 if connections == 16 and count == 1 else None,
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


def _add_payload_row(
    bench: Bench, count: int, connections: int, results: dict[str, PostResult]
) -> None:
    """The payload's row: its req/s as a ratio to the payload-less load's, measured in turns."""
    plain, loaded = results[PLAIN], results[WITH_PAYLOAD]
    replicas = f"{count} replica{'s' if count > 1 else ''}"
    errors = f"; {loaded.errors} failed requests" if loaded.errors else ""
    bench.report.add(
        Row(
            SCENARIO,
            f"req/s, {connections} conn, {replicas}, {WITH_PAYLOAD}",
            loaded.rps,
            "req/s",
            ceiling=plain.rps,
            ceiling_label=PLAIN,
            goal=WITHIN_PLAIN,
            note=f"p50 {loaded.p50:.1f} / p99 {loaded.p99:.1f} ms ({PLAIN}: {plain.p50:.1f} / "
            f"{plain.p99:.1f}); CPU per request: {cpu_per_request(loaded)} ({PLAIN}: "
            f"{cpu_per_request(plain)}); CPU: {loaded.cpu}{errors}",
            samples=[run.rps for run in loaded.runs],
        )
    )
    bench.report.detail(
        f"enqueue.{count}r.{connections}c.payload",
        {
            "payload_bytes": PAYLOAD_BYTES,
            "runs": [dataclasses.asdict(run) for run in loaded.runs],
            "cpu": dataclasses.asdict(loaded.cpu),
            "statements": loaded.statements,
        },
    )


def cpu_per_request(result: PostResult) -> str:
    """CPU time per request over the metered runs (workers' share included), by whom."""
    requests = sum(run.requests for run in result.runs)
    if not requests:
        return "n/a"
    cpu = result.cpu
    paceline = cpu.paceline * cpu.seconds / requests * 1e6
    postgres = cpu.postgres * cpu.seconds / requests * 1e6
    return f"paceline {paceline:.0f} µs, postgres {postgres:.0f} µs"


async def _references(bench: Bench, url: str) -> None:
    """The one-statement enqueue and what to compare it with, taking turns run by run:
    the same with the 1 KiB payload (sent as a parameter, returned with the row), two
    statements, a bare INSERT, paceline's own enqueue SQL, and the one statement followed by a
    NOTIFY per job (what DueNotifier's one NOTIFY per burst avoids)."""
    payload: dict[str, object] = {"payload": payload_json(42)}
    scripts: dict[str, tuple[Path, dict[str, object]]] = {
        "enqueue, one statement": (ONE_STATEMENT, {}),
        f"enqueue, one statement, {WITH_PAYLOAD}": (ONE_STATEMENT, payload),
        "enqueue, two statements": (PGBENCH_SCRIPTS / "enqueue_two.sql", {}),
        "bare INSERT": (PGBENCH_SCRIPTS / "insert_bare.sql", {}),
        "enqueue, then NOTIFY in its own tx": (_then_notify_script(bench), {}),
    }
    live = await _live_enqueue_script(bench, url)
    if isinstance(live, Path):
        scripts["paceline's enqueue SQL"] = (live, {})
    else:
        bench.report.add(Row(CEILING, "pgbench paceline's enqueue SQL", None, "", note=live))
    samples: dict[str, list[float]] = {label: [] for label in scripts}
    for _ in range(bench.config.runs):
        for label, (script, defines) in scripts.items():
            samples[label].append(
                await _tps(bench, url, script, REFERENCE_CLIENTS, defines=defines)
            )
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


async def _tps(
    bench: Bench,
    url: str,
    script: Path,
    clients: int,
    *,
    defines: dict[str, object] | None = None,
) -> float:
    result = await bench.pgbench(
        url,
        script,
        clients=clients,
        seconds=bench.config.seconds,
        defines={"window": WINDOW, **(defines or {})},
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
    # Since the limits (0009) the window is the database's: kind, object_id, payload, absorbed.
    ("text", "int8", "jsonb", "int4"): (":kind", ":object_id", "NULLIF(:payload, 'null')", "NULL"),
    # Since 0015 the statement also places a job with not_before: NULL, as POST sends none.
    ("text", "int8", "jsonb", "int4", "timestamptz"): (
        ":kind",
        ":object_id",
        "NULLIF(:payload, 'null')",
        "NULL",
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
