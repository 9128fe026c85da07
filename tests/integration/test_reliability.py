"""Retries, timeouts, cancel, release, fencing, retention, access and outages, in one process.

The same behaviour with real processes, kill -9 and a restarted server is in test_faults.py.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from paceline import contract
from paceline.db import jobs as store
from paceline.db.embedded import free_port
from paceline.db.queries import MAX_IDS_PER_STATEMENT
from paceline.queue.ahead import MAX_AHEAD
from paceline.queue.maintenance import Janitor
from paceline.queue.reaper import Reaper
from paceline.queue.worker import MAX_UNWRITTEN
from paceline.web import validation
from tests.conftest import MakeClient
from tests.queue_data import bucket_of
from tests.support import all_jobs, attempts_of, eventually, post, wait_until_finished

Client = TestClient[Any, Any]
TOKEN = "correct-horse-battery-staple"


async def test_failed_attempts_retry_with_backoff_and_spacing(
    make_client: MakeClient, database_url: str, db: asyncpg.Connection
) -> None:
    window = 0.2
    client = await make_client(
        handler="tests.handlers:flaky", rate_window=window, retry_backoff=0.3, max_attempts=3
    )
    job = await post(client, 1)
    rows = await wait_until_finished(database_url, 1, timeout=15)
    assert rows[0]["status"] == "SUCCESS"
    assert rows[0]["attempts"] == 3
    history = await attempts_of(db, job["id"])
    assert [row["outcome"] for row in history] == ["RETRY", "RETRY", "SUCCESS"]
    assert "upstream refused attempt 1" in history[0]["error"]
    for earlier, later in itertools.pairwise(history):
        gap = later["started_at"] - earlier["finished_at"]
        # Backoff 0.3 s x 2^(n-1) with jitter 0.5-1.5: at least 0.15 s, then 0.3 s.
        assert gap >= timedelta(seconds=0.15 * 2 ** (earlier["attempt"] - 1))
        assert later["started_at"] - earlier["started_at"] >= timedelta(seconds=window)


async def test_last_attempt_fails_the_job_with_the_last_error(
    make_client: MakeClient, database_url: str, db: asyncpg.Connection
) -> None:
    client = await make_client(handler="tests.handlers:explode", retry_backoff=0.05, max_attempts=2)
    job = await post(client, 1)
    rows = await wait_until_finished(database_url, 1, timeout=10)
    assert rows[0]["status"] == "FAILED"
    assert rows[0]["attempts"] == 2
    assert rows[0]["error"].startswith("RuntimeError: <script>")
    assert [row["outcome"] for row in await attempts_of(db, job["id"])] == ["RETRY", "FAILED"]


async def test_permanent_failure_is_not_retried(make_client: MakeClient, database_url: str) -> None:
    client = await make_client(handler="tests.handlers:refuses", max_attempts=5)
    await post(client, 1)
    rows = await wait_until_finished(database_url, 1)
    assert (rows[0]["status"], rows[0]["attempts"]) == ("FAILED", 1)
    assert rows[0]["error"] == "PermanentFailure: upstream answered 400: unknown object"


async def test_retry_later_moves_the_objects_later_slots(
    make_client: MakeClient, database_url: str, db: asyncpg.Connection
) -> None:
    window = 0.3
    api = await make_client(concurrency=0, rate_window=window)
    first, second, third = [await post(api, 9) for _ in range(3)]
    await make_client(handler="tests.handlers:rate_limited", rate_window=window, max_attempts=3)

    async def retried() -> asyncpg.Record | None:
        row = await db.fetchrow("SELECT * FROM jobs WHERE id = $1", first["id"])
        assert row is not None
        return row if row["status"] == "PENDING" and row["attempts"] == 1 else None

    requeued = await eventually(retried, timeout=5)
    later = await db.fetch(
        "SELECT id, run_at FROM jobs WHERE id = ANY($1) ORDER BY id", [second["id"], third["id"]]
    )
    # The retry waits the 0.6 s the upstream asked for; the jobs behind it move back with it.
    assert later[0]["run_at"] >= requeued["run_at"] + timedelta(seconds=window)
    assert later[1]["run_at"] >= later[0]["run_at"] + timedelta(seconds=window)
    next_slot = await db.fetchval("SELECT next_slot FROM object_slots WHERE object_id = 9")
    assert next_slot >= later[1]["run_at"] + timedelta(seconds=window)

    rows = await wait_until_finished(database_url, 3, timeout=10)
    assert [row["status"] for row in rows] == ["SUCCESS"] * 3
    starts = [row["started_at"] for row in rows]
    assert starts == sorted(starts), "the retried job keeps its place in line"
    assert all(row["started_at"] >= row["run_at"] for row in rows)


async def test_job_timeout_cancels_the_handler(make_client: MakeClient, database_url: str) -> None:
    client = await make_client(handler="sleep", sleep_seconds=5, job_timeout=0.2, max_attempts=1)
    await post(client, 1)
    rows = await wait_until_finished(database_url, 1, timeout=5)
    assert rows[0]["status"] == "FAILED"
    assert "PACELINE_JOB_TIMEOUT=0.2s" in rows[0]["error"]
    assert rows[0]["duration"] == pytest.approx(0.2, abs=0.15)


async def test_cancel_a_pending_job_keeps_the_others_in_order(
    make_client: MakeClient, database_url: str
) -> None:
    window = 0.2
    api = await make_client(concurrency=0, rate_window=window)
    jobs = [await post(api, 4) for _ in range(5)]
    response = await api.post(f"/jobs/{jobs[2]['id']}/cancel")
    assert response.status == 200
    cancelled = await response.json()
    assert cancelled["status"] == "CANCELLED"
    assert cancelled["finished_at"] is not None

    again = await api.post(f"/jobs/{jobs[2]['id']}/cancel")
    assert again.status == 409
    assert "CANCELLED" in (await again.json(content_type=None))["detail"]
    assert (await api.post("/jobs/987654/cancel")).status == 404

    await make_client(rate_window=window)
    rows = await wait_until_finished(
        database_url, 5, timeout=10, ended=("SUCCESS", "FAILED", "CANCELLED")
    )
    ran = [row for row in rows if row["status"] == "SUCCESS"]
    assert [row["id"] for row in ran] == [job["id"] for job in jobs if job is not jobs[2]]
    starts = [row["started_at"] for row in ran]
    assert starts == sorted(starts)
    assert all(row["started_at"] >= row["run_at"] for row in ran)


async def test_cancel_a_started_job_is_409(make_client: MakeClient, database_url: str) -> None:
    client = await make_client(handler="tests.handlers:blocks", shutdown_grace=0.1)
    job = await post(client, 1)

    async def running() -> bool:
        return [row["status"] for row in await all_jobs(database_url)] == ["PROCESSING"]

    await eventually(running, timeout=5)
    response = await client.post(f"/jobs/{job['id']}/cancel")
    assert response.status == 409
    assert "PROCESSING" in (await response.json(content_type=None))["detail"]


async def test_shutdown_past_grace_releases_the_job_for_another_worker(
    make_client: MakeClient, database_url: str, db: asyncpg.Connection
) -> None:
    window = 0.4
    first = await make_client(
        handler="tests.handlers:blocks", shutdown_grace=0.2, rate_window=window
    )
    job = await post(first, 1)

    async def running() -> bool:
        return [row["status"] for row in await all_jobs(database_url)] == ["PROCESSING"]

    await eventually(running, timeout=5)
    await first.close()  # the app's cleanup: stop claiming, wait the grace, release
    row = await db.fetchrow("SELECT * FROM jobs WHERE id = $1", job["id"])
    assert row is not None
    assert row["status"] == "PENDING"
    assert [r["outcome"] for r in await attempts_of(db, job["id"])] == ["RELEASED"]
    assert await db.fetchval("SELECT count(*) FROM workers") == 0, "the worker unregistered"

    await make_client(handler="noop", rate_window=window)
    rows = await wait_until_finished(database_url, 1)
    assert (rows[0]["status"], rows[0]["attempts"]) == ("SUCCESS", 2)
    history = await attempts_of(db, job["id"])
    assert history[1]["started_at"] - history[0]["started_at"] >= timedelta(seconds=window)


async def test_a_lost_lease_stops_the_handler_and_its_result_is_fenced(
    make_client: MakeClient, database_url: str, db: asyncpg.Connection
) -> None:
    client = await make_client(handler="tests.handlers:blocks", lease=0.6, rate_window=0.1)
    job = await post(client, 1)

    async def running() -> bool:
        return [row["status"] for row in await all_jobs(database_url)] == ["PROCESSING"]

    await eventually(running, timeout=5)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    # Another replica decided this worker is gone: the lease ran out and the job was taken back.
    # (As if held by no one: a renewal landing before the reaper must not revive it.)
    await db.execute(
        "UPDATE jobs SET lease_expires_at = now() - interval '1 second', worker_id = $1",
        uuid.uuid4(),
    )
    try:
        reaper = Reaper(pool, max_attempts=3, interval=1)
        # This one, or the replica's own (every lease / 3) if it came first: one of them only.
        reaped = await reaper.reap_expired_leases()
        row = await db.fetchrow("SELECT status, attempts, lease_expires_at FROM jobs")
        assert row is not None
        assert reaped == 1 or row["status"] == "PENDING" or row["attempts"] == 2, dict(row)
        # The old attempt can no longer write its outcome.
        recorded = await store.finish_jobs(
            pool,
            job_ids=[job["id"]],
            attempts=[1],
            statuses=["SUCCESS"],
            durations=[1.0],
            errors=[None],
            results=[None],
        )
        assert recorded == set()
    finally:
        await pool.close()

    # The original worker notices at its next renewal and claims the job again as attempt 2.
    async def second_attempt() -> bool:
        rows = await attempts_of(db, job["id"])
        return len(rows) == 2

    await eventually(second_attempt, timeout=5)
    history = await attempts_of(db, job["id"])
    assert history[0]["outcome"] == "LOST"
    assert "stopped renewing the lease" in history[0]["error"]


@pytest.mark.one_server(
    "a trigger slows the outcomes' writes, and Citus refuses triggers on distributed tables"
)
async def test_claims_wait_while_outcomes_are_slow_to_write(
    make_client: MakeClient, database_url: str, db: asyncpg.Connection
) -> None:
    # Every write of outcomes takes 1 s, as on a database that cannot keep up; claims
    # (which insert attempts, not update them) stay fast.
    await db.execute(
        """
        CREATE FUNCTION slow_outcomes() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
        CREATE TRIGGER slow_outcomes AFTER UPDATE ON job_attempts
        FOR EACH STATEMENT EXECUTE FUNCTION slow_outcomes();
        """
    )
    concurrency = 4
    count = 2 * MAX_UNWRITTEN
    client = await make_client(concurrency=concurrency, rate_window=0.05)
    for start in range(0, count, contract.MAX_BATCH):
        batch = [{"object_id": n} for n in range(start, start + contract.MAX_BATCH)]
        assert (await client.post("/jobs", json=batch)).status == 201

    # Finished jobs whose outcome is not written yet are still PROCESSING and leased: without
    # a bound the worker would claim all of them, and rerun them all if it died now.
    held: list[int] = []

    async def drained() -> bool:
        held.append(await db.fetchval("SELECT count(*) FROM jobs WHERE status = 'PROCESSING'"))
        finished = await db.fetchval("SELECT count(*) FROM jobs WHERE status = 'SUCCESS'")
        return bool(finished == count)

    await eventually(drained, timeout=30)
    # Running, claimed ahead (waiting for a handler), or finished and not yet written.
    assert max(held) <= MAX_UNWRITTEN + concurrency + MAX_AHEAD
    rows = await all_jobs(database_url)
    assert all(row["attempts"] == 1 for row in rows)


async def test_leases_of_hundreds_of_running_jobs_are_all_renewed(
    make_client: MakeClient, database_url: str, db: asyncpg.Connection
) -> None:
    # More running jobs than one renewal statement takes (MAX_IDS_PER_STATEMENT): each of
    # them must keep its lease, or another replica's reaper would run it a second time.
    count = MAX_IDS_PER_STATEMENT + 100
    client = await make_client(concurrency=count, handler="sleep", sleep_seconds=2.5, lease=0.9)
    response = await client.post("/jobs", json=[{"object_id": n} for n in range(count)])
    assert response.status == 201

    async def all_running() -> bool:
        running = await db.fetchval("SELECT count(*) FROM jobs WHERE status = 'PROCESSING'")
        return bool(running == count)

    await eventually(all_running, timeout=10)
    await asyncio.sleep(1.2)  # past the first leases, so only renewals keep them
    expired = await db.fetchval(
        "SELECT count(*) FROM jobs WHERE status = 'PROCESSING' AND lease_expires_at < now()"
    )
    assert expired == 0
    rows = await wait_until_finished(database_url, count, timeout=20)
    assert {(row["status"], row["attempts"]) for row in rows} == {("SUCCESS", 1)}


async def test_retention_prunes_old_jobs_but_not_the_window(
    make_client: MakeClient, database_url: str, db: asyncpg.Connection
) -> None:
    window = 2.0
    client = await make_client(rate_window=window)
    done = await post(client, 5)
    await wait_until_finished(database_url, 1)
    bucket = bucket_of("'default'", "6")
    await db.execute(
        "INSERT INTO jobs (object_id, status, run_at, finished_at, bucket) "
        "SELECT 6, 'SUCCESS', now() - interval '9 days', now() - interval '8 days', "
        f"{bucket} FROM generate_series(1, 1200)"
    )
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        janitor = Janitor(pool, retention=7 * 86400, interval=1)
        assert await janitor.prune() == 1200
        assert await db.fetchval("SELECT count(*) FROM jobs") == 1
        # Even with a retention of a millisecond the window of object 5 survives its job.
        short = Janitor(pool, retention=0.001, interval=1)
        assert await db.fetchval("SELECT count(*) FROM job_attempts") == 1
        assert await short.prune() == 1
    finally:
        await pool.close()
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0
    # The pruned job's history goes with it (retention keeps the table from growing).
    assert await db.fetchval("SELECT count(*) FROM job_attempts") == 0
    again = await post(client, 5)
    rows = await wait_until_finished(database_url, 1, timeout=10)
    assert rows[0]["id"] == again["id"]
    last_start = await db.fetchval("SELECT last_started_at FROM object_starts WHERE object_id = 5")
    assert last_start == rows[0]["started_at"]
    first_start = done["run_at"]
    assert rows[0]["started_at"].timestamp() - _epoch(first_start) >= window


def _epoch(iso: str) -> float:
    from datetime import datetime  # noqa: PLC0415

    return datetime.fromisoformat(iso).timestamp()


async def test_token_protects_everything_but_health(make_client: MakeClient) -> None:
    client = await make_client(concurrency=0, api_token=TOKEN)
    response = await client.post("/jobs", json={"object_id": 1})
    assert response.status == 401
    assert response.content_type == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = await client.get("/jobs", headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status == 401
    ok = await client.post(
        "/jobs", json={"object_id": 1}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert ok.status == 201
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    page = await client.get("/", allow_redirects=False)
    assert page.status == 303
    assert page.headers["Location"] == "/login"


async def test_sign_in_form_sets_a_strict_http_only_cookie(make_client: MakeClient) -> None:
    client = await make_client(concurrency=0, api_token=TOKEN)
    refused = await client.post("/login", data={"token": "guess"}, allow_redirects=False)
    assert refused.status == 401
    assert "not right" in await refused.text()
    signed_in = await client.post("/login", data={"token": TOKEN}, allow_redirects=False)
    assert signed_in.status == 303
    cookie = signed_in.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert TOKEN not in cookie
    # The client keeps the cookie: the page and the API now answer.
    assert (await client.get("/", allow_redirects=False)).status == 200
    assert (await client.get("/jobs")).status == 200


async def test_database_down_is_a_quick_503_and_writes_nothing(
    make_client: MakeClient, settings: Any
) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    client = await make_client(concurrency=0, database_url=nowhere)
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await client.post("/jobs", json={"object_id": 1})
    assert response.status == 503
    assert response.content_type == "application/problem+json"
    assert response.headers["Retry-After"] == "1"
    assert "nothing was changed" in (await response.json(content_type=None))["detail"]
    assert loop.time() - started < 5
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/healthz")).status == 200


async def test_a_body_that_trickles_in_is_cut_off(
    make_client: MakeClient, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validation, "BODY_TIMEOUT", 0.3)
    client = await make_client(concurrency=0)

    async def slowly() -> Any:
        yield b'{"object_id":'
        await asyncio.sleep(1.0)
        yield b" 1}"

    try:
        response = await client.post(
            "/jobs", data=slowly(), headers={"Content-Type": "application/json"}
        )
        assert response.status == 408
    except aiohttp.ClientError:
        pass  # the server may close the connection while the client still sends
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0


async def test_replica_registers_and_beats(make_client: MakeClient, db: asyncpg.Connection) -> None:
    await make_client(lease=0.6)

    async def registered() -> asyncpg.Record | None:
        return await db.fetchrow("SELECT * FROM workers")

    row = await eventually(registered, timeout=5)
    assert isinstance(row["id"], uuid.UUID)
    assert row["concurrency"] == 4

    async def beat() -> bool:
        latest = await db.fetchval("SELECT last_heartbeat FROM workers WHERE id = $1", row["id"])
        return bool(latest > row["last_heartbeat"])

    await eventually(beat, timeout=5)
