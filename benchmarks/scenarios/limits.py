"""Scenario 10: limits — the plain path (kind `default`, N = 1, no `not_before`) beside N = 10,
a table of 100k per-object overrides, 10% scheduled jobs, and a 1 KiB payload on every job:
POST /jobs at 16 connections and a drain, 1 replica, each variant as a ratio to the plain one
measured in the same run. (Scenarios 1 and 2 give the payload's POST and batch rows at their
own connection counts; this is the only drain of jobs that carry one.)

Every variant gets a fresh database and replica; in each run the variants take turns on their
order, so a drift of the machine's speed weighs on each alike. The POST load draws its objects
from 200k ids (the overrides cover half of them); the drain's objects all have an override in
that variant, N = 10 makes the claim count the last window's starts of each key, 10% of
the drained jobs carry a `not_before`, and in the payload variant every drained job carries
the POST load's 1 KiB payload (the claim returns it and the worker decodes it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

import asyncpg

from benchmarks.context import PAYLOAD_BYTES, PAYLOAD_LABEL, Bench, payload_json
from benchmarks.procs import Replica
from benchmarks.report import Row, median
from benchmarks.scenarios.common import (
    DRAIN_BASE,
    WITHIN_PLAIN,
    drain,
    quiesce,
    tuned_unless_fixed,
    turns,
)
from paceline.client import PacelineClient

SCENARIO = "10 limits"
CONNECTIONS = 16
OBJECTS = 200_000
OVERRIDES = 100_000

Setup = Callable[[str, list[Replica]], Awaitable[None]]


async def _plain(url: str, replicas: list[Replica]) -> None:
    """Nothing: the default kind's limit as the replica seeded it (N = 1)."""


async def _ten_per_window(url: str, replicas: list[Replica]) -> None:
    async with PacelineClient(replicas[0].url) as paceline:
        await paceline.set_limit("default", limit=10)


async def _overrides(url: str, replicas: list[Replica]) -> None:
    """100k overrides for the POST load's objects 1..100k, and as many for the drain's."""
    conn = await asyncpg.connect(url)
    try:
        for base in (0, DRAIN_BASE):
            await conn.execute(
                "INSERT INTO key_limits (kind, object_id, per_window) "
                "SELECT 'default', $1::bigint + g, 1 FROM generate_series(1, $2::int) AS g",
                base,
                OVERRIDES,
            )
        # Written behind the API's back, so no key has a slot row yet: as after
        # `PUT /limits/default/objects/{id}` on a key with no recent job (the row is made by
        # the first enqueue, under the override it reads).
        await conn.execute("VACUUM ANALYZE key_limits")
    finally:
        await conn.close()


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    setup: Setup
    wrk_env: dict[str, str]
    scheduled_share: float = 0.0
    payload_bytes: int = 0


VARIANTS = [
    Variant("plain", _plain, {}),
    Variant("N = 10", _ten_per_window, {}),
    Variant(f"{OVERRIDES:,} overrides", _overrides, {}),
    Variant("10% not_before", _plain, {"BENCH_SCHEDULED": "0.1"}, scheduled_share=0.1),
    Variant(
        PAYLOAD_LABEL,
        _plain,
        {"BENCH_PAYLOAD_BYTES": str(PAYLOAD_BYTES)},
        payload_bytes=PAYLOAD_BYTES,
    ),
]


async def run(bench: Bench) -> None:
    """`runs` rounds of every variant; medians, each variant against the plain one."""
    posts: dict[str, list[float]] = {variant.name: [] for variant in VARIANTS}
    drains: dict[str, list[float]] = {variant.name: [] for variant in VARIANTS}
    for index in range(bench.config.runs):
        for name in turns([variant.name for variant in VARIANTS], index):
            variant = next(v for v in VARIANTS if v.name == name)
            rps, rate = await _measure(bench, variant, index)
            posts[name].append(rps)
            drains[name].append(rate)
    plain = VARIANTS[0].name
    for variant in VARIANTS:
        for figure, samples, unit in (
            (f"POST req/s, {CONNECTIONS} connections", posts, "req/s"),
            (f"drain jobs/s, {bench.config.drain_jobs:,} due jobs", drains, "jobs/s"),
        ):
            is_plain = variant.name == plain
            bench.report.add(
                Row(
                    SCENARIO,
                    f"{figure}, 1 replica, {variant.name}",
                    median(samples[variant.name]),
                    unit,
                    ceiling=None if is_plain else median(samples[plain]),
                    ceiling_label="" if is_plain else "plain, same run",
                    goal=None if is_plain else WITHIN_PLAIN,
                    samples=samples[variant.name],
                )
            )


async def _measure(bench: Bench, variant: Variant, index: int) -> tuple[float, float]:
    slug = variant.name.replace(" ", "_").replace("%", "").replace(",", "").replace("=", "")
    env = {"BENCH_OBJECTS": str(OBJECTS), **variant.wrk_env}
    async with (
        bench.cluster.database(f"limits_{slug}_{index}") as url,
        bench.replicas(
            url, 1, name=f"limits-{slug}-{index}", env=tuned_unless_fixed(bench)
        ) as replicas,
    ):
        await variant.setup(url, replicas)
        runs = await bench.http_runs(replicas, CONNECTIONS, runs=1, env=env)
        await quiesce(url)
        if variant.scheduled_share:
            await _schedule_share_of_drain(url, variant.scheduled_share)
        if variant.payload_bytes:
            await _give_drain_payloads(url, variant.payload_bytes)
        result = await drain(bench, url, replicas)
    return median([run.rps for run in runs]), result.rate


async def _schedule_share_of_drain(url: str, share: float) -> None:
    """The next drain's jobs are preloaded plain; a trigger gives `share` of them a due
    `not_before`, as a client that scheduled them for now would."""
    await _on_each_preloaded_job(
        url, "bench_not_before", f"IF random() < {share} THEN NEW.not_before := NEW.run_at; END IF;"
    )


async def _give_drain_payloads(url: str, size: int) -> None:
    """The next drain's jobs are preloaded without a payload; a trigger gives each the POST
    load's payload for its object (`payload_json`: exactly `size` bytes), as if a client had
    sent it."""
    head, note = '{"customer":', ',"note":"'
    assert payload_json(7, size) == head + "7" + note + "x" * (size - len(head + note) - 3) + '"}'
    await _on_each_preloaded_job(
        url,
        "bench_payload",
        f"""NEW.payload := (
            '{head}' || NEW.object_id || '{note}'
            || repeat('x', {size - len(head + note) - 2} - length(NEW.object_id::text))
            || '"}}'
        )::jsonb;""",
    )


async def _on_each_preloaded_job(url: str, name: str, body: str) -> None:
    """A trigger `name` that runs the PL/pgSQL `body` on each job row before it is inserted
    (the drain preloads its jobs with a plain INSERT; a variant changes them this way)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            f"""
            CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                {body}
                RETURN NEW;
            END $$;
            CREATE TRIGGER {name} BEFORE INSERT ON jobs
            FOR EACH ROW EXECUTE FUNCTION {name}();
            """
        )
    finally:
        await conn.close()
