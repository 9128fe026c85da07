"""Backlog policies, idempotency keys, slot compaction, re-planning and outage catch-up."""

from __future__ import annotations

import asyncio
import itertools
import math
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from paceline.db import jobs as jobs_store
from paceline.queue import limits
from paceline.web.keys import POOL
from tests.conftest import MakeClient
from tests.support import ROOT, ServeProcess, eventually, parse_time, wait_until_finished


async def burst(
    urls: list[str], body: dict[str, Any], count: int = 50, headers: dict[str, str] | None = None
) -> list[tuple[int, dict[str, Any], Any]]:
    """`count` POST /jobs at once, each on its own connection, spread over `urls`."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(n: int) -> tuple[int, dict[str, Any], Any]:
            async with session.post(
                f"{urls[n % len(urls)]}/jobs", json=body, headers=headers
            ) as response:
                return response.status, await response.json(content_type=None), response.headers

        return await asyncio.gather(*(one(n) for n in range(count)))


@pytest.fixture
async def two_replicas(
    database_url: str, tmp_path: Path
) -> Any:  # an async generator of two ServeProcess
    env = {"DATABASE_URL": database_url, "PACELINE_CONCURRENCY": "0", "PACELINE_RATE_WINDOW": "30"}
    replicas = [ServeProcess(env, log_path=tmp_path / f"replica{n}.log") for n in (1, 2)]
    try:
        await asyncio.gather(*(replica.wait_ready() for replica in replicas))
        yield replicas
    finally:
        for replica in replicas:
            assert replica.terminate() == 0, replica.log()


async def pending_count(db: asyncpg.Connection, object_id: int) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM jobs WHERE object_id = $1 AND status = 'PENDING'", object_id
    )
    return count


@pytest.mark.processes
async def test_coalesce_creates_one_job_under_a_burst_across_replicas(
    two_replicas: list[ServeProcess], db: asyncpg.Connection
) -> None:
    answers = await burst([r.url for r in two_replicas], {"object_id": 5, "on_busy": "coalesce"})
    statuses = Counter(status for status, _, _ in answers)
    assert statuses == {201: 1, 200: 49}
    assert len({body["id"] for _, body, _ in answers}) == 1
    assert all(body.get("coalesced") is True for status, body, _ in answers if status == 200)
    assert await pending_count(db, 5) == 1


@pytest.mark.processes
async def test_reject_creates_nothing_while_busy_and_says_until_when(
    two_replicas: list[ServeProcess], db: asyncpg.Connection
) -> None:
    urls = [r.url for r in two_replicas]
    # A fresh object: the first request gets the free slot, the other 49 find it taken.
    answers = await burst(urls, {"object_id": 6, "on_busy": "reject"})
    assert Counter(status for status, _, _ in answers) == {201: 1, 429: 49}
    assert await pending_count(db, 6) == 1
    (accepted,) = [body for status, body, _ in answers if status == 201]
    next_free = parse_time(accepted["run_at"]) + timedelta(seconds=30)

    sent = time.time()
    again = await burst(urls, {"object_id": 6, "on_busy": "reject"})
    assert {status for status, _, _ in again} == {429}
    assert await pending_count(db, 6) == 1
    for _, problem, headers in again:
        assert problem["next_free_slot"] == next_free.isoformat().replace("+00:00", "Z")
        assert "busy until" in problem["detail"]
        assert headers["Retry-After"] == str(problem["retry_after"])
        # Exact to the second: the whole seconds from the request to the slot, rounded up.
        expected = next_free.timestamp() - sent
        assert math.ceil(expected) - 1 <= problem["retry_after"] <= math.ceil(expected)


@pytest.mark.processes
async def test_max_backlog_never_lets_the_backlog_exceed_it(
    two_replicas: list[ServeProcess], db: asyncpg.Connection
) -> None:
    answers = await burst([r.url for r in two_replicas], {"object_id": 7, "max_backlog": 3})
    assert Counter(status for status, _, _ in answers) == {201: 3, 429: 47}
    assert await pending_count(db, 7) == 3
    refused = next(body for status, body, _ in answers if status == 429)
    assert "max_backlog" in refused["detail"]


async def test_server_default_policy_applies_without_on_busy(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    client = await make_client(concurrency=0, on_busy="reject", rate_window=30)
    assert (await client.post("/jobs", json={"object_id": 1})).status == 201
    assert (await client.post("/jobs", json={"object_id": 1})).status == 429
    queued = await client.post("/jobs", json={"object_id": 1, "on_busy": "queue"})
    assert queued.status == 201
    assert await pending_count(db, 1) == 2


async def test_bad_policy_fields_are_422(make_client: MakeClient, db: asyncpg.Connection) -> None:
    client = await make_client(concurrency=0)
    for body in (
        {"object_id": 1, "on_busy": "drop"},
        {"object_id": 1, "max_backlog": 0},
        {"object_id": 1, "max_backlog": "3"},
    ):
        response = await client.post("/jobs", json=body)
        assert response.status == 422
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0


async def test_cancel_in_a_backlog_of_five_closes_the_gap(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    window = 10.0
    client = await make_client(concurrency=0, rate_window=window)
    jobs = [await (await client.post("/jobs", json={"object_id": 3})).json() for _ in range(5)]
    slots = [parse_time(job["run_at"]) for job in jobs]
    assert (await client.post(f"/jobs/{jobs[2]['id']}/cancel")).status == 200

    rows = await db.fetch(
        "SELECT id, run_at FROM jobs WHERE object_id = 3 AND status = 'PENDING' ORDER BY id"
    )
    assert [row["id"] for row in rows] == [jobs[n]["id"] for n in (0, 1, 3, 4)]
    # The four left are a window apart, in order, from where the cancelled one would have run.
    assert [row["run_at"] for row in rows] == slots[:4]
    # The object's next free slot shrank with them: a new job takes the fifth slot.
    sixth = await (await client.post("/jobs", json={"object_id": 3})).json()
    assert parse_time(sixth["run_at"]) == slots[4]


async def test_idempotency_key_returns_the_same_job(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    client = await make_client(concurrency=0)
    headers = {"Idempotency-Key": "order-1234"}
    first = await client.post("/jobs", json={"object_id": 8}, headers=headers)
    assert first.status == 201
    created = await first.json()
    again = await client.post("/jobs", json={"object_id": 8}, headers=headers)
    assert again.status == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json())["id"] == created["id"]

    other = await client.post("/jobs", json={"object_id": 9}, headers=headers)
    assert other.status == 422
    assert "different request" in (await other.json(content_type=None))["detail"]
    assert await db.fetchval("SELECT count(*) FROM jobs") == 1

    # After 24 hours the key is free again.
    await db.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
    later = await client.post("/jobs", json={"object_id": 9}, headers=headers)
    assert later.status == 201
    assert (await later.json())["id"] != created["id"]


async def test_concurrent_retries_with_one_key_make_one_job(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    client = await make_client(concurrency=0)
    base = str(client.make_url(""))
    answers = await burst([base], {"object_id": 4}, count=20, headers={"Idempotency-Key": "k-1"})
    assert Counter(status for status, _, _ in answers) == {201: 1, 200: 19}
    assert len({body["id"] for _, body, _ in answers}) == 1
    assert await db.fetchval("SELECT count(*) FROM jobs") == 1


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "naïve"])
async def test_malformed_idempotency_keys_are_400(make_client: MakeClient, key: str) -> None:
    client = await make_client(concurrency=0)
    response = await client.post("/jobs", json={"object_id": 1}, headers={"Idempotency-Key": key})
    assert response.status == 400


async def test_a_new_window_respaces_pending_jobs(
    make_client: MakeClient, database_url: str, db: asyncpg.Connection
) -> None:
    client = await make_client(concurrency=0, rate_window=10)
    pool = client.app[POOL]
    for _ in range(4):
        await client.post("/jobs", json={"object_id": 2})
    await client.post("/jobs", json={"object_id": 3})  # one job: nothing to move
    same = await limits.set_limit(pool, "default", None, limits.LimitFields(10.0))
    assert same.changes == []

    before = await db.fetch("SELECT id, run_at FROM jobs WHERE object_id = 2 ORDER BY id")
    planned = await limits.set_limit(pool, "default", None, limits.LimitFields(20.0), dry_run=True)
    assert planned.dry_run
    assert planned.limit.effective.window == 20.0
    assert [change.job_id for change in planned.changes] == [row["id"] for row in before[1:]]
    assert await db.fetch("SELECT id, run_at FROM jobs WHERE object_id = 2 ORDER BY id") == before
    assert (
        await db.fetchval("SELECT window_seconds FROM kind_limits WHERE kind = 'default'") == 10.0
    )

    applied = await limits.set_limit(pool, "default", None, limits.LimitFields(20.0))
    assert applied.changes == planned.changes
    after = await db.fetch("SELECT run_at FROM jobs WHERE object_id = 2 ORDER BY id")
    gaps = [b["run_at"] - a["run_at"] for a, b in itertools.pairwise(after)]
    assert gaps == [timedelta(seconds=20)] * 3
    assert after[0]["run_at"] == before[0]["run_at"]
    # The next plain submit goes a new window after the last.
    response = await client.post("/jobs", json={"object_id": 2})
    slot = datetime.fromisoformat((await response.json())["run_at"])
    assert slot == after[-1]["run_at"] + timedelta(seconds=20)
    again = await limits.set_limit(pool, "default", None, limits.LimitFields(20.0))
    assert again.changes == []


def test_replan_dry_run_prints_before_and_after(database_url: str) -> None:
    def paceline(window: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "paceline", *args, "--database-url", database_url],
            env={"PATH": "/usr/bin:/bin", "PACELINE_RATE_WINDOW": window},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )

    async def seed() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            for _ in range(3):
                await jobs_store.enqueue(conn, kind="default", object_id=1)
        finally:
            await conn.close()

    paceline("5", "replan")  # the default kind's window: 5 s
    asyncio.run(seed())
    dry = paceline("12", "replan", "--dry-run")
    assert "slot before" in dry.stdout
    assert len([line for line in dry.stdout.splitlines() if line.strip()[:1].isdigit()]) == 2
    assert "would move 2 pending job(s)" in dry.stdout
    shown = paceline("99", "limits", "show", "default")
    assert "default: 1 per 5s, 1 running at once" in shown.stdout
    applied = paceline("12", "limits", "set", "default", "--window", "12")
    assert "moved 2 pending job(s)" in applied.stdout
    assert "1 per 12s" in paceline("99", "limits", "show").stdout


async def test_overdue_jobs_catch_up_one_per_window_with_visible_slots(
    make_client: MakeClient, database_url: str, db: asyncpg.Connection
) -> None:
    window = 0.25
    api = await make_client(concurrency=0, rate_window=window)
    for _ in range(5):
        await api.post("/jobs", json={"object_id": 1})
    # Downtime: every slot passes with no worker.
    await asyncio.sleep(5 * window + 0.5)
    await make_client(rate_window=window)

    async def first_started() -> asyncpg.Record | None:
        return await db.fetchrow(
            "SELECT * FROM jobs WHERE object_id = 1 AND started_at IS NOT NULL ORDER BY id LIMIT 1"
        )

    first = await eventually(first_started, timeout=5)

    async def replanned() -> list[asyncpg.Record] | None:
        rows = await db.fetch(
            "SELECT id, run_at FROM jobs WHERE status = 'PENDING' AND object_id = 1 ORDER BY id"
        )
        # Each waiting job's slot now counts from the late first start, a window apart.
        ok = rows and all(
            row["run_at"] >= first["started_at"] + timedelta(seconds=window * (n + 1))
            for n, row in enumerate(rows)
        )
        return rows if ok else None

    await eventually(replanned, timeout=2, interval=0.01)
    rows = await wait_until_finished(database_url, 5, timeout=10)
    starts = [row["started_at"] for row in rows]
    assert all(b - a >= timedelta(seconds=window) for a, b in itertools.pairwise(starts))
    assert all(row["started_at"] >= row["run_at"] for row in rows)
    assert datetime.now(UTC) > starts[-1]
