"""The JSON API as a client sees it: the contract of docs/design.md and harmless refusals."""

from __future__ import annotations

import asyncio
import io
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from paceline.web.problems import MAX_BODY_BYTES
from tests.support import parse_time

Client = TestClient[Any, Any]

JOB_FIELDS = {
    "id", "object_id", "status", "timestamp", "created_at", "duration",
    "run_at", "started_at", "finished_at", "attempts", "error", "kind", "payload", "result",
    "not_before", "attempts_at_retry",
}  # fmt: skip


async def post_body(client: Client, body: Any) -> tuple[int, Any]:
    response = await client.post("/jobs", json=body)
    return response.status, await response.json(content_type=None)


async def nothing_written(db: asyncpg.Connection) -> bool:
    jobs = await db.fetchval("SELECT count(*) FROM jobs")
    slots = await db.fetchval("SELECT count(*) FROM object_slots")
    return bool(jobs == 0 and slots == 0)


async def test_create_job_returns_201_with_the_contract_fields(client: Client) -> None:
    response = await client.post("/jobs", json={"object_id": 42})
    assert response.status == 201
    job = await response.json()
    assert set(job) == JOB_FIELDS
    assert job["object_id"] == 42
    assert job["status"] == "PENDING"
    assert job["attempts"] == 0
    assert job["attempts_at_retry"] == 0
    assert job["duration"] is None
    assert job["started_at"] is None
    assert job["error"] is None
    # A fresh object may start at once: its slot is its creation time.
    assert parse_time(job["run_at"]) == parse_time(job["created_at"])
    assert response.headers["Location"] == f"/jobs/{job['id']}"


async def test_timestamp_is_whole_unix_seconds_as_the_original_table_has_it(
    client: Client, db: asyncpg.Connection
) -> None:
    response = await client.post("/jobs", json={"object_id": 42})
    text = await response.text()
    job = await response.json()
    # An integer in the JSON text itself (a Go or Java int64 field refuses 1796392643.99).
    assert f'"timestamp":{job["timestamp"]},' in text
    assert type(job["timestamp"]) is int
    stored = await db.fetchval("SELECT created_at FROM jobs WHERE id = $1", job["id"])
    assert parse_time(job["created_at"]) == stored  # the precise instant, to the microsecond
    assert job["timestamp"] == int(stored.timestamp() // 1)  # floored, not rounded
    listed = await (await client.get("/jobs")).json()
    assert listed["jobs"][0]["timestamp"] == job["timestamp"]


async def test_created_job_reads_back_the_same(client: Client) -> None:
    status, created = await post_body(client, {"object_id": 7})
    assert status == 201
    response = await client.get(f"/jobs/{created['id']}")
    assert response.status == 200
    assert await response.json() == created


async def test_second_job_of_an_object_waits_one_window(client: Client) -> None:
    _, first = await post_body(client, {"object_id": 7})
    _, second = await post_body(client, {"object_id": 7})
    _, other = await post_body(client, {"object_id": 8})
    gap = parse_time(second["run_at"]) - parse_time(first["run_at"])
    assert gap == timedelta(seconds=0.2)  # W of the test settings, to the microsecond
    # Another object has its own window.
    assert parse_time(other["run_at"]) < parse_time(second["run_at"])


@pytest.mark.parametrize(
    ("body", "status", "detail_part"),
    [
        ({}, 422, "object_id is missing"),
        ({"object_id": "7"}, 422, "not a string"),
        ({"object_id": 7.5}, 422, "not a number with a fractional part"),
        ({"object_id": True}, 422, "not a boolean"),
        ({"object_id": None}, 422, "not null"),
        ({"object_id": [7]}, 422, "not an array"),
        ({"object_id": 2**63}, 422, "64-bit"),
        ({"object_id": -(2**63) - 1}, 422, "64-bit"),
        ({"object_id": 7, "priority": 1, "color": "red"}, 422, "'color', 'priority'"),
        ([{"object_id": 7, "on_busy": "coalesce"}], 422, "Batch item 0"),
        ([{"object_id": 7}, 8], 422, "Batch item 1"),
        ([{"object_id": "7"}], 422, "must be an integer"),
        ([], 422, "1 to 1000 jobs"),
        ([{"object_id": 1}] * 1001, 422, "1 to 1000 jobs"),
        ("7", 422, "must be a JSON object"),
    ],
)
async def test_invalid_job_bodies_are_refused_and_write_nothing(
    client: Client, db: asyncpg.Connection, body: Any, status: int, detail_part: str
) -> None:
    response = await client.post("/jobs", json=body)
    assert response.status == status
    assert response.content_type == "application/problem+json"
    problem = await response.json(content_type=None)
    assert problem["status"] == status
    assert detail_part in problem["detail"]
    assert await nothing_written(db)


@pytest.mark.parametrize(
    ("data", "status", "detail_part"),
    [
        (b"", 400, "empty"),
        (b"{", 400, "not valid JSON"),
        (b'{"object_id": 7,}', 400, "not valid JSON"),
        (b'{"object_id": NaN}', 400, "NaN is not a JSON number"),
        (b'{"object_id": 1, "object_id": 2}', 400, "appears twice"),
        (b"\xff\xfe{}", 400, "not UTF-8"),
        (b'{"object_id": ' + b"9" * 5000 + b"}", 422, "64-bit"),
        (b"[" * 100_00 + b"]" * 100_00, 400, "nested too deeply"),
    ],
)
async def test_malformed_json_is_refused_and_writes_nothing(
    client: Client, db: asyncpg.Connection, data: bytes, status: int, detail_part: str
) -> None:
    response = await client.post("/jobs", data=data, headers={"Content-Type": "application/json"})
    assert response.status == status
    assert response.content_type == "application/problem+json"
    assert detail_part in (await response.json(content_type=None))["detail"]
    assert await nothing_written(db)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_other_content_types_get_415(
    client: Client, db: asyncpg.Connection, content_type: str
) -> None:
    response = await client.post(
        "/jobs", data=b'{"object_id": 7}', headers={"Content-Type": content_type}
    )
    assert response.status == 415
    assert response.content_type == "application/problem+json"
    assert "application/json" in (await response.json(content_type=None))["detail"]
    assert await nothing_written(db)


async def test_body_over_the_limit_gets_413(client: Client, db: asyncpg.Connection) -> None:
    padding = " " * MAX_BODY_BYTES
    response = await client.post(
        "/jobs",
        data=io.BytesIO(f'{{"object_id": 7{padding}}}'.encode()),
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 413
    assert response.content_type == "application/problem+json"
    assert "8192 KiB" in (await response.json(content_type=None))["detail"]
    assert await nothing_written(db)


@pytest.mark.parametrize(
    "job_id", ["999", "abc", "-1", "1.5", "0x10", "9" * 30, "%C2%B2", "1%20", "..%2F..%2Fetc"]
)
async def test_unknown_or_malformed_job_id_is_404(client: Client, job_id: str) -> None:
    response = await client.get(f"/jobs/{job_id}")
    assert response.status == 404
    assert response.content_type == "application/problem+json"
    assert (await response.json(content_type=None))["title"] == "Not found"


async def test_unknown_route_and_method_are_problems(client: Client) -> None:
    response = await client.get("/nope")
    assert response.status == 404
    assert response.content_type == "application/problem+json"
    response = await client.delete("/jobs")
    assert response.status == 405
    assert response.content_type == "application/problem+json"
    assert "POST" in response.headers["Allow"]


async def test_list_is_newest_first_and_filters(client: Client, db: asyncpg.Connection) -> None:
    ids = [(await post_body(client, {"object_id": oid}))[1]["id"] for oid in (1, 2, 1, 3, 1)]
    await db.execute("UPDATE jobs SET status = 'FAILED' WHERE id = $1", ids[2])

    response = await client.get("/jobs")
    assert response.status == 200
    listed = await response.json()
    assert [job["id"] for job in listed["jobs"]] == ids[::-1]
    assert listed["next_cursor"] is None

    by_object = await (await client.get("/jobs", params={"object_id": "1"})).json()
    assert [job["id"] for job in by_object["jobs"]] == [ids[4], ids[2], ids[0]]

    by_status = await (await client.get("/jobs", params={"status": "failed"})).json()
    assert [job["id"] for job in by_status["jobs"]] == [ids[2]]

    both = await (await client.get("/jobs", params={"object_id": "1", "status": "PENDING"})).json()
    assert [job["id"] for job in both["jobs"]] == [ids[4], ids[0]]


async def test_list_pages_with_a_cursor(client: Client) -> None:
    ids = [(await post_body(client, {"object_id": n}))[1]["id"] for n in range(7)]
    seen: list[int] = []
    url: str | None = "/jobs?limit=3"
    pages = 0
    while url is not None:
        response = await client.get(url)
        page = await response.json()
        seen += [job["id"] for job in page["jobs"]]
        pages += 1
        link = response.headers.get("Link")
        if page["next_cursor"] is None:
            assert link is None
            url = None
        else:
            assert link is not None
            assert 'rel="next"' in link
            url = link.split(";")[0].strip("<>")
    assert seen == ids[::-1]
    assert pages == 3


@pytest.mark.parametrize("cursor", [str(2**63), f"{2**63}.{10**19 - 1}", f"{2**62}.{10**18}"])
async def test_a_cursor_past_every_job_lists_from_the_newest(client: Client, cursor: str) -> None:
    # The API document lets a cursor's id run to 19 digits and its instant past year 9999
    # (what a client may send); such a cursor ends no page, so the listing starts at the top.
    ids = [(await post_body(client, {"object_id": n}))[1]["id"] for n in range(3)]
    response = await client.get("/jobs", params={"cursor": cursor})
    assert response.status == 200
    assert [job["id"] for job in (await response.json())["jobs"]] == ids[::-1]


@pytest.mark.parametrize(
    "query",
    [
        {"status": "DONE"},
        {"object_id": "x"},
        {"object_id": str(2**63)},
        {"limit": "0"},
        {"limit": "501"},
        {"cursor": "-5"},
        {"cursor": "12.x"},
        {"cursor": "0"},
        {"cursor": "1.2.3"},
        {"sort": "asc"},
    ],
)
async def test_bad_list_parameters_are_400(client: Client, query: dict[str, str]) -> None:
    response = await client.get("/jobs", params=query)
    assert response.status == 400
    assert response.content_type == "application/problem+json"
    problem = await response.json(content_type=None)
    assert problem["invalid_params"][0]["name"] in query


async def test_health_and_readiness(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200


async def test_a_batch_is_created_in_order_with_exact_slots_for_repeats(
    client: Client, db: asyncpg.Connection
) -> None:
    await post_body(client, {"object_id": 2})  # object 2 already has a job: its slot is taken
    response = await client.post(
        "/jobs", json=[{"object_id": 1}, {"object_id": 2}, {"object_id": 1}, {"object_id": 3}]
    )
    assert response.status == 201
    created = (await response.json())["jobs"]
    assert [job["object_id"] for job in created] == [1, 2, 1, 3]
    assert [job["id"] for job in created] == sorted(job["id"] for job in created)
    run_at = [parse_time(job["run_at"]) for job in created]
    window = timedelta(seconds=0.2)
    # The repeat of object 1 is a window after its first job, as if sent one after the other.
    assert run_at[2] - run_at[0] == window
    # Object 2 waits a window after the job it already had.
    first_of_2 = await db.fetchval("SELECT min(run_at) FROM jobs WHERE object_id = 2")
    assert run_at[1] - first_of_2 == window
    # The object's next free slot counts the whole batch: the next job of 1 comes after both.
    _, following = await post_body(client, {"object_id": 1})
    assert parse_time(following["run_at"]) - run_at[2] == window


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b'{"object_id": 768.0}', [768]),
        (b'{"object_id": 7.68e2}', [768]),
        (b'{"object_id": 9007199254740993.0}', [9007199254740993]),  # beyond a float's 53 bits
        (b'[{"object_id": -54.0}, {"object_id": 768.0}]', [-54, 768]),
    ],
)
async def test_integral_numbers_are_the_integer_they_are(
    client: Client, text: bytes, expected: list[int]
) -> None:
    # JSON Schema's `integer` includes 768.0: a client whose encoder writes it so is valid.
    response = await client.post("/jobs", data=text, headers={"Content-Type": "application/json"})
    assert response.status == 201, await response.text()
    answer = await response.json()
    created = answer.get("jobs", [answer])
    assert [job["object_id"] for job in created] == expected


@pytest.mark.parametrize(
    "text",
    [
        b'{"object_id": 768.5}',
        b'{"object_id": 9223372036854775808.0}',
        b'{"object_id": 1e999999999}',
        b'{"object_id": 1, "max_backlog": 2.5}',
        b'[{"object_id": 1.5}]',
    ],
)
async def test_numbers_that_are_no_int64_are_refused(
    client: Client, db: asyncpg.Connection, text: bytes
) -> None:
    response = await client.post("/jobs", data=text, headers={"Content-Type": "application/json"})
    assert response.status == 422
    assert (await response.json(content_type=None))["detail"]
    assert await nothing_written(db)


async def test_an_idempotency_key_covers_a_whole_batch(
    client: Client, db: asyncpg.Connection
) -> None:
    batch = [{"object_id": 1}, {"object_id": 2}, {"object_id": 1}]
    headers = {"Idempotency-Key": "batch-1"}
    first = await client.post("/jobs", json=batch, headers=headers)
    assert first.status == 201
    created = (await first.json())["jobs"]
    again = await client.post("/jobs", json=batch, headers=headers)
    assert again.status == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json())["jobs"] == created
    assert await db.fetchval("SELECT count(*) FROM jobs") == 3
    # The same key with another batch (or a single job) is a 422 that writes nothing.
    for other in ([{"object_id": 1}, {"object_id": 2}], {"object_id": 1}):
        refused = await client.post("/jobs", json=other, headers=headers)
        assert refused.status == 422
        assert "Idempotency-Key" in (await refused.json(content_type=None))["detail"]
    assert await db.fetchval("SELECT count(*) FROM jobs") == 3


async def test_concurrent_retries_of_a_batch_create_it_once(
    client: Client, db: asyncpg.Connection
) -> None:
    batch = [{"object_id": 5}, {"object_id": 6}]
    headers = {"Idempotency-Key": "batch-concurrent"}
    answers = await asyncio.gather(
        *(client.post("/jobs", json=batch, headers=headers) for _ in range(20))
    )
    statuses = sorted(answer.status for answer in answers)
    assert statuses == [200] * 19 + [201]
    documents = [await answer.json() for answer in answers]
    assert all(document == documents[0] for document in documents)
    assert await db.fetchval("SELECT count(*) FROM jobs") == 2
