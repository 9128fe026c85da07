"""What every scenario gets: the settings of the run, the server, the report, and shared steps."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks import load, procs
from benchmarks.cluster import Cluster
from benchmarks.report import Report
from paceline.db.queries import QUERIES

# The default window (5 minutes): with random object ids every job is due at once; repeats of
# an object wait a whole window, which no scenario outlasts unless it sets a shorter one.
WINDOW = 300.0
# Every job of the suite is of paceline's default kind (the one PACELINE_HANDLER runs): windows,
# FIFO and slots are per (kind, object_id), so one kind keeps the load what it always was.
KIND = "default"
# The payload of the payload runs (the issue: "a 1 KiB payload"): {"customer": <object id>,
# "note": "xx..."}, this many bytes as compact JSON, the form paceline keeps and counts. wrk
# (BENCH_PAYLOAD_BYTES) and the pgbench scripts make the same one.
PAYLOAD_BYTES = 1024
PAYLOAD_LABEL = "1 KiB payload"
# What the pgbench scripts are given unless a scenario says otherwise (each script's header says
# which it reads): no payload (a JSON null is none, as the API reads it).
PGBENCH_DEFINES: Mapping[str, object] = {
    "window": WINDOW,
    "kind": KIND,
    "kinds": "{" + KIND + "}",
    "payload": "null",
    "payload_bytes": 0,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """How much to measure; `--quick` and `--scale` pick other values."""

    runs: int = 3
    seconds: int = 5
    warmup: int = 1
    connections: tuple[int, ...] = (16, 64)
    replica_counts: tuple[int, ...] = (1, 2)
    drain_jobs: int = 100_000
    drain_cap: float = 15.0
    hot_jobs: int = 10_000
    # Jobs the memory scenario drains through one replica (the issue asks after 100k: --scale).
    memory_jobs: int = 20_000
    # Scenario 6 by default with a tenth of the 1M/5M rows; --scale for all of them.
    scale: bool = True
    scale_pending: int = 100_000
    scale_finished: int = 500_000
    # Scenario 9 (stale statistics): a burst of this many seconds over this many objects.
    stale_burst_seconds: int = 30
    stale_objects: int = 50_000
    # Scenario 11 (payload search): finished jobs with payloads in the table.
    search_jobs: int = 1_000_000
    experiments: bool = False
    experiment_drain_runs: int = 2
    profile: bool = False
    keep: bool = False
    only: frozenset[str] = frozenset()
    # Extra PACELINE_* for every replica (--concurrency, --pool-size); empty: paceline's defaults.
    replica_env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    results: Path = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass
class Bench:
    """The run in progress."""

    config: BenchConfig
    cluster: Cluster
    report: Report
    workdir: Path
    pgbench_binary: str
    # Figures later scenarios compare against (e.g. the empty-table enqueue rate).
    figures: dict[str, float] = dataclasses.field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def replicas(
        self,
        database_url: str,
        count: int,
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        patches: Sequence[str] = (),
    ) -> AsyncIterator[list[procs.Replica]]:
        """Replicas with the noop handler and the run's settings, ready to serve."""
        settings = {
            "PACELINE_HANDLER": "noop",
            "PACELINE_RATE_WINDOW": str(WINDOW),
            **self.config.replica_env,
            **(env or {}),
        }
        async with procs.replicas(
            database_url, count, settings, self.workdir / "logs", name=name, patches=patches
        ) as started:
            yield started

    async def http_runs(
        self,
        replicas: list[procs.Replica],
        connections: int,
        *,
        runs: int | None = None,
        warmup: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> list[load.HttpRun]:
        """A warm-up, then `runs` (default: the run's) measured wrk runs of POST /jobs."""
        ports = [replica.port for replica in replicas]
        if warmup:
            await load.wrk(ports, connections=connections, seconds=self.config.warmup, env=env)
        count = self.config.runs if runs is None else runs
        return [
            await load.wrk(ports, connections=connections, seconds=self.config.seconds, env=env)
            for _ in range(count)
        ]

    async def pgbench(
        self, database_url: str, script: Path, *, clients: int, **kwargs: Any
    ) -> load.PgbenchRun:
        """One pgbench run against a database of this run's server; `defines` add to (or
        override) PGBENCH_DEFINES."""
        defines = {**PGBENCH_DEFINES, **kwargs.pop("defines", {})}
        return await load.pgbench(
            self.pgbench_binary, database_url, script, clients=clients, defines=defines, **kwargs
        )

    def cpu_meter(self, replicas: list[procs.Replica]) -> procs.CpuMeter:
        """A meter over these replicas and the server."""
        return procs.CpuMeter([replica.pid for replica in replicas], self.cluster.backend_cpu)


def payload_json(customer: int, size: int = PAYLOAD_BYTES) -> str:
    """The payload runs' payload for one job, as compact JSON of exactly `size` bytes."""
    head = f'{{"customer":{customer},"note":"'
    return head + "x" * (size - len(head) - 2) + '"}'


async def reset_statements(url: str) -> None:
    """Forget pg_stat_statements' counts (server-wide) before a measured phase."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT pg_stat_statements_reset()")
    finally:
        await conn.close()


# pg_stat_statements' counters of one database: statement text -> (calls, total exec ms).
StatementCounts = dict[str, tuple[int, float]]


async def statement_counts(url: str) -> StatementCounts:
    """The counters of every statement run in this database since the last reset."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            """
            SELECT query, sum(calls)::int8 AS calls, sum(total_exec_time) AS total_exec_time
            FROM pg_stat_statements
            WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND query NOT LIKE '%pg_stat_statements%'  -- this reading itself
            GROUP BY query
            """
        )
    finally:
        await conn.close()
    return {row["query"]: (row["calls"], row["total_exec_time"]) for row in rows}


def counts_between(
    before: StatementCounts, after: StatementCounts, into: StatementCounts | None = None
) -> StatementCounts:
    """What ran between two readings, added to `into` (a running sum over several spans)."""
    total = dict(into or {})
    for query, (calls, ms) in after.items():
        was_calls, was_ms = before.get(query, (0, 0.0))
        if calls > was_calls:
            sum_calls, sum_ms = total.get(query, (0, 0.0))
            total[query] = (sum_calls + calls - was_calls, sum_ms + ms - was_ms)
    return total


def per_job(counts: StatementCounts, jobs: int, *, top: int = 12) -> list[dict[str, Any]]:
    """The statements that took the most time: calls and time per job."""
    names = {_normalized(sql): name for name, sql in QUERIES.items()}
    ranked = sorted(counts.items(), key=lambda item: item[1][1], reverse=True)[:top]
    found = []
    for query, (calls, ms) in ranked:
        text = _normalized(query)
        found.append(
            {
                "statement": names.get(text, text[:60]),
                "calls_per_job": round(calls / max(jobs, 1), 3),
                "exec_ms_per_call": round(ms / max(calls, 1), 3),
                "exec_ms_per_job": round(ms / max(jobs, 1), 4),
            }
        )
    return found


async def statements_per_job(url: str, jobs: int) -> list[dict[str, Any]]:
    """Each statement paceline ran in this database since the reset: calls and time per job."""
    return per_job(await statement_counts(url), jobs)


def _normalized(sql: str) -> str:
    """SQL without comments, final semicolon and layout, its parameters and constants all `?`:
    pg_stat_statements drops the leading comment of a statement and shows its constants as
    parameters (`+ 1` as `+ $5`, `= NULL` as `= $6`), so its text is compared with the named
    query this way (both sides alike: `IS NULL`, which it keeps, is `IS ?` in both)."""
    text = re.sub(r"--[^\n]*", " ", sql)
    text = re.sub(r"'(?:[^']|'')*'|\$\d+|\b\d+(?:\.\d+)?\b|\b(?i:null|true|false)\b", "?", text)
    return " ".join(text.split()).rstrip(";").strip()


def format_statements(found: list[dict[str, Any]]) -> str:
    """A small text table of statements_per_job()."""
    lines = [f"{'statement':<28} {'calls/job':>9} {'ms/call':>8} {'ms/job':>8}"]
    lines += [
        f"{s['statement'][:28]:<28} {s['calls_per_job']:>9.3f} "
        f"{s['exec_ms_per_call']:>8.3f} {s['exec_ms_per_job']:>8.4f}"
        for s in found
    ]
    return "\n".join(lines)


async def wait_until(url: str, query: str, *, within: float, interval: float = 0.5) -> bool:
    """Poll `query` (one boolean) until true; False if `within` seconds passed first."""
    deadline = time.monotonic() + within
    conn = await asyncpg.connect(url)
    try:
        while True:
            if await conn.fetchval(query):
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(interval)
    finally:
        await conn.close()
