"""Retrying finished jobs (POST /jobs/{id}/retry, POST /jobs/retry) and searching jobs by
payload (GET /jobs?payload=…), with an in-process app on a real PostgreSQL: the slots retried
jobs take under each key's limit, the attempts they get afresh (a real worker with a failing
handler), what a refusal leaves (nothing), and the plans of the payload search."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from paceline.contract import INT64_MAX
from paceline.queue import limits
from paceline.queue.jobs import Status
from paceline.queue.limits import LimitFields
from paceline.queue.reaper import Reaper
from paceline.queue.rerun import JobNotFound, JobNotRetryable, retry_job, retry_jobs
from paceline.web.keys import POOL
from tests.conftest import MakeClient
from tests.integration.test_limits import rule_holds
from tests.integration.test_sql import PlanNode, explain, summary
from tests.support import attempts_of, eventually, gaps, parse_time, post

Client = TestClient[Any, Any]
PROBLEM = "application/problem+json"


async def fail(db: asyncpg.Connection, job_ids: list[int], *, attempts: int = 1) -> None:
    """Make pending jobs FAILED as a worker would have left them, attempts recorded an hour
    ago (outside any window of the tests)."""
    await db.execute(
        """
        WITH failed AS (
            UPDATE jobs SET status = 'FAILED', attempts = $2, error = 'boom',
                            started_at = now() - interval '1 hour',
                            finished_at = now() - interval '1 hour', duration = 0.1
            WHERE id = ANY ($1::bigint[]) RETURNING id, kind, object_id, started_at, bucket
        )
        -- bucket: the job's shard key on a Citus cluster (make test-citus), NULL on one server
        INSERT INTO job_attempts (job_id, attempt, kind, object_id, started_at, finished_at,
                                  outcome, error, bucket)
        SELECT id, n, kind, object_id, started_at, started_at, 'FAILED', 'boom', bucket
        FROM failed, generate_series(1, $2) AS n
        """,
        job_ids,
        attempts,
    )


async def snapshot(db: asyncpg.Connection) -> dict[str, list[asyncpg.Record]]:
    """Every row a retry could touch."""
    tables = ("jobs", "job_attempts", "object_slots", "object_starts")
    return {table: await db.fetch(f"SELECT * FROM {table} ORDER BY 1, 2") for table in tables}


async def retry(client: Client, job_id: int | str) -> tuple[int, str, Any]:
    response = await client.post(f"/jobs/{job_id}/retry")
    return response.status, response.content_type, await response.json()


async def retry_all(client: Client, **query: str) -> tuple[int, str, Any]:
    response = await client.post("/jobs/retry", params=query)
    return response.status, response.content_type, await response.json()


# --- one job -------------------------------------------------------------------------------


async def test_a_failed_job_retried_gets_every_attempt_again_and_keeps_its_history(
    make_client: MakeClient, database_url: str, db: asyncpg.Connection
) -> None:
    """A real worker whose handler always fails: two attempts, FAILED; retried, two more
    (not none, as counting all four against PACELINE_MAX_ATTEMPTS=2 would give), each a
    window after the last start, and the history shows all four."""
    window = 0.3
    client = await make_client(
        handler="tests.handlers:explode", retry_backoff=0.05, max_attempts=2, rate_window=window
    )
    job = await post(client, 1)

    async def failed(attempts: int) -> asyncpg.Record | None:
        row = await db.fetchrow("SELECT * FROM jobs WHERE id = $1", job["id"])
        assert row is not None
        return row if row["status"] == "FAILED" and row["attempts"] == attempts else None

    before = await eventually(lambda: failed(2), timeout=10)
    status, _, retried = await retry(client, job["id"])
    assert status == 200, retried
    assert retried["status"] == "PENDING"
    assert (retried["attempts"], retried["attempts_at_retry"]) == (2, 2)
    for cleared in ("error", "finished_at", "started_at", "duration", "result"):
        assert retried[cleared] is None, cleared
    # Not before a window after its last start (N = 1 per W).
    assert parse_time(retried["run_at"]) >= before["started_at"] + timedelta(seconds=window)

    after = await eventually(lambda: failed(4), timeout=10)
    assert after["error"].startswith("RuntimeError:")
    history = await attempts_of(db, job["id"])
    assert [row["attempt"] for row in history] == [1, 2, 3, 4]
    assert [row["outcome"] for row in history] == ["RETRY", "FAILED", "RETRY", "FAILED"]
    assert all(gap >= timedelta(seconds=window) for gap in gaps(r["started_at"] for r in history))
    shown = await (await client.get(f"/jobs/{job['id']}")).json()
    assert (shown["status"], shown["attempts"], shown["attempts_at_retry"]) == ("FAILED", 4, 2)


async def test_a_cancelled_job_retried_takes_the_slot_after_the_jobs_waiting(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    client = await make_client(concurrency=0, rate_window=60)
    first, second, third = [await post(client, 5) for _ in range(3)]
    cancelled = await (await client.post(f"/jobs/{second['id']}/cancel")).json()
    assert cancelled["status"] == "CANCELLED"
    status, _, retried = await retry(client, second["id"])
    assert status == 200, retried
    assert retried["status"] == "PENDING"
    assert retried["finished_at"] is None
    slots = {
        row["id"]: row["run_at"]
        for row in await db.fetch("SELECT id, run_at FROM jobs WHERE object_id = 5")
    }
    # The third moved up into the cancelled one's slot; the retried one comes after it.
    assert slots[third["id"]] == parse_time(first["run_at"]) + timedelta(seconds=60)
    assert slots[second["id"]] == slots[third["id"]] + timedelta(seconds=60)
    assert parse_time(retried["run_at"]) == slots[second["id"]]
    next_slot = await db.fetchval("SELECT next_slot FROM object_slots WHERE object_id = 5")
    assert next_slot == slots[second["id"]] + timedelta(seconds=60), "the next submit goes after it"


async def test_only_failed_or_cancelled_jobs_are_retried_and_a_refusal_changes_nothing(
    client: Client, db: asyncpg.Connection
) -> None:
    pending, running, succeeded = [await post(client, n) for n in (1, 2, 3)]
    await db.execute(
        "UPDATE jobs SET status = 'PROCESSING', attempts = 1, started_at = now(), "
        "lease_expires_at = now() + interval '1 minute' WHERE id = $1",
        running["id"],
    )
    await db.execute(
        "UPDATE jobs SET status = 'SUCCESS', attempts = 1, finished_at = now() WHERE id = $1",
        succeeded["id"],
    )
    before = await snapshot(db)
    for job, state in ((pending, "PENDING"), (running, "PROCESSING"), (succeeded, "SUCCESS")):
        status, content_type, problem = await retry(client, job["id"])
        assert (status, content_type) == (409, PROBLEM), problem
        assert state in problem["detail"]
        assert problem["job"]["status"] == state
    for unknown in (999_999, "abc"):
        status, content_type, problem = await retry(client, unknown)
        assert (status, content_type) == (404, PROBLEM), problem
    response = await client.post(f"/jobs/{succeeded['id']}/retry", data=b'{"x": 1}')
    assert response.status == 400
    assert await snapshot(db) == before
    pool = client.app[POOL]
    with pytest.raises(JobNotRetryable) as refused:
        await retry_job(pool, succeeded["id"])
    assert (refused.value.job_id, refused.value.status) == (succeeded["id"], Status.SUCCESS)
    with pytest.raises(JobNotFound) as missing:
        await retry_job(pool, 999_999)
    assert missing.value.job_id == 999_999


async def test_a_job_retried_twice_at_once_is_retried_once(
    client: Client, db: asyncpg.Connection
) -> None:
    job = await post(client, 4)
    await fail(db, [job["id"]])
    first, second = [await retry(client, job["id"]) for _ in range(2)]
    assert first[0] == 200
    assert second[0] == 409
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE status = 'PENDING'") == 1


# --- many jobs -----------------------------------------------------------------------------


async def test_a_bulk_retry_of_one_objects_50_failed_jobs_takes_50_slots_a_window_apart(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    client = await make_client(concurrency=0, rate_window=60)
    response = await client.post("/jobs", json=[{"object_id": 7}] * 50)
    jobs = (await response.json())["jobs"]
    other = await post(client, 8)
    await fail(db, [job["id"] for job in jobs] + [other["id"]])

    before = await snapshot(db)
    status, _, preview = await retry_all(client, status="FAILED", object_id="7", dry_run="true")
    assert status == 200, preview
    assert await snapshot(db) == before, "a dry run wrote something"

    status, _, done = await retry_all(client, status="failed", object_id="7")
    assert status == 200, done
    # The dry run planned the same 50 slots, from its own now.
    assert (preview["retried"], preview["dry_run"]) == (50, True)
    span = parse_time(preview["last_run_at"]) - parse_time(preview["first_run_at"])
    assert span == timedelta(seconds=60 * 49)
    assert done["retried"] == 50
    rows = await db.fetch(
        "SELECT id, status, run_at FROM jobs WHERE object_id = 7 ORDER BY run_at, id"
    )
    assert [row["id"] for row in rows] == [job["id"] for job in jobs], "oldest first"
    assert {row["status"] for row in rows} == {"PENDING"}
    slots = [row["run_at"] for row in rows]
    assert gaps(slots) == [timedelta(seconds=60)] * 49, "no burst: one slot per window"
    assert (parse_time(done["first_run_at"]), parse_time(done["last_run_at"])) == (
        slots[0],
        slots[-1],
    )
    assert await db.fetchval("SELECT status FROM jobs WHERE id = $1", other["id"]) == "FAILED"
    # Nothing is left to retry.
    status, _, again = await retry_all(client, status="FAILED", object_id="7")
    assert again == {"retried": 0, "first_run_at": None, "last_run_at": None, "dry_run": False}


async def test_a_bulk_retry_across_objects_keeps_each_keys_limit_and_pause(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    window = timedelta(seconds=60)
    client = await make_client(concurrency=0, rate_window=60)
    pool = client.app[POOL]
    await limits.set_limit(pool, "default", 2, LimitFields(per_window=3))
    await limits.pause(pool, "default", 3)
    made = [await post(client, object_id) for object_id in (1, 2, 3) for _ in range(6)]
    await fail(db, [job["id"] for job in made])
    # A job of object 1 that still waits: the retried ones come after it.
    waiting = await post(client, 1)

    summary_ = await retry_jobs(pool, status=Status.FAILED)
    assert summary_.retried == 18

    def slots(object_id: int) -> list[datetime | None]:
        return [
            None if row["run_at"] == datetime.max else row["run_at"]
            for row in rows
            if row["object_id"] == object_id and row["id"] != waiting["id"]
        ]

    rows = await db.fetch(
        "SELECT id, object_id, run_at FROM jobs WHERE status = 'PENDING' ORDER BY run_at, id"
    )
    one, two, three = slots(1), slots(2), slots(3)
    assert gaps(one) == [window] * 5  # type: ignore[arg-type]
    assert one[0] == parse_time(waiting["run_at"]) + window
    # Three per window: three at once, then three a window later.
    assert two[0] == two[1] == two[2]
    assert two[3] == two[4] == two[5] == two[0] + window  # type: ignore[operator]
    assert rule_holds(two, window, 3)  # type: ignore[arg-type]
    assert three == [None] * 6, "a paused object's retried jobs wait for the resume"
    assert summary_.first_run_at == min(two[0], one[0])  # type: ignore[type-var]
    assert summary_.last_run_at == one[-1]

    _, _, shown = await retry_all(client, status="FAILED")
    assert shown["retried"] == 0


async def test_a_bulk_retry_takes_only_the_status_and_payload_asked_for(
    client: Client, db: asyncpg.Connection
) -> None:
    ours = [await post(client, 10 + n, payload={"customer": 42, "n": n}) for n in range(3)]
    theirs = await post(client, 20, payload={"customer": 7})
    cancelled = await post(client, 21, payload={"customer": 42})
    await fail(db, [job["id"] for job in [*ours, theirs]])
    await client.post(f"/jobs/{cancelled['id']}/cancel")

    status, _, done = await retry_all(client, status="FAILED", payload='{"customer":42}')
    assert (status, done["retried"]) == (200, 3)
    rows = await db.fetch("SELECT id, status FROM jobs ORDER BY id")
    assert {row["id"]: row["status"] for row in rows} == {
        **{job["id"]: "PENDING" for job in ours},
        theirs["id"]: "FAILED",
        cancelled["id"]: "CANCELLED",
    }
    status, _, done = await retry_all(client, status="CANCELLED", kind="default")
    assert (status, done["retried"]) == (200, 1)


async def test_bad_filters_are_refused_as_problems_and_change_nothing(
    client: Client, db: asyncpg.Connection
) -> None:
    job = await post(client, 1, payload={"customer": 42})
    await fail(db, [job["id"]])
    before = await snapshot(db)
    refused: list[dict[str, str]] = [
        {},
        {"status": "PENDING"},
        {"status": "SUCCESS"},
        {"status": "LOST"},
        {"status": "FAILED", "payload": "{customer: 42}"},
        {"status": "FAILED", "payload": "[42]"},
        {"status": "FAILED", "payload": "{}"},
        {"status": "FAILED", "payload": "42"},
        {"status": "FAILED", "payload": '{"a": "\\u0000"}'},
        {"status": "FAILED", "object_id": "x"},
        {"status": "FAILED", "kind": "No Such Kind"},
        {"status": "FAILED", "dry_run": "maybe"},
        {"status": "FAILED", "limit": "5"},
    ]
    for query in refused:
        status, content_type, problem = await retry_all(client, **query)
        assert (status, content_type) == (400, PROBLEM), (query, problem)
        assert problem["detail"], query
    response = await client.post("/jobs/retry?status=FAILED", json={"status": "FAILED"})
    assert response.status == 400
    for payload in ("{customer: 42}", "[42]", "{}", "null"):
        response = await client.get("/jobs", params={"payload": payload})
        assert (response.status, response.content_type) == (400, PROBLEM), payload
        assert (await response.json())["invalid_params"][0]["name"] == "payload"
    assert await snapshot(db) == before


# --- the reaper counts since the retry -----------------------------------------------------


async def test_the_reaper_gives_a_retried_job_its_attempts_again(
    client: Client, db: asyncpg.Connection
) -> None:
    """A retried job (3 attempts before, PACELINE_MAX_ATTEMPTS=3) loses its first attempt
    since the retry with its replica: taken back and requeued, not failed."""
    job = await post(client, 6)
    await fail(db, [job["id"]], attempts=3)
    await retry(client, job["id"])
    await db.execute(
        """
        WITH started AS (
            UPDATE jobs SET status = 'PROCESSING', attempts = 4, started_at = now(),
                            lease_expires_at = now() - interval '1 second'
            WHERE id = $1 RETURNING id, kind, object_id, started_at, bucket
        )
        INSERT INTO job_attempts (job_id, attempt, kind, object_id, started_at, bucket)
        SELECT id, 4, kind, object_id, started_at, bucket FROM started
        """,
        job["id"],
    )
    reaper = Reaper(client.app[POOL], max_attempts=3, interval=1)
    assert await reaper.reap_expired_leases() == 1
    row = await db.fetchrow("SELECT status, attempts FROM jobs WHERE id = $1", job["id"])
    assert row is not None
    assert (row["status"], row["attempts"]) == ("PENDING", 4)
    assert [r["outcome"] for r in await attempts_of(db, job["id"])][-1] == "LOST"


# --- search by payload ---------------------------------------------------------------------


async def test_search_by_payload_finds_the_jobs_whose_payload_contains_it(
    client: Client, db: asyncpg.Connection
) -> None:
    a = await post(client, 1, payload={"customer": 42, "order": 1, "tags": ["x", "y"]})
    b = await post(client, 2, payload={"customer": 42, "order": 2})
    await post(client, 3, payload={"customer": 7, "order": 3})
    await post(client, 4, payload=[{"customer": 42}])
    await post(client, 5)
    await fail(db, [a["id"]])

    async def found(**query: str) -> list[int]:
        response = await client.get("/jobs", params=query)
        assert response.status == 200, await response.text()
        return [job["id"] for job in (await response.json())["jobs"]]

    assert await found(payload='{"customer":42}') == [b["id"], a["id"]]
    assert await found(payload='{"tags":["y"]}') == [a["id"]]
    assert await found(payload='{"customer":42}', status="FAILED") == [a["id"]]
    assert await found(payload='{"customer":42}', object_id="2") == [b["id"]]
    assert await found(payload='{"customer":42}', kind="other") == []
    assert await found(payload='{"customer":"42"}') == []
    # Paging goes on below the cursor, the filter kept.
    first = await client.get("/jobs", params={"payload": '{"customer":42}', "limit": "1"})
    page = await first.json()
    assert [job["id"] for job in page["jobs"]] == [b["id"]]
    assert await found(payload='{"customer":42}', cursor=page["next_cursor"]) == [a["id"]]


@pytest.mark.one_server("one server's plans (test_citus.py checks the cluster's)")
async def test_the_payload_search_reads_the_gin_index(db: asyncpg.Connection) -> None:
    """At 20k jobs, analyzed: the search (and the bulk retry's) is a probe of ix_jobs_payload,
    never a scan of jobs, as the custom plan and as the generic plan a cached statement may
    switch to."""
    await db.execute(
        """
        INSERT INTO jobs (object_id, status, run_at, finished_at, payload)
        SELECT g % 500, CASE WHEN g % 10 = 0 THEN 'FAILED' ELSE 'SUCCESS' END, now(), now(),
               jsonb_build_object('customer', g % 2000, 'order', g)
        FROM generate_series(1, 20000) AS g;
        ANALYZE jobs;
        """
    )
    searches = {
        "list_jobs_by_payload": ('{"customer": 42}', None, None, None, INT64_MAX, 51),
        "retry_candidates": ("FAILED", None, None, '{"customer": 40}'),
    }
    for mode in ("force_custom_plan", "force_generic_plan"):
        async with db.transaction():
            await db.execute(f"SET LOCAL plan_cache_mode = {mode}")
            for name, args in searches.items():
                if name == "retry_candidates" and mode == "force_generic_plan":
                    continue  # always planned for its values (db/rerun.py)
                nodes = summary(await explain(db, name, *args))
                assert PlanNode("Bitmap Index Scan", None, "ix_jobs_payload") in nodes, (
                    mode,
                    name,
                    nodes,
                )
                assert PlanNode("Seq Scan", "jobs", None) not in nodes, (mode, name, nodes)
    # What the search finds: 10 of the 20k.
    found = await db.fetch(
        "SELECT id FROM jobs WHERE payload @> $1::jsonb", json.dumps({"customer": 42})
    )
    assert len(found) == 10
