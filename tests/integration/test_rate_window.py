"""The rate window (I1-I6 of docs/design.md) with real workers and real commits."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import MakeClient
from tests.support import (
    all_jobs,
    assert_starts_apart,
    claim_due,
    eventually,
    post,
    wait_until_finished,
)


def starts_by_object(rows: list[asyncpg.Record]) -> dict[int, list[asyncpg.Record]]:
    grouped: dict[int, list[asyncpg.Record]] = defaultdict(list)
    for row in rows:
        grouped[row["object_id"]].append(row)
    return grouped


def assert_window_holds(rows: list[asyncpg.Record], window: float) -> None:
    """I1, I2, I4: per object, starts in acceptance order, W apart, never before run_at."""
    for object_id, jobs in starts_by_object(rows).items():
        jobs.sort(key=lambda row: row["id"])
        for row in jobs:
            assert row["started_at"] >= row["run_at"], f"job {row['id']} started early"
        starts = [row["started_at"] for row in jobs]
        assert starts == sorted(starts), f"object {object_id} ran out of order"
        assert_starts_apart(object_id, starts, window)


async def test_fifty_concurrent_posts_for_one_object_get_exact_slots_and_run_in_order(
    make_client: MakeClient, database_url: str
) -> None:
    window = 0.1
    client = await make_client(rate_window=window, concurrency=4)
    base = str(client.make_url(""))
    # Fifty separate TCP connections, all at once: the slot must come from the locked row.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def submit() -> dict[str, Any]:
            async with session.post(f"{base}/jobs", json={"object_id": 99}) as response:
                assert response.status == 201
                job: dict[str, Any] = await response.json()
                return job

        created = await asyncio.gather(*(submit() for _ in range(50)))

    rows = await wait_until_finished(database_url, 50, timeout=30)
    assert {row["id"] for row in rows} == {job["id"] for job in created}
    # The slots as each POST returned them (workers may push them back later if they
    # start late), in id order, which is the order the object's row lock admitted them.
    slots = [
        datetime.fromisoformat(job["run_at"]) for job in sorted(created, key=lambda j: j["id"])
    ]
    assert all(
        later - earlier == timedelta(seconds=window) for earlier, later in itertools.pairwise(slots)
    ), "run_at values must be exactly W apart in acceptance order"
    assert all(row["status"] == "SUCCESS" and row["attempts"] == 1 for row in rows)
    assert_window_holds(rows, window)


async def test_idle_workers_start_due_jobs_when_due_not_at_the_next_idle_poll(
    make_client: MakeClient, database_url: str
) -> None:
    """Idle workers wake for each job at its slot (the timer set from the next start, or the
    NOTIFY of a submit), not when their idle poll (1 s here) happens to look again. How late
    exactly is the benchmark's figure (scenario 5, idle lateness p99, goal 5 ms): this bound is
    far from both, so a loaded test machine does not fail it (at 50 ms it failed one full run
    in three, 52 ms, with the other starts 13-40 ms late)."""
    client = await make_client(rate_window=0.3, concurrency=8)
    for _ in range(3):
        for object_id in range(5):
            response = await client.post("/jobs", json={"object_id": object_id})
            assert response.status == 201
    rows = await wait_until_finished(database_url, 15, timeout=10)
    lateness = [(row["started_at"] - row["run_at"]).total_seconds() for row in rows]
    assert max(lateness) < 0.2, f"started late: {sorted(lateness)[-3:]}"
    assert min(lateness) >= 0


async def test_a_claim_opened_before_a_slot_takes_the_job_once_its_statement_runs_after_it(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    """A worker woken for a timed slot opens its claim's transaction (BEGIN with the plan
    settings) about when the slot comes, and the claim statement goes out a round trip later.
    The job is due by then, and the claim must take it: judged by the transaction's start,
    about half such claims found nothing, and the job started 3-4 ms late (a second claim)."""
    api = await make_client(concurrency=0)
    not_before = datetime.now(UTC) + timedelta(seconds=0.3)
    job = await post(api, 7, not_before=not_before.isoformat())
    async with db.transaction():
        opened = await db.fetchval("SELECT now()")
        run_at = datetime.fromisoformat(job["run_at"])
        assert opened < run_at, "the transaction must open before the slot"
        await asyncio.sleep((run_at - opened).total_seconds() + 0.05)
        claimed = await claim_due(db, uuid.uuid4(), limit=10, lease=30)
    assert [row["id"] for row in claimed] == [job["id"]]
    assert claimed[0]["started_at"] >= run_at  # I2 holds: never before the slot


async def test_spacing_holds_when_workers_fell_behind(
    make_client: MakeClient, database_url: str
) -> None:
    window = 0.15
    api = await make_client(rate_window=window, concurrency=0)
    for _ in range(5):
        for object_id in (1, 2):
            assert (await api.post("/jobs", json={"object_id": object_id})).status == 201
    # Let every slot pass with nobody working: all ten jobs are due at once now.
    await asyncio.sleep(5 * window + 0.1)
    await make_client(rate_window=window, concurrency=8)
    rows = await wait_until_finished(database_url, 10, timeout=10)
    # Run back to back they would start microseconds apart; the claim's check of the
    # object's last start keeps them a window apart instead.
    assert_window_holds(rows, window)


async def test_late_starts_push_every_keys_next_slot_back_to_a_window_after_the_start(
    make_client: MakeClient, database_url: str
) -> None:
    """I6 behind a backlog: one claim starts the first jobs of several objects late, and each
    object's second job moves to a window after its first job's actual start, so the run_at
    a client reads stays when it will really start (one re-plan for the whole claim)."""
    window = 1.0
    api = await make_client(rate_window=window, concurrency=0)
    objects = range(1, 7)
    for _ in range(2):
        for object_id in objects:
            assert (await api.post("/jobs", json={"object_id": object_id})).status == 201
    # The first slots pass with nobody working: the workers below start them late.
    await asyncio.sleep(0.3)
    await make_client(rate_window=window, concurrency=8)
    rows = await wait_until_finished(database_url, 2 * len(objects), timeout=15)
    for object_id, jobs in starts_by_object(rows).items():
        first, second = sorted(jobs, key=lambda row: row["id"])
        assert first["started_at"] - first["run_at"] >= timedelta(seconds=0.3)
        assert second["run_at"] == first["started_at"] + timedelta(seconds=window), object_id
        assert second["started_at"] >= second["run_at"]


async def test_retried_claims_across_two_in_process_workers_never_double_start(
    make_client: MakeClient, database_url: str
) -> None:
    window = 0.05
    first = await make_client(rate_window=window, concurrency=3)
    await make_client(rate_window=window, concurrency=3)
    for _ in range(6):
        for object_id in range(4):
            assert (await first.post("/jobs", json={"object_id": object_id})).status == 201
    rows = await wait_until_finished(database_url, 24, timeout=15)
    assert all(row["attempts"] == 1 for row in rows)
    assert_window_holds(rows, window)


async def test_handler_error_fails_the_job_with_its_text(
    make_client: MakeClient, database_url: str
) -> None:
    client = await make_client(handler="tests.handlers:explode", max_attempts=1)
    job = await (await client.post("/jobs", json={"object_id": 5})).json()
    rows = await wait_until_finished(database_url, 1)
    assert rows[0]["status"] == "FAILED"
    body = await (await client.get(f"/jobs/{job['id']}")).json()
    assert body["status"] == "FAILED"
    assert (
        body["error"] == f"RuntimeError: <script>alert('job {job['id']}')</script> upstream said no"
    )
    assert body["duration"] is not None
    assert body["duration"] >= 0
    assert body["finished_at"] is not None


async def test_sleep_handler_records_its_duration(
    make_client: MakeClient, database_url: str
) -> None:
    client = await make_client(handler="sleep", sleep_seconds=0.3)
    job = await (await client.post("/jobs", json={"object_id": 5})).json()

    async def processing() -> bool:
        body = await (await client.get(f"/jobs/{job['id']}")).json()
        return bool(body["status"] == "PROCESSING")

    await eventually(processing, timeout=5)
    await wait_until_finished(database_url, 1)
    body = await (await client.get(f"/jobs/{job['id']}")).json()
    assert body["status"] == "SUCCESS"
    assert body["duration"] == pytest.approx(0.3, abs=0.1)
    assert body["attempts"] == 1


async def test_imported_handler_receives_the_job(
    make_client: MakeClient,
    database_url: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_log = tmp_path / "runs.log"
    monkeypatch.setenv("PACELINE_TEST_RUN_LOG", str(run_log))
    client = await make_client(handler="tests.handlers:record")
    job = await (await client.post("/jobs", json={"object_id": 11})).json()
    await wait_until_finished(database_url, 1)
    job_id, attempt, _pid = run_log.read_text().split()
    assert (int(job_id), int(attempt)) == (job["id"], 1)


async def test_sigterm_style_shutdown_finishes_running_jobs(
    make_client: MakeClient, database_url: str
) -> None:
    client = await make_client(handler="sleep", sleep_seconds=0.5)
    await client.post("/jobs", json={"object_id": 1})

    async def started() -> bool:
        return any(row["status"] == "PROCESSING" for row in await all_jobs(database_url))

    await eventually(started, timeout=5)
    await client.close()  # runs the app's cleanup: the worker drains within its grace
    rows = await all_jobs(database_url)
    assert [row["status"] for row in rows] == ["SUCCESS"]
