"""Experiments (--experiments): what a change would buy, measured without changing paceline.
Each variant is a replica with one thing changed; it takes turns, run by run, with a baseline
replica (paceline as it is) under the same load; ratio = variant / baseline.

Settings change through the environment; code changes (uvloop, asyncpg's pool reset) through a
launcher that patches before it runs paceline's CLI (see procs.PATCHES).
"""

from __future__ import annotations

import dataclasses
import importlib.util

from benchmarks.context import Bench
from benchmarks.load import HttpRun
from benchmarks.procs import Replica
from benchmarks.report import Row, median
from benchmarks.scenarios.common import drain, quiesce, reset_tables

SCENARIO = "x experiments"
CONNECTIONS = 64
QUIET = {"PACELINE_LOG_LEVEL": "WARNING"}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One change to a replica: its environment and launcher patches."""

    label: str
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    patches: tuple[str, ...] = ()


CHEAP = ("uvloop", "no-pool-reset")
POST_VARIANTS = [
    Variant("API only, no workers (PACELINE_CONCURRENCY=0)", {"PACELINE_CONCURRENCY": "0"}),
    Variant("PACELINE_LOG_LEVEL=WARNING (no per-job log lines)", QUIET),
    Variant("no pool reset round trip (asyncpg reset=)", patches=("no-pool-reset",)),
    Variant("uvloop", patches=("uvloop",)),
    Variant("PACELINE_POOL_SIZE=20", {"PACELINE_POOL_SIZE": "20"}),
    Variant("WARNING + no pool reset + uvloop", QUIET, CHEAP),
]
DRAIN_VARIANTS = [
    Variant("PACELINE_LOG_LEVEL=WARNING", QUIET),
    Variant("no pool reset round trip", patches=("no-pool-reset",)),
    Variant("PACELINE_CONCURRENCY=64 (claims of up to 64)", {"PACELINE_CONCURRENCY": "64"}),
    Variant("uvloop", patches=("uvloop",)),
    Variant("all four", {**QUIET, "PACELINE_CONCURRENCY": "64"}, CHEAP),
]


async def run(bench: Bench) -> None:
    """Every variant against a baseline replica (paceline as is), measured in turn with it."""
    async with (
        bench.cluster.database("experiment_base") as base_url,
        bench.replicas(base_url, 1, name="baseline") as baseline,
    ):
        for variant in POST_VARIANTS:
            await _post(bench, variant, base_url, baseline)
        for variant in DRAIN_VARIANTS:
            await _drain(bench, variant, base_url, baseline)


def _missing(variant: Variant) -> str | None:
    if "uvloop" in variant.patches and importlib.util.find_spec("uvloop") is None:
        return "n/a: uvloop is not installed"
    return None


async def _post(bench: Bench, variant: Variant, base_url: str, baseline: list[Replica]) -> None:
    figure = f"POST req/s, {CONNECTIONS} conn, 1 replica: {variant.label}"
    if (missing := _missing(variant)) is not None:
        bench.report.add(Row(SCENARIO, figure, None, "req/s", note=missing))
        return
    base_runs: list[HttpRun] = []
    runs: list[HttpRun] = []
    async with (
        bench.cluster.database("experiment") as url,
        bench.replicas(url, 1, name="variant", env=variant.env, patches=variant.patches) as tried,
    ):
        await reset_tables(base_url)
        meter = bench.cpu_meter(tried)
        for replicas in (baseline, tried):
            await bench.http_runs(replicas, CONNECTIONS, runs=0)
        # A variant without workers never runs its jobs: there is nothing to wait for.
        busy = [base_url] if variant.env.get("PACELINE_CONCURRENCY") == "0" else [base_url, url]
        for _ in range(bench.config.runs):
            await quiesce(*busy)
            base_runs += await bench.http_runs(baseline, CONNECTIONS, runs=1, warmup=False)
            await quiesce(*busy)
            meter.start()
            runs += await bench.http_runs(tried, CONNECTIONS, runs=1, warmup=False)
            meter.stop()
    bench.report.add(
        Row(
            SCENARIO,
            figure,
            median([run.rps for run in runs]),
            "req/s",
            ceiling=median([run.rps for run in base_runs]),
            ceiling_label="baseline, in turn",
            samples=[run.rps for run in runs],
            note=f"p99 {median([run.p99_ms for run in runs]):.1f} ms (baseline "
            f"{median([run.p99_ms for run in base_runs]):.1f} ms); CPU: {meter.total()}",
        )
    )


async def _drain(bench: Bench, variant: Variant, base_url: str, baseline: list[Replica]) -> None:
    figure = f"drain jobs/s, 1 replica: {variant.label}"
    if (missing := _missing(variant)) is not None:
        bench.report.add(Row(SCENARIO, figure, None, "jobs/s", note=missing))
        return
    base_rates: list[float] = []
    rates: list[float] = []
    note = ""
    async with (
        bench.cluster.database("experiment") as url,
        bench.replicas(url, 1, name="variant", env=variant.env, patches=variant.patches) as tried,
    ):
        for _ in range(bench.config.experiment_drain_runs):
            for target_url, replicas, found in (
                (base_url, baseline, base_rates),
                (url, tried, rates),
            ):
                await reset_tables(target_url)
                result = await drain(bench, target_url, replicas)
                found.append(result.rate)
                note = f"CPU: {result.cpu}"
    bench.report.add(
        Row(
            SCENARIO,
            figure,
            median(rates),
            "jobs/s",
            ceiling=median(base_rates),
            ceiling_label="baseline, in turn",
            samples=rates,
            note=note,
        )
    )
