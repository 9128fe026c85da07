"""The limits API over HTTP: what each route answers, that it fits the OpenAPI document, that a
refused request changes nothing, and that a dry run writes nothing."""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import MakeClient
from tests.integration.test_openapi import conforms
from tests.support import parse_time, wait_until_finished

Client = TestClient[Any, Any]


async def snapshot(db: asyncpg.Connection) -> list[list[asyncpg.Record]]:
    """Everything a limit change may write."""
    return [
        await db.fetch(f"SELECT * FROM {table} ORDER BY 1, 2")
        for table in ("kind_limits", "key_limits", "jobs", "object_slots")
    ]


async def default_window(client: Client) -> float:
    """The default kind's window, as the test settings seeded it."""
    window: float = (await (await client.get("/limits/default")).json())["window"]
    return window


async def five_minutes(client: Client) -> float:
    """Make the default window 5 minutes: far longer than any pause of a loaded machine."""
    response = await client.put("/limits/default", json={"window": 300})
    assert response.status == 200
    return 300.0


async def submit(client: Client, object_id: int, **fields: Any) -> dict[str, Any]:
    response = await client.post("/jobs", json={"object_id": object_id, **fields})
    assert response.status == 201, await response.text()
    job: dict[str, Any] = await response.json()
    return job


async def test_a_kind_limit_is_set_read_and_moves_the_waiting_slots(
    client: Client, db: asyncpg.Connection
) -> None:
    window = await default_window(client)
    jobs = [await submit(client, 4) for _ in range(4)]
    slots = [parse_time(job["run_at"]) for job in jobs]
    assert [(b - a).total_seconds() for a, b in pairwise(slots)] == [window] * 3

    body = {"window": 60, "limit": 2}
    changed = await conforms(await client.put("/limits/default", json=body), "/limits/{kind}")
    assert changed["dry_run"] is False
    assert (changed["limit"]["window"], changed["limit"]["limit"]) == (60.0, 2)
    assert changed["limit"]["max_running"] == 1  # the default kind sets every number
    # Two starts per minute: the second job moves up beside the first (at once: a slot is
    # never in the past), and each later one starts a minute after the one two before it.
    after = {row["id"]: row["run_at"] for row in await db.fetch("SELECT id, run_at FROM jobs")}
    new_slots = [after[job["id"]] for job in jobs]
    assert new_slots[0] == slots[0]
    assert 0 <= (new_slots[1] - new_slots[0]).total_seconds() < 5
    assert [(new_slots[n + 2] - new_slots[n]).total_seconds() for n in (0, 1)] == [60.0, 60.0]
    assert changed["moved"] == len(changed["changes"]) == 3
    assert {move["id"] for move in changed["changes"]} == {job["id"] for job in jobs[1:]}

    read = await conforms(await client.get("/limits/default"), "/limits/{kind}")
    assert read["set"] == {"window": 60.0, "limit": 2, "max_running": 1, "paused": False}
    listed = await conforms(await client.get("/limits"), "/limits")
    assert "default" in [limit["kind"] for limit in listed["limits"]]


async def test_a_dry_run_shows_the_moves_and_writes_nothing(
    client: Client, db: asyncpg.Connection
) -> None:
    for _ in range(3):
        await submit(client, 9)
    before = await snapshot(db)
    for method, path in [
        ("PUT", "/limits/default/objects/9?dry_run=true"),
        ("POST", "/limits/default/objects/9/pause?dry_run=true"),
        ("POST", "/limits/default/pause?dry_run=1"),
    ]:
        body = {"window": 10} if method == "PUT" else None
        response = await client.request(method, path, json=body)
        answer = await response.json()
        assert response.status == 200, answer
        assert answer["dry_run"] is True
        assert answer["moved"] >= 2, (path, answer)
        assert await snapshot(db) == before, path


async def test_an_override_is_set_listed_and_dropped(client: Client) -> None:
    window = await five_minutes(client)
    first = await submit(client, 5)
    waiting = await submit(client, 5)
    template = "/limits/{kind}/objects/{object_id}"
    changed = await conforms(
        await client.put("/limits/default/objects/5", json={"limit": 5}), template
    )
    assert changed["limit"]["object_id"] == 5
    assert (changed["limit"]["limit"], changed["limit"]["window"]) == (5, window)  # inherited
    # Five starts per window: the waiting job moves up beside the first (at once: a slot is
    # never in the past).
    [move] = changed["changes"]
    assert (move["id"], move["object_id"], move["before"]) == (waiting["id"], 5, waiting["run_at"])
    moved_by = parse_time(move["after"]) - parse_time(first["run_at"])
    assert 0 <= moved_by.total_seconds() < window

    page = await conforms(await client.get("/limits/default/objects"), "/limits/{kind}/objects")
    assert [limit["object_id"] for limit in page["overrides"]] == [5]
    assert page["next_cursor"] is None
    other = await conforms(await client.get("/limits/default/objects/6"), template)
    assert (other["limit"], other["set"]) == (1, None)

    dropped = await conforms(await client.delete("/limits/default/objects/5"), template)
    assert dropped["limit"]["limit"] == 1
    again = await conforms(await client.delete("/limits/default/objects/5"), template)
    assert again["status"] == 404


async def test_the_timeline_tells_the_next_free_slot_of_an_overridden_key(
    client: Client,
) -> None:
    """Under an override of three starts per window, four jobs fill the first window and one
    slot of the next: a fifth job would go a window after the second, and the object's
    timeline says so (from the key's slot row, as the one-statement enqueue reads it)."""
    window = await five_minutes(client)
    response = await client.put("/limits/default/objects/8", json={"limit": 3})
    assert response.status == 200
    jobs = [await submit(client, 8) for _ in range(4)]
    first, fourth = parse_time(jobs[0]["run_at"]), parse_time(jobs[3]["run_at"])
    assert (fourth - first).total_seconds() == window

    timeline = await (await client.get("/objects/8/timeline")).json()
    promised = parse_time(timeline["next_free_slot"])
    assert (promised - parse_time(jobs[1]["run_at"])).total_seconds() == window
    fifth = await submit(client, 8)
    assert parse_time(fifth["run_at"]) == promised


async def test_the_timeline_tells_the_next_free_slot_past_a_scheduled_job(
    client: Client,
) -> None:
    """A job scheduled 1.5 windows after a plain one leaves no room for another plain job
    before it, so a new plain job goes a window after the scheduled one. The slot row alone
    would say a window after the plain job: the timeline works it out as the planner does."""
    window = await five_minutes(client)
    plain = parse_time((await submit(client, 9))["run_at"])
    ahead = plain + timedelta(seconds=1.5 * window)
    scheduled = await submit(client, 9, not_before=ahead.isoformat())
    assert parse_time(scheduled["run_at"]) == ahead

    timeline = await (await client.get("/objects/9/timeline")).json()
    promised = parse_time(timeline["next_free_slot"])
    assert promised == ahead + timedelta(seconds=window)
    after = await submit(client, 9)
    assert parse_time(after["run_at"]) == promised


async def test_pause_and_resume_an_object_over_http(client: Client) -> None:
    window = await five_minutes(client)
    first = await submit(client, 8)
    second = await submit(client, 8)
    paused = await conforms(
        await client.post("/limits/default/objects/8/pause"),
        "/limits/{kind}/objects/{object_id}/pause",
    )
    assert paused["limit"]["paused"] is True
    assert {move["id"]: move["after"] for move in paused["changes"]} == {
        first["id"]: None,
        second["id"]: None,
    }
    # Submits are still accepted; their slot is null until the resume.
    during = await submit(client, 8)
    assert during["run_at"] is None
    assert (await submit(client, 7))["run_at"] is not None  # other objects go on

    resumed = await conforms(
        await client.post("/limits/default/objects/8/resume"),
        "/limits/{kind}/objects/{object_id}/resume",
    )
    assert resumed["limit"]["paused"] is False
    slots = sorted(parse_time(move["after"]) for move in resumed["changes"])
    assert len(slots) == 3
    assert [(b - a).total_seconds() for a, b in pairwise(slots)] == [window, window]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [
        ("PUT", "/limits/default", {"window": 0}, 422, "window"),
        ("PUT", "/limits/default", {"window": "60"}, 422, "window"),
        ("PUT", "/limits/default", {"window": 1e12}, 422, "window"),
        ("PUT", "/limits/default", {"window": 60, "limit": 2.5}, 422, "limit"),
        ("PUT", "/limits/default", {"window": 60, "max_running": 0}, 422, "max_running"),
        ("PUT", "/limits/default", {"window": 60, "burst": 3}, 422, "burst"),
        ("PUT", "/limits/report", [1], 422, None),
        ("PUT", "/limits/report?dry_run=maybe", {"limit": 2}, 400, "dry_run"),
        ("PUT", "/limits/report?force=1", {"limit": 2}, 400, "force"),
        ("PUT", "/limits/Not%20A%20Kind", {"limit": 2}, 404, None),
        ("PUT", "/limits/report/objects/x1", {"limit": 2}, 404, None),
        ("DELETE", "/limits/default", None, 409, None),
        ("DELETE", "/limits/report", None, 404, None),
        ("GET", "/limits/default/objects?limit=0", None, 400, "limit"),
        ("POST", "/limits/report/pause", {"really": True}, 400, None),
    ],
)
async def test_bad_requests_are_problems_and_change_nothing(  # noqa: PLR0917 (parametrized)
    client: Client,
    db: asyncpg.Connection,
    method: str,
    path: str,
    body: Any,
    status: int,
    param: str | None,
) -> None:
    await submit(client, 3)
    before = await snapshot(db)
    response = await client.request(method, path, json=body)
    problem = await response.json(content_type=None)
    assert response.status == status, problem
    assert response.content_type == "application/problem+json"
    assert problem["detail"]
    if param is not None:
        assert [entry["name"] for entry in problem["invalid_params"]] == [param]
    assert await snapshot(db) == before


async def test_a_paused_kind_s_timeline_promises_no_slot(
    make_client: MakeClient, database_url: str
) -> None:
    """A key whose job ran has its next slot a window after that job's, in its slot row, which
    the timeline reads. Once the kind is paused a new job of it gets no slot (run_at null), and
    the timeline must not promise the slot the row held before the pause."""
    client = await make_client(concurrency=1)
    window = await five_minutes(client)
    await submit(client, 8)
    (ran,) = await wait_until_finished(database_url, 1)
    before = await (await client.get("/objects/8/timeline")).json()
    assert parse_time(before["next_free_slot"]) == ran["run_at"] + timedelta(seconds=window)

    assert (await client.post("/limits/default/pause")).status == 200
    paused = await (await client.get("/objects/8/timeline")).json()
    assert paused["next_free_slot"] is None
    assert (await submit(client, 8))["run_at"] is None
