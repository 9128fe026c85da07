"""GET /metrics: parseable by Prometheus's own parser, counters that move as jobs run, gauges of
the whole queue, and the limit auditor's violation counters."""

from __future__ import annotations

import asyncio
import math
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from paceline.db import jobs as jobs_store
from paceline.db.queries import QUERIES
from paceline.observability.audit import Audit, LimitAuditor
from paceline.queue.limits import LimitFields, pause, set_limit
from paceline.web.keys import METRICS, POOL
from tests.conftest import MakeClient
from tests.queue_data import insert_attempt, insert_job, insert_worker
from tests.support import claim_due, eventually, wait_until_finished

Client = TestClient[Any, Any]

COUNTERS = ("enqueued", "started", "succeeded", "failed", "retried")


async def scrape(client: Client) -> dict[str, float]:
    """Every sample, keyed `name` or `name{label="value",...}`."""
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def counters(samples: dict[str, float], kind: str = "default") -> dict[str, float]:
    return {name: samples[f'paceline_jobs_{name}_total{{kind="{kind}"}}'] for name in COUNTERS}


def auditor_of(client: Client, since: datetime) -> LimitAuditor:
    """An auditor like the app's own (its counters, its pool), but looking from `since` and now."""
    return LimitAuditor(
        client.app[POOL],
        on_violation=client.app[METRICS].violation,
        margin=0,
        since=since,
    )


async def test_counters_and_histograms_move_as_jobs_run(
    make_client: MakeClient, database_url: str
) -> None:
    client = await make_client(
        concurrency=4,
        handler="tests.handlers:by_object",
        rate_window=0.05,
        retry_backoff=0.01,
        max_attempts=3,
    )
    before = await scrape(client)
    assert counters(before) == dict.fromkeys(COUNTERS, 0.0)
    assert before["paceline_window_violations_total"] == 0

    # Object 1 twice (succeed), object 2 (fails for good), object 3 (fails once, then succeeds).
    for object_id in (1, 1, 2, 3):
        assert (await client.post("/jobs", json={"object_id": object_id})).status == 201
    await wait_until_finished(database_url, 4)

    async def all_counted() -> dict[str, float] | None:
        after = await scrape(client)
        return after if counters(after)["succeeded"] == 3 else None

    after = await eventually(all_counted, timeout=10)
    assert counters(after) == {
        "enqueued": 4,
        "started": 5,  # object 3 started twice
        "succeeded": 3,
        "failed": 1,
        "retried": 1,
    }
    # Every start is timed against its slot; every job that ended, for its processing.
    assert after['paceline_job_lateness_seconds_count{kind="default"}'] == 5
    assert after['paceline_job_lateness_seconds_bucket{kind="default",le="+Inf"}'] == 5
    assert after['paceline_job_processing_seconds_count{kind="default"}'] == 4
    assert after['paceline_job_processing_seconds_sum{kind="default"}'] >= 0
    # Every claim statement is timed, those that found nothing too (issue 20).
    assert after["paceline_claim_seconds_count"] >= 4
    assert after["paceline_claim_seconds_sum"] > 0
    # The queue is empty again, and the database was readable.
    assert after['paceline_queue_depth{status="PENDING"}'] == 0
    assert after['paceline_queue_depth{status="PROCESSING"}'] == 0
    assert after["paceline_database_up"] == 1
    assert after["paceline_window_violations_total"] == 0


async def test_job_metrics_are_counted_per_kind(make_client: MakeClient, database_url: str) -> None:
    """A dashboard can tell one kind's failures and lateness from another's."""
    client = await make_client(
        concurrency=4,
        handler="tests.handlers:echo",
        handlers="notify=tests.handlers:shout",
        rate_window=0.05,
        max_attempts=1,
    )
    before = await scrape(client)
    # This replica's kinds are there from the first scrape, at 0.
    assert counters(before, "default") == counters(before, "notify") == dict.fromkeys(COUNTERS, 0)

    jobs: list[Any] = [
        {"object_id": 1},
        {"object_id": 1, "kind": "notify", "payload": {"text": "hi"}},
        {"object_id": 2, "kind": "notify"},  # no text: shout fails
    ]
    assert (await client.post("/jobs", json=jobs[0])).status == 201
    # A batch is counted per kind too.
    assert (await client.post("/jobs", json=jobs[1:])).status == 201
    await wait_until_finished(database_url, 3)

    async def all_counted() -> dict[str, float] | None:
        after = await scrape(client)
        return after if counters(after, "notify")["failed"] == 1 else None

    after = await eventually(all_counted, timeout=10)
    assert counters(after, "default") == {
        "enqueued": 1, "started": 1, "succeeded": 1, "failed": 0, "retried": 0,
    }  # fmt: skip
    assert counters(after, "notify") == {
        "enqueued": 2, "started": 2, "succeeded": 1, "failed": 1, "retried": 0,
    }  # fmt: skip
    assert after['paceline_job_lateness_seconds_count{kind="notify"}'] == 2
    assert after['paceline_job_processing_seconds_count{kind="default"}'] == 1
    assert after['paceline_job_processing_seconds_count{kind="notify"}'] == 2


async def test_gauges_describe_the_whole_queue(client: Client, db: asyncpg.Connection) -> None:
    for n in range(3):
        await insert_job(db, n, run_at=-10 + n)  # due: the workers are behind
    await insert_job(db, 9, run_at=300)  # waits for its window
    await insert_job(db, 8, "PROCESSING", run_at=-1, started=-1, attempts=1)
    await insert_worker(db, "web-1", 1)
    await insert_worker(db, "web-2", 2, heartbeat=-120)

    samples = await scrape(client)

    assert samples['paceline_queue_depth{status="PENDING"}'] == 4
    assert samples['paceline_queue_depth{status="PROCESSING"}'] == 1
    assert samples["paceline_jobs_due"] == 3
    assert 9 < samples["paceline_oldest_due_seconds"] < 60
    assert samples['paceline_replicas{state="alive"}'] == 1
    assert samples['paceline_replicas{state="dead"}'] == 1


async def test_gauges_show_each_kinds_limit_its_overrides_and_paused_keys(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    client = await make_client(
        concurrency=0, rate_window=60, handlers="notify=tests.handlers:shout"
    )
    pool = client.app[POOL]
    await set_limit(pool, "notify", None, LimitFields(10, 5, 2))
    await pause(pool, "notify", None)
    for object_id in (1, 2, 3):
        await set_limit(pool, "default", object_id, LimitFields(3600))
    await pause(pool, "default", 3)

    samples = await scrape(client)

    limits = {
        kind: [
            samples[f'paceline_{name}{{kind="{kind}"}}']
            for name in (
                "limit_window_seconds",
                "limit_per_window",
                "limit_max_running",
                "limit_paused",
                "limit_overrides",
                "paused_keys",
            )
        ]
        for kind in ("default", "notify")
    }
    assert limits == {"default": [60, 1, 1, 0, 3, 1], "notify": [10, 5, 2, 1, 0, 0]}


async def test_metrics_answer_without_the_database(make_client: MakeClient) -> None:
    """A scrape during an outage still returns this process's counters, and says so."""
    client = await make_client(
        concurrency=0, database_url="postgresql://nobody@127.0.0.1:9/paceline", pool_size=2
    )
    samples = await scrape(client)
    assert samples["paceline_database_up"] == 0
    assert math.isnan(samples["paceline_jobs_due"])
    assert samples['paceline_jobs_enqueued_total{kind="default"}'] == 0


async def test_the_auditor_counts_starts_less_than_a_window_apart(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    client = await make_client(concurrency=0, rate_window=60)
    auditor = auditor_of(client, since=await db.fetchval("SELECT now() - interval '1 hour'"))
    # Object 5: two starts a full window apart, then one only 10 s later. Object 6: fine.
    for object_id, starts in ((5, (-300, -240, -230)), (6, (-200, -100))):
        for start in starts:
            job_id = await insert_job(db, object_id, "SUCCESS", run_at=start, started=start)
            await insert_attempt(db, job_id, 1, started=start, finished=start + 1)

    audit = await auditor.check()

    [violation] = audit.window
    assert violation.object_id == 5
    assert 9 < violation.gap < 11
    assert (violation.window_seconds, violation.per_window) == (60, 1)
    assert audit.running == []
    assert (await scrape(client))["paceline_window_violations_total"] == 1
    # A later look does not count the same pair again.
    assert await auditor.check() == Audit([], [])
    assert (await scrape(client))["paceline_window_violations_total"] == 1


async def test_the_auditor_finds_nothing_in_real_runs(
    make_client: MakeClient, db: asyncpg.Connection, database_url: str
) -> None:
    """The workers' own record of starts, audited: I1 holds across retries too."""
    window = 0.1
    client = await make_client(
        concurrency=4,
        handler="tests.handlers:by_object",
        rate_window=window,
        retry_backoff=0.01,
    )
    auditor = auditor_of(client, since=await db.fetchval("SELECT now() - interval '1 minute'"))
    for object_id in (1, 3, 1, 3, 1):
        assert (await client.post("/jobs", json={"object_id": object_id})).status == 201
    await wait_until_finished(database_url, 5)
    starts = await db.fetchval("SELECT count(*) FROM job_attempts")
    assert starts == 7  # each job of object 3 ran twice

    assert await auditor.check() == Audit([], [])
    samples = await scrape(client)
    assert samples["paceline_window_violations_total"] == 0
    assert samples["paceline_running_violations_total"] == 0


async def insert_starts(
    db: asyncpg.Connection, object_id: int, starts: list[tuple[float, float | None]]
) -> list[int]:
    """One finished (or, finish None, running) attempt per (start, finish); the job ids."""
    job_ids = []
    for start, finish in starts:
        job_id = await insert_job(db, object_id, "SUCCESS", run_at=start, started=start)
        await insert_attempt(db, job_id, 1, started=start, finished=finish)
        job_ids.append(job_id)
    return job_ids


async def test_the_auditor_judges_each_key_by_its_own_limit(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    """N starts per window and M running, from the key's limit in the database: three starts
    in one window obey N = 3, a fourth within the window does not; a start while M attempts
    of the key run breaks max_running."""
    client = await make_client(concurrency=0, rate_window=60)
    auditor = auditor_of(client, since=await db.fetchval("SELECT now() - interval '1 hour'"))
    for object_id in (11, 12, 13):
        await set_limit(client.app[POOL], "default", object_id, LimitFields(60, 3, 2))
    # Object 11 obeys: three starts in 20 s, then each next one a window after the third
    # before it; never more than one running.
    await insert_starts(
        db, 11, [(-300, -299), (-290, -289), (-280, -279), (-240, -239), (-230, -229), (-220, -219)]
    )
    # Object 12: a fourth start 50 s after the first of three.
    first, *_, fourth = await insert_starts(
        db, 12, [(-300, -299), (-290, -289), (-280, -279), (-250, -249)]
    )
    # Object 13: two overlap (allowed: M = 2), then a third starts while both run.
    still_running, long_one, third = await insert_starts(
        db, 13, [(-100, None), (-90, -10), (-80, -70)]
    )

    audit = await auditor.check()

    [window] = audit.window
    assert (window.object_id, window.job_id, window.previous_job_id) == (12, fourth, first)
    assert 49 < window.gap < 51
    assert (window.window_seconds, window.per_window) == (60, 3)
    [running] = audit.running
    assert (running.object_id, running.job_id, running.max_running) == (13, third, 2)
    assert running.running_job_ids == [still_running, long_one]
    samples = await scrape(client)
    assert samples["paceline_window_violations_total"] == 1
    assert samples["paceline_running_violations_total"] == 1


@pytest.mark.one_server(
    "a cluster's claim is one call per shard, each its own transaction: none is opened before it"
)
async def test_a_start_claimed_after_a_finish_is_recorded_after_it(
    make_client: MakeClient, db: asyncpg.Connection, database_url: str
) -> None:
    """A worker opens its claim's transaction a round trip before the claim statement (BEGIN
    with the plan settings, then the claim). A job of the key that finishes in between frees
    the key (max_running 1) for that claim: the new start must be recorded after the finish,
    or the history shows two attempts running at once and the auditor counts a violation that
    never happened (found by the chaos soak, `make soak`)."""
    client = await make_client(concurrency=0)
    pool = client.app[POOL]
    await set_limit(pool, "default", None, LimitFields(0.001, 1, 1))
    auditor = auditor_of(client, since=await db.fetchval("SELECT now() - interval '1 minute'"))
    worker = uuid.uuid4()
    first = await jobs_store.enqueue(db, kind="default", object_id=7)
    second = await jobs_store.enqueue(db, kind="default", object_id=7)
    assert first is not None
    assert second is not None
    (running,) = await db.fetch(QUERIES["claim_due_jobs"], 8, 30.0, worker, ["default"])
    assert running["id"] == first["id"]
    await asyncio.sleep(0.01)  # the second job's slot (W = 1 ms) has come

    claimer = await asyncpg.connect(database_url)
    try:
        await claimer.execute("BEGIN")  # as the worker's claim does (db.plans.fetch_planned)
        await asyncio.sleep(0.05)
        finished = await db.fetchval(
            QUERIES["finish_jobs"], [first["id"]], [1], ["SUCCESS"], [0.1], [None], [None]
        )
        assert finished == first["id"]
        started = await claimer.fetch(QUERIES["claim_due_jobs"], 8, 30.0, worker, ["default"])
        await claimer.execute("COMMIT")
    finally:
        await claimer.close()

    assert [row["id"] for row in started] == [second["id"]]
    before, after = await db.fetch(
        "SELECT job_id, started_at, finished_at FROM job_attempts ORDER BY job_id"
    )
    assert after["started_at"] >= before["finished_at"], (dict(before), dict(after))
    assert await auditor.check() == Audit([], [])
    assert (await scrape(client))["paceline_running_violations_total"] == 0


async def test_the_auditor_judges_a_start_by_the_limit_it_was_made_under(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    """Two starts 0.2 s apart under N = 2 per second are lawful; the limit is then tightened
    to N = 1 before the auditor looks. Judged by the limit in force when it looked, they
    counted as a violation (found by the chaos soak's limit changes); judged by the limit
    they were started under, recorded with them, they do not."""
    client = await make_client(concurrency=0)
    pool = client.app[POOL]
    await set_limit(pool, "default", None, LimitFields(1.0, 2, 2))
    auditor = auditor_of(client, since=await db.fetchval("SELECT now() - interval '1 minute'"))
    worker = uuid.uuid4()
    for _ in range(2):
        assert (await client.post("/jobs", json={"object_id": 9})).status == 201
    started = []
    for _ in range(2):
        await asyncio.sleep(0.2)
        started += await claim_due(db, worker, limit=8, lease=30.0)
    assert len(started) == 2
    recorded = await db.fetch(
        "SELECT window_seconds, per_window, max_running FROM job_attempts ORDER BY job_id"
    )
    assert [tuple(row) for row in recorded] == [(1.0, 2, 2), (1.0, 2, 2)]

    await set_limit(pool, "default", None, LimitFields(1.0, 1, 1))

    assert await auditor.check() == Audit([], [])
    samples = await scrape(client)
    assert samples["paceline_window_violations_total"] == 0
    assert samples["paceline_running_violations_total"] == 0
