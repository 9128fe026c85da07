"""What the dashboard reads: the queue overview and its event stream, an object's timeline, the
replicas. In-process apps on a real PostgreSQL; rows written as the queue would leave them."""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from paceline.observability.timeline import KeyActivity, Reason, explain_waits, reason
from paceline.queue.limits import LimitFields, pause, set_limit
from paceline.queue.scheduling import KeyLimit
from paceline.web.keys import POOL
from tests.conftest import MakeClient
from tests.queue_data import bucket_of, insert_attempt, insert_job, insert_worker
from tests.support import eventually, parse_time

Client = TestClient[Any, Any]


async def get_json(client: Client, path: str, status: int = 200) -> Any:
    response = await client.get(path)
    assert response.status == status, await response.text()
    return await response.json(content_type=None)


def words(said: Reason) -> str:
    """A reason as the page shows it, each time as `<time>`."""
    return "".join(part if isinstance(part, str) else "<time>" for part in said)


async def next_event(stream: aiohttp.StreamReader) -> tuple[str, Any]:
    """The next named server-sent event (skipping `retry:` and comments)."""
    while True:
        block = (await stream.readuntil(b"\n\n")).decode()
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            return fields["event"], json.loads(fields["data"])


async def test_overview_counts_the_live_queue_and_the_last_minutes(
    client: Client, db: asyncpg.Connection
) -> None:
    # The last minutes: 3 successes, 2 failures; older history is not in them.
    for ago in (30, 90, 200):
        await insert_job(db, 1, "SUCCESS", started=-ago - 1, finished=-ago, attempts=1)
    await insert_job(db, 1, "SUCCESS", started=-3601, finished=-3600, attempts=1)
    first_failure = await insert_job(
        db, 2, "FAILED", started=-61, finished=-60, attempts=3, error="TimeoutError: slow"
    )
    last_failure = await insert_job(
        db, 3, "FAILED", started=-11, finished=-10, attempts=1, error="ValueError: <b>bad</b>"
    )
    # Four waiting for their window (accepted long ago, slots far ahead), two running, three
    # past their slot (the workers are behind).
    waiting = [await insert_job(db, 20 + n, run_at=60.0 * (n + 1), created=-600) for n in range(4)]
    for object_id in (4, 5):
        await insert_job(db, object_id, "PROCESSING", run_at=-2, started=-1, attempts=1)
    overdue = [await insert_job(db, 10 + n, run_at=-5.0 + n, created=-30 + n) for n in range(3)]

    overview = await get_json(client, "/overview")

    counts = overview["counts"]
    assert counts["PENDING"] == {"count": 7, "exact": True, "capped": False}
    assert counts["PROCESSING"]["count"] == 2
    assert (overview["due"], overview["waiting"]) == (3, 4)
    # The most overdue job is the first to start; the longest wait is the first accepted.
    assert overview["first_due"]["id"] == overdue[0]
    assert parse_time(overview["first_due"]["run_at"]) < parse_time(overview["now"])
    assert overview["oldest_pending"]["id"] == waiting[0]
    last = overview["last_minutes"]
    assert (last["SUCCESS"], last["FAILED"], last["CANCELLED"]) == (3, 2, 0)
    assert len(last["per_minute"]) == last["minutes"] == 15
    assert sum(minute["SUCCESS"] for minute in last["per_minute"]) == 3
    minutes = [parse_time(minute["minute"]) for minute in last["per_minute"]]
    assert minutes == sorted(minutes)
    assert minutes[-1] <= parse_time(overview["now"]) < minutes[-1] + timedelta(minutes=1)
    failures = overview["recent_failures"]
    assert [failure["id"] for failure in failures] == [last_failure, first_failure]
    assert failures[0]["error"] == "ValueError: <b>bad</b>"  # data, not markup: the page escapes


async def test_finished_totals_are_estimated_from_table_statistics(
    client: Client, db: asyncpg.Connection
) -> None:
    """All-time totals are not counted row by row; they come from PostgreSQL's statistics."""
    await db.execute(
        f"""
        INSERT INTO jobs (object_id, status, run_at, started_at, finished_at, attempts, error,
                          bucket)
        SELECT g, CASE WHEN g % 10 = 0 THEN 'FAILED' ELSE 'SUCCESS' END,
               now() - interval '1 day', now() - interval '1 day', now() - interval '1 day', 1,
               CASE WHEN g % 10 = 0 THEN 'boom' END, {bucket_of("'default'", "g")}
        FROM generate_series(1, 2000) AS g;
        ANALYZE jobs;
        """
    )
    # Autovacuum would analyze the table within a minute; the live-row count reaches the
    # statistics when this session goes idle, and this makes that happen at once.
    await db.execute("SELECT pg_stat_force_next_flush()")

    async def estimated() -> dict[str, Any] | None:
        counts: dict[str, Any] = (await get_json(client, "/overview"))["counts"]
        return counts if counts["SUCCESS"]["count"] else None

    counts = await eventually(estimated, timeout=15, interval=0.2)
    assert counts["SUCCESS"]["exact"] is False
    assert counts["SUCCESS"]["count"] == pytest.approx(1800, rel=0.05)
    assert counts["FAILED"]["count"] == pytest.approx(200, rel=0.05)


async def test_event_stream_shows_a_new_job_within_two_seconds_and_ends_at_shutdown(
    client: Client,
) -> None:
    response = await client.get("/overview/events")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    kind, first = await asyncio.wait_for(next_event(response.content), 5)
    assert kind == "overview"
    assert first["counts"]["PENDING"]["count"] == 0

    submitted = time.monotonic()
    assert (await client.post("/jobs", json={"object_id": 5})).status == 201
    while True:
        kind, overview = await asyncio.wait_for(next_event(response.content), 5)
        if overview["counts"]["PENDING"]["count"] == 1:
            break
    assert time.monotonic() - submitted < 2.0

    # Stopping the server ends the stream at once: shutdown does not wait for viewers.
    stopped = time.monotonic()
    closing = asyncio.create_task(client.server.close())
    rest = await asyncio.wait_for(response.content.read(), 5)
    await closing
    assert time.monotonic() - stopped < 3.0
    assert b"event: overview" not in rest.split(b"\n\n")[-1]


async def test_timeline_explains_why_each_job_waits(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    client = await make_client(concurrency=0, rate_window=60)
    jobs = [(await (await client.post("/jobs", json={"object_id": 7})).json()) for _ in range(3)]
    # The first ran at its slot, as a worker would have started it.
    await db.execute(
        """
        UPDATE jobs SET status = 'SUCCESS', started_at = run_at, finished_at = run_at,
                        attempts = 1 WHERE id = $1;
        """,
        jobs[0]["id"],
    )
    await db.execute(
        "INSERT INTO object_starts (object_id, last_started_at, bucket)"
        " SELECT 7, run_at, bucket FROM jobs WHERE id = $1",
        jobs[0]["id"],
    )
    await insert_attempt(db, jobs[0]["id"], 1, started=-0.01, finished=0.0, outcome="SUCCESS")

    timeline = await get_json(client, "/objects/7/timeline")

    assert timeline["object_id"] == 7
    assert timeline["last_start"] is not None
    waiting = timeline["waiting"]
    assert [job["id"] for job in waiting] == [jobs[1]["id"], jobs[2]["id"]]
    assert timeline["waiting_total"] == 2
    # Each waiting job holds the slot it was given at creation.
    assert [job["run_at"] for job in waiting] == [jobs[1]["run_at"], jobs[2]["run_at"]]
    head, behind = waiting[0]["wait"], waiting[1]["wait"]
    assert head["kind"] == "window"
    assert head["slot"] == jobs[1]["run_at"] == head["starts_at"]
    assert parse_time(head["slot"]) - parse_time(head["last_start"]) == timedelta(seconds=60)
    assert words(head["reason"]) == (
        "window: 1 start in the last 60 s (at most 1), the last at <time>; slot <time>"
    )
    assert behind.pop("reason") == [
        f"after job {jobs[1]['id']} (slot ",
        {"time": jobs[1]["run_at"]},
        "): jobs of an object start in slot order; slot ",
        {"time": jobs[2]["run_at"]},
    ]
    assert behind == {
        "kind": "queue",
        "slot": jobs[2]["run_at"],
        "starts_at": jobs[2]["run_at"],
        "last_start": head["last_start"],
        "after_job": jobs[1]["id"],
        "after_slot": jobs[1]["run_at"],
    }
    # A new job would queue a window after the last reserved slot.
    assert parse_time(timeline["next_free_slot"]) == parse_time(jobs[2]["run_at"]) + timedelta(
        seconds=60
    )
    [run] = timeline["runs"]
    assert (run["job_id"], run["attempt"], run["outcome"]) == (jobs[0]["id"], 1, "SUCCESS")


def test_a_late_start_holds_the_next_job_past_its_slot() -> None:
    """Workers fell behind: the last run started 30 s after its slot, so the next job, whose
    slot has come, still waits a full window after that start (I1)."""
    now = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
    slot = now - timedelta(seconds=5)
    late_start = now - timedelta(seconds=35)  # its own slot was 65 s ago
    limit = KeyLimit(window=60)
    late = KeyActivity(now, limit, late_start, [late_start], running=[])
    [wait] = explain_waits([{"id": 2, "run_at": slot}], late)
    assert (wait.kind, wait.slot) == ("window", slot)
    assert wait.starts_at == late_start + timedelta(seconds=60) > slot
    assert words(reason(wait, late, attempts=0)).endswith(
        "; the last starts were late, so not before <time>"
    )

    idle = KeyActivity(now, limit, None, [], running=[])
    [due] = explain_waits([{"id": 2, "run_at": slot}], idle)
    assert (due.kind, due.starts_at) == ("due", slot)


async def test_timeline_runs_show_the_gap_to_the_previous_start(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    client = await make_client(concurrency=0, rate_window=60)
    replica = await insert_worker(db, "web-1", 4242)
    job_ids = [
        await insert_job(db, 9, "SUCCESS", run_at=start, started=start, finished=start + 1)
        for start in (-300, -240, -230)
    ]
    for job_id, start in zip(job_ids, (-300, -240, -230), strict=True):
        await insert_attempt(
            db, job_id, 1, started=start, finished=start + 1, outcome="SUCCESS", worker_id=replica
        )

    runs = (await get_json(client, "/objects/9/timeline"))["runs"]

    assert [run["job_id"] for run in runs] == job_ids[::-1]
    assert [run["gap"] for run in runs] == [
        pytest.approx(10, abs=1),
        pytest.approx(60, abs=1),
        None,
    ]
    # 10 s after the previous start, with a 60 s window: the page flags it.
    assert [run["too_soon"] for run in runs] == [True, False, False]
    assert {run["replica"] for run in runs} == {"web-1:4242"}


async def test_replicas_are_listed_alive_or_dead(client: Client, db: asyncpg.Connection) -> None:
    await insert_worker(db, "web-1", 101, heartbeat=-2, running=3)
    await insert_worker(db, "web-2", 202, heartbeat=-60)

    workers = (await get_json(client, "/workers"))["workers"]

    assert [(w["host"], w["pid"], w["alive"]) for w in workers] == [
        ("web-1", 101, True),
        ("web-2", 202, False),
    ]
    assert workers[0]["running"] == 3
    assert workers[0]["concurrency"] == 8
    overview = await get_json(client, "/overview")
    assert overview["replicas"] == workers


@pytest.mark.parametrize("object_id", ["abc", "1.5", "99999999999999999999", "-"])
async def test_an_object_id_that_cannot_exist_is_404(client: Client, object_id: str) -> None:
    for path in (f"/objects/{object_id}", f"/objects/{object_id}/timeline"):
        problem = await get_json(client, path, status=404)
        assert "64-bit integers" in problem["detail"]


async def test_the_timeline_page_links_its_data_by_route(client: Client) -> None:
    response = await client.get("/objects/-42")
    assert response.status == 200
    page = await response.text()
    assert "<h1>Object -42, kind default</h1>" in page
    assert '"/objects/-42/timeline?kind=default"' in page
    assert (await get_json(client, "/objects/-42/timeline?kind=default"))["waiting"] == []


async def test_the_timeline_page_is_about_the_kind_in_its_address(client: Client) -> None:
    response = await client.get("/objects/-42", params={"kind": "notify.v2"})
    assert response.status == 200
    page = await response.text()
    assert "<h1>Object -42, kind notify.v2</h1>" in page
    assert '"/objects/-42/timeline?kind=notify.v2"' in page
    # The form to switch kinds sends the user back to this object's page.
    assert 'action="/objects/-42"' in page
    problem = await get_json(client, "/objects/-42?kind=%3Cb%3E", status=400)
    assert "kind must be a name" in problem["detail"]


async def reason_on_page(client: Client, object_id: int) -> tuple[str, str]:
    """The object page's limit sentence, and the reason of its first waiting job."""
    page = await (await client.get(f"/objects/{object_id}")).text()
    timeline = await get_json(client, f"/objects/{object_id}/timeline")
    limit = timeline["limit"]["text"]
    assert f'<p id="limit">{limit}</p>' in html.unescape(page)
    return limit, words(timeline["waiting"][0]["wait"]["reason"])


async def test_the_object_page_says_why_a_job_waits_under_its_keys_limit(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    client = await make_client(concurrency=0, rate_window=60)
    pool = client.app[POOL]
    # Object 21 has a limit of its own, 2 starts a minute; both were used in the last 10 s.
    await set_limit(pool, "default", 21, LimitFields(60, 2, 1))
    for ago in (10, 5):
        started = await insert_job(db, 21, "SUCCESS", run_at=-ago, started=-ago)
        await insert_attempt(db, started, 1, started=-ago, finished=-ago + 1)
    await insert_job(db, 21, run_at=50)
    # Object 22's slot has come, but its one running job (M = 1) has not finished.
    running = await insert_job(db, 22, "PROCESSING", run_at=-120, started=-120, attempts=1)
    await insert_job(db, 22, run_at=-1)
    # Object 23 is paused.
    await insert_job(db, 23, run_at=30)
    await pause(pool, "default", 23)
    # Object 24's job was scheduled for two minutes from now.
    scheduled = await insert_job(db, 24, run_at=120)
    await db.execute("UPDATE jobs SET not_before = run_at WHERE id = $1", scheduled)

    limit, said = await reason_on_page(client, 21)
    assert limit == (
        "At most 2 starts every 60 seconds and 1 running at once: this object's own limit "
        "(an override)."
    )
    assert said == "window: 2 starts in the last 60 s (at most 2); slot <time>"  # no last start

    limit, said = await reason_on_page(client, 22)
    assert (
        limit
        == "At most 1 start every 60 seconds and 1 running at once: the limit of kind default."
    )
    assert said == f"waits for job {running} to finish: 1 running, at most 1 at once"

    limit, said = await reason_on_page(client, 23)
    assert limit.startswith("Paused: nothing starts until it is resumed. At most 1 start")
    assert said == "paused (starts after resume)"
    paused = (await get_json(client, "/objects/23/timeline"))["waiting"][0]
    assert (paused["run_at"], paused["wait"]["slot"]) == (None, None)

    _, said = await reason_on_page(client, 24)
    assert said == "not before <time> (scheduled for then)"
    [job] = (await get_json(client, "/objects/24/timeline"))["waiting"]
    assert job["wait"]["reason"][1] == {"time": job["run_at"]} == {"time": job["not_before"]}


def text_of(page: str, start: str, end: str) -> str:
    """The text from the element that opens with `start` up to `end`, as a browser lays it out:
    inline tags dropped, the others (cells, items) apart."""
    found = page[page.index(start) :]
    inline = re.sub(r"</?(a|em|small)\b[^>]*>", "", found[: found.index(end)])
    return " ".join(re.sub(r"<[^>]+>", " ", inline).split())


async def test_the_index_page_shows_the_limits_in_the_database(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    client = await make_client(
        concurrency=0, rate_window=60, handlers="notify=tests.handlers:shout"
    )
    pool = client.app[POOL]
    await set_limit(pool, "notify", None, LimitFields(10, 5, 2))
    await set_limit(pool, "default", 31, LimitFields(3600, 2))
    await insert_job(db, 32, run_at=30)
    await pause(pool, "default", 32)

    page = html.unescape(await (await client.get("/")).text())

    # Each kind's limit: notify's own, and default's from PACELINE_RATE_WINDOW, with its two
    # overrides, one of which pauses its object.
    assert text_of(page, '<tr data-kind="notify">', "</tr>") == "notify 10 5 2 running 0 0"
    assert text_of(page, '<tr data-kind="default">', "</tr>") == "default 60 1 1 running 2 1"
    assert text_of(page, '<ul id="overrides">', "</ul>") == (
        "default object 31: 2 per 3600 s, 1 at once default object 32: 1 per 60 s, 1 at once, "
        "paused"
    )
    assert text_of(page, '<ul id="paused-keys">', "</ul>") == (
        "default object 32: 1 job waiting for the resume"
    )
    assert 'href="/objects/32?kind=default"' in page
    # The overview says the same to scripts, and its first slot is the paused job's: none.
    overview = await get_json(client, "/overview")
    assert [kind["kind"] for kind in overview["limits"]["kinds"]] == ["default", "notify"]
    assert overview["limits"]["paused_keys"][0]["object_id"] == 32
    assert overview["first_due"]["run_at"] is None
