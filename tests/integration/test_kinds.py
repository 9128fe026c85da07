"""Jobs that carry work: kinds routed to their handlers, payloads, results, and the coalescing
policies that keep data (`replace`, `append`). In-process apps on a real PostgreSQL; the same
across real replicas is in tests/process/test_kinds_processes.py."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from paceline.contract import MAX_PAYLOAD_BYTES
from tests.conftest import MakeClient
from tests.support import eventually, parse_time

Client = TestClient[Any, Any]

TWO_KINDS = {
    "handler": "tests.handlers:echo",
    "handlers": "notify=tests.handlers:shout",
}


async def post(client: Client, body: Any, **headers: str) -> tuple[int, dict[str, Any]]:
    response = await client.post("/jobs", json=body, headers=headers)
    return response.status, await response.json(content_type=None)


async def finished(client: Client, job_id: int, timeout: float = 10.0) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        response = await client.get(f"/jobs/{job_id}")
        job: dict[str, Any] = await response.json()
        return job if job["status"] in ("SUCCESS", "FAILED") else None

    return await eventually(probe, timeout=timeout, interval=0.05)


async def rows_written(db: asyncpg.Connection) -> tuple[int, int]:
    return (
        await db.fetchval("SELECT count(*) FROM jobs"),
        await db.fetchval("SELECT count(*) FROM object_slots"),
    )


async def test_each_kind_runs_by_its_own_handler_with_its_payload(make_client: MakeClient) -> None:
    client = await make_client(**TWO_KINDS, rate_window=30.0)
    status, echoed = await post(client, {"object_id": 7, "payload": {"n": 1, "tags": ["a"]}})
    assert status == 201
    assert (echoed["kind"], echoed["payload"]) == ("default", {"n": 1, "tags": ["a"]})
    status, shouted = await post(
        client, {"object_id": 7, "kind": "notify", "payload": {"text": "hello"}}
    )
    assert status == 201

    echoed, shouted = await finished(client, echoed["id"]), await finished(client, shouted["id"])
    assert echoed["status"] == shouted["status"] == "SUCCESS"
    assert echoed["result"] == {
        "handler": "echo",
        "kind": "default",
        "payload": {"n": 1, "tags": ["a"]},
    }
    assert shouted["result"] == "HELLO"
    # Object 7 of `notify` has a window of its own: it started at once, not 30 s later.
    assert parse_time(shouted["run_at"]) - parse_time(shouted["created_at"]) < timedelta(seconds=1)


async def test_the_window_is_per_kind_and_object(client: Client) -> None:
    _, first = await post(client, {"object_id": 5, "kind": "default"})
    _, same_key = await post(client, {"object_id": 5})
    # The test app knows only `default`; the window rule is checked on the slots alone.
    window = timedelta(seconds=0.2)
    assert parse_time(same_key["run_at"]) - parse_time(first["run_at"]) >= window


async def test_a_kind_no_replica_knows_is_refused_naming_the_known_ones(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    client = await make_client(concurrency=0, **TWO_KINDS)
    before = await rows_written(db)
    status, problem = await post(client, {"object_id": 1, "kind": "reindex"})
    assert status == 422
    assert "'reindex'" in problem["detail"]
    assert "default, notify" in problem["detail"]
    assert problem["invalid_params"][0]["name"] == "kind"
    status, _ = await post(client, [{"object_id": 1}, {"object_id": 2, "kind": "reindex"}])
    assert status == 422
    assert await rows_written(db) == before


async def test_a_kind_a_live_worker_registered_is_accepted_by_an_api_only_replica(
    make_client: MakeClient,
) -> None:
    worker = await make_client(handlers="reindex=tests.handlers:echo")
    api_only = await make_client(concurrency=0)

    async def accepted() -> bool:
        status, _ = await post(api_only, {"object_id": 3, "kind": "reindex"})
        return status == 201

    await eventually(accepted, timeout=10)
    assert worker is not None


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"object_id": 1, "kind": "Upper"}, "kind must be a name"),
        ({"object_id": 1, "kind": ""}, "kind must be a name"),
        ({"object_id": 1, "kind": "k" * 65}, "kind must be a name"),
        ({"object_id": 1, "kind": 7}, "kind must be a name"),
    ],
)
async def test_a_malformed_kind_is_refused(
    client: Client, db: asyncpg.Connection, body: dict[str, Any], detail: str
) -> None:
    status, problem = await post(client, body)
    assert (status, detail in problem["detail"]) == (422, True), problem
    assert await rows_written(db) == (0, 0)


async def test_a_payload_up_to_64_kib_is_kept_and_a_bigger_one_is_413(
    client: Client, db: asyncpg.Connection
) -> None:
    # A JSON string of n characters is n + 2 bytes.
    largest = "x" * (MAX_PAYLOAD_BYTES - 2)
    status, job = await post(client, {"object_id": 1, "payload": largest})
    assert status == 201
    assert job["payload"] == largest
    before = await rows_written(db)
    status, problem = await post(client, {"object_id": 2, "payload": largest + "x"})
    assert status == 413
    assert problem["limit"] == MAX_PAYLOAD_BYTES
    assert "65536 bytes" in problem["detail"]
    assert "Nothing was written" in problem["detail"]
    status, _ = await post(client, [{"object_id": 3}, {"object_id": 4, "payload": largest + "y"}])
    assert status == 413
    assert await rows_written(db) == before


async def test_a_batch_of_1000_jobs_with_1_kib_payloads_fits(client: Client) -> None:
    payload = {"text": "p" * 1000}
    status, created = await post(
        client, [{"object_id": n, "payload": payload} for n in range(1000)]
    )
    assert status == 201
    assert len(created["jobs"]) == 1000
    assert all(job["payload"] == payload for job in created["jobs"])


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"object_id": 1, "payload": "a\\u0000b"}', "\\u0000"),
        (b'{"object_id": 1, "payload": {"k": "\\ud800"}}', "payload"),
        (b'{"object_id": 1, "payload": 1e999}', "payload"),
        (b'[{"object_id": 1, "payload": ["\\u0000"]}]', "\\u0000"),
    ],
)
async def test_payloads_postgresql_cannot_keep_are_refused(
    client: Client, db: asyncpg.Connection, raw: bytes, reason: str
) -> None:
    response = await client.post("/jobs", data=raw, headers={"Content-Type": "application/json"})
    problem = await response.json(content_type=None)
    assert response.status == 422, problem
    assert reason in problem["detail"]
    assert await rows_written(db) == (0, 0)


async def test_a_payload_comes_back_as_it_was_sent(client: Client) -> None:
    payload = {
        "big": 123456789012345678901234567890,
        "text": 'é "quoted" \\u0000 and <b>',
        "nested": [[], {}, None, True, 1.5],
    }
    status, job = await post(client, {"object_id": 9, "payload": payload})
    assert status == 201
    response = await client.get(f"/jobs/{job['id']}")
    assert (await response.json())["payload"] == payload
    listed = await client.get("/jobs", params={"object_id": "9"})
    assert (await listed.json())["jobs"][0]["payload"] == payload


async def test_replace_gives_the_pending_job_the_latest_payload(client: Client) -> None:
    status, first = await post(client, {"object_id": 4, "on_busy": "replace", "payload": 1})
    assert status == 201
    status, second = await post(client, {"object_id": 4, "on_busy": "replace", "payload": 2})
    assert status == 200
    assert (second["id"], second["payload"], second["coalesced"]) == (first["id"], 2, True)
    assert second["run_at"] == first["run_at"]
    # Another kind's object 4 is another key: not coalesced with these.
    response = await client.get(f"/jobs/{first['id']}")
    assert (await response.json())["payload"] == 2


async def test_replace_changes_the_last_pending_job_so_payloads_run_in_order(
    client: Client,
) -> None:
    _, queued = await post(client, {"object_id": 6, "payload": "a"})
    _, tail = await post(client, {"object_id": 6, "payload": "b"})
    status, replaced = await post(client, {"object_id": 6, "on_busy": "replace", "payload": "c"})
    assert (status, replaced["id"], replaced["payload"]) == (200, tail["id"], "c")
    response = await client.get(f"/jobs/{queued['id']}")
    assert (await response.json())["payload"] == "a"


async def test_append_collects_every_payload_in_arrival_order(client: Client) -> None:
    status, first = await post(client, {"object_id": 8, "on_busy": "append", "payload": {"n": 1}})
    assert (status, first["payload"]) == (201, [{"n": 1}])
    for n in (2, 3):
        status, job = await post(client, {"object_id": 8, "on_busy": "append", "payload": {"n": n}})
        assert (status, job["id"], job["coalesced"]) == (200, first["id"], True)
    # An array payload is one element, not spliced in.
    status, job = await post(client, {"object_id": 8, "on_busy": "append", "payload": [4, 5]})
    assert job["payload"] == [{"n": 1}, {"n": 2}, {"n": 3}, [4, 5]]


async def test_append_past_its_cap_starts_a_new_job_in_the_next_slot(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("paceline.queue.submit.MAX_APPENDED", 3)
    answers = [
        await post(client, {"object_id": 2, "on_busy": "append", "payload": n}) for n in range(5)
    ]
    assert [status for status, _ in answers] == [201, 200, 200, 201, 200]
    first, second = answers[0][1], answers[3][1]
    assert first["id"] != second["id"]
    assert answers[2][1]["payload"] == [0, 1, 2]
    assert answers[4][1]["payload"] == [3, 4]
    assert parse_time(second["run_at"]) - parse_time(first["run_at"]) >= timedelta(seconds=0.2)


async def test_append_past_its_bytes_starts_a_new_job(client: Client) -> None:
    half = "h" * (MAX_PAYLOAD_BYTES // 2)
    statuses = [
        (await post(client, {"object_id": 3, "on_busy": "append", "payload": half}))[0]
        for _ in range(3)
    ]
    assert statuses == [201, 201, 201]  # two halves and their brackets exceed 64 KiB


async def test_append_does_not_join_a_job_that_was_not_made_by_append(client: Client) -> None:
    _, queued = await post(client, {"object_id": 1, "payload": {"a": 1}})
    status, appended = await post(client, {"object_id": 1, "on_busy": "append", "payload": 2})
    assert status == 201
    assert appended["id"] != queued["id"]
    assert appended["payload"] == [2]


async def test_concurrent_appends_each_land_once(client: Client) -> None:
    answers = await asyncio.gather(
        *(post(client, {"object_id": 11, "on_busy": "append", "payload": n}) for n in range(50))
    )
    ids = {job["id"] for _, job in answers}
    assert len(ids) == 1
    response = await client.get(f"/jobs/{ids.pop()}")
    assert sorted((await response.json())["payload"]) == list(range(50))


@pytest.mark.parametrize("on_busy", ["replace", "append"])
async def test_an_idempotent_retry_changes_nothing_twice(client: Client, on_busy: str) -> None:
    body = {"object_id": 12, "on_busy": on_busy, "payload": "once"}
    _, made = await post(client, {"object_id": 12, "on_busy": on_busy, "payload": "first"})
    status, changed = await post(client, body, **{"Idempotency-Key": f"k-{on_busy}"})
    assert status == 200
    status, again = await post(client, body, **{"Idempotency-Key": f"k-{on_busy}"})
    assert status == 200
    assert again["id"] == changed["id"] == made["id"]
    response = await client.get(f"/jobs/{made['id']}")
    expected = "once" if on_busy == "replace" else ["first", "once"]
    assert (await response.json())["payload"] == expected
    status, problem = await post(
        client, {**body, "payload": "other"}, **{"Idempotency-Key": f"k-{on_busy}"}
    )
    assert status == 422, problem


async def test_a_started_job_is_never_changed_by_replace(make_client: MakeClient) -> None:
    client = await make_client(handler="tests.handlers:echo", rate_window=30.0)
    _, first = await post(client, {"object_id": 5, "on_busy": "replace", "payload": "a"})
    await finished(client, first["id"])
    status, second = await post(client, {"object_id": 5, "on_busy": "replace", "payload": "b"})
    assert status == 201
    assert second["id"] != first["id"]
    response = await client.get(f"/jobs/{first['id']}")
    ran = await response.json()
    assert ran["payload"] == "a"
    assert ran["result"]["payload"] == "a"


async def test_a_result_that_is_not_json_is_dropped_and_the_job_succeeds(
    make_client: MakeClient,
) -> None:
    for handler in ("tests.handlers:unencodable", "tests.handlers:oversized"):
        client = await make_client(handler=handler)
        _, job = await post(client, {"object_id": 1})
        done = await finished(client, job["id"])
        assert (done["status"], done["result"], done["error"]) == ("SUCCESS", None, None)


async def test_a_batch_takes_kinds_and_payloads_in_one_statement(
    make_client: MakeClient,
) -> None:
    client = await make_client(concurrency=0, **TWO_KINDS)
    status, created = await post(
        client,
        [
            {"object_id": 1, "payload": {"i": 0}},
            {"object_id": 1, "kind": "notify", "payload": {"text": "x"}},
            {"object_id": 1, "on_busy": "queue"},
        ],
    )
    assert status == 201
    jobs = created["jobs"]
    assert [(job["kind"], job["payload"]) for job in jobs] == [
        ("default", {"i": 0}),
        ("notify", {"text": "x"}),
        ("default", None),
    ]
    # The two default jobs of object 1 are a window apart; notify's is a key of its own.
    assert parse_time(jobs[2]["run_at"]) - parse_time(jobs[0]["run_at"]) >= timedelta(seconds=0.2)
    assert jobs[1]["run_at"] == jobs[0]["run_at"] or parse_time(jobs[1]["run_at"]) < parse_time(
        jobs[2]["run_at"]
    )
    status, problem = await post(client, [{"object_id": 1, "on_busy": "replace"}])
    assert status == 422
    assert "every job of a batch queues" in problem["detail"]


async def test_each_job_a_batch_answers_is_the_job_get_shows(client: Client) -> None:
    """The batch's answer is built from what its statement returns plus a new job's defaults:
    it must be exactly what GET /jobs/{id} shows, the payload as PostgreSQL keeps it (jsonb
    orders keys by length, then bytes) included."""
    status, created = await post(
        client, [{"object_id": 3, "payload": {"zz": 1, "a": {"yy": 2, "b": 3}}}, {"object_id": 3}]
    )
    assert status == 201
    for job in created["jobs"]:
        response = await client.get(f"/jobs/{job['id']}")
        shown = await response.json()
        assert job == shown
        assert json.dumps(job["payload"]) == json.dumps(shown["payload"])  # key order too
    assert list(created["jobs"][0]["payload"]) == ["a", "zz"]


async def test_jobs_are_listed_by_kind(make_client: MakeClient) -> None:
    client = await make_client(concurrency=0, **TWO_KINDS)
    await post(client, {"object_id": 1})
    _, notify = await post(client, {"object_id": 1, "kind": "notify", "payload": {"text": "a"}})
    response = await client.get("/jobs", params={"kind": "notify"})
    assert [job["id"] for job in (await response.json())["jobs"]] == [notify["id"]]
    response = await client.get("/jobs", params={"kind": "notify", "object_id": "1"})
    assert [job["id"] for job in (await response.json())["jobs"]] == [notify["id"]]
    response = await client.get("/jobs", params={"kind": "Notify"})
    assert response.status == 400


async def test_the_handler_log_and_the_api_agree_on_the_payload(
    make_client: MakeClient, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_log = tmp_path / "runs.jsonl"
    monkeypatch.setenv("PACELINE_TEST_RUN_LOG", str(run_log))
    client = await make_client(handler="tests.handlers:echo")
    _, job = await post(client, {"object_id": 1, "payload": {"deep": {"list": [1, "two"]}}})
    done = await finished(client, job["id"])
    (line,) = run_log.read_text().splitlines()
    assert json.loads(line)["payload"] == done["payload"] == {"deep": {"list": [1, "two"]}}
