"""The Python client against the real app; a stub stands in for answers the app cannot give yet."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from paceline.client import Busy, Job, PacelineClient, PacelineError
from tests.conftest import MakeClient

Client = TestClient[Any, Any]
TOKEN = "correct-horse-battery-staple"


def base_url(server: Client | TestServer) -> str:
    return str(server.make_url(""))


async def test_retry_retry_all_and_search_by_payload(make_client: MakeClient) -> None:
    server = await make_client(concurrency=0, rate_window=60)
    async with PacelineClient(base_url(server)) as paceline:
        first = await paceline.submit(5, payload={"customer": 42})
        second = await paceline.submit(5, payload={"customer": 42})
        await paceline.submit(6, payload={"customer": 7})
        found = [job.id async for job in paceline.list(payload={"customer": 42})]
        assert found == [second.id, first.id]

        await paceline.cancel(second.id)
        retried = await paceline.retry(second.id)
        assert (retried.status, retried.attempts_at_retry) == ("PENDING", 0)
        assert retried.run_at is not None
        assert first.run_at is not None
        assert retried.run_at - first.run_at == timedelta(seconds=60)
        with pytest.raises(PacelineError) as refused:
            await paceline.retry(first.id)
        assert refused.value.status == 409

        await paceline.cancel(second.id)
        preview = await paceline.retry_all("CANCELLED", object_id=5, dry_run=True)
        assert (preview["retried"], preview["dry_run"]) == (1, True)
        assert (await paceline.get(second.id)).status == "CANCELLED"
        done = await paceline.retry_all("CANCELLED", payload={"customer": 42})
        assert done["retried"] == 1
        assert (await paceline.get(second.id)).status == "PENDING"


async def test_submit_get_and_cancel(make_client: MakeClient) -> None:
    server = await make_client(concurrency=0, rate_window=60)
    async with PacelineClient(base_url(server)) as paceline:
        first = await paceline.submit(5)
        second = await paceline.submit(5)
        assert isinstance(first, Job)
        assert (first.object_id, first.status, first.attempts) == (5, "PENDING", 0)
        # The original's integer seconds, and the precise instant beside it.
        assert type(first.timestamp) is int
        assert first.timestamp == int(first.created_at.timestamp() // 1)
        assert first.run_at == first.created_at  # a fresh object starts at once
        assert not first.done
        # run_at arrives as a datetime: the second job waits a window after the first.
        assert first.run_at is not None
        assert second.run_at is not None
        assert second.run_at - first.run_at == timedelta(seconds=60)
        assert await paceline.get(first.id) == first

        cancelled = await paceline.cancel(second.id)
        assert (cancelled.id, cancelled.status, cancelled.done) == (second.id, "CANCELLED", True)
        assert cancelled.finished_at is not None

        with pytest.raises(PacelineError) as again:
            await paceline.cancel(second.id)
        assert again.value.status == 409
        assert again.value.detail == (
            f"Job {second.id} is CANCELLED; only a PENDING job can be cancelled."
        )
        assert again.value.problem["job"]["status"] == "CANCELLED"

        with pytest.raises(PacelineError) as missing:
            await paceline.get(987654)
        assert (missing.value.status, missing.value.title) == (404, "Not found")
        assert missing.value.detail == "There is no job 987654."
        assert str(missing.value) == "404 Not found: There is no job 987654."
        assert not isinstance(missing.value, Busy)


async def test_submit_batch_returns_the_jobs_in_the_order_sent(make_client: MakeClient) -> None:
    server = await make_client(concurrency=0, rate_window=60)
    async with PacelineClient(base_url(server)) as paceline:
        ahead = await paceline.submit(8)
        created = await paceline.submit_batch([8, 9, 8])
        assert [job.object_id for job in created] == [8, 9, 8]
        # Object 8 repeats: its jobs take the next two slots after the one already waiting.
        assert ahead.run_at is not None
        assert created[0].run_at is not None
        assert created[2].run_at is not None
        assert created[0].run_at - ahead.run_at == timedelta(seconds=60)
        assert created[2].run_at - created[0].run_at == timedelta(seconds=60)
        assert [await paceline.get(job.id) for job in created] == created

        with pytest.raises(PacelineError) as empty:
            await paceline.submit_batch([])
        assert empty.value.status == 422

        # With a key, sending the batch again returns the same jobs instead of new ones.
        keyed = await paceline.submit_batch([10, 10], idempotency_key="nightly-2026-12-04")
        again = await paceline.submit_batch([10, 10], idempotency_key="nightly-2026-12-04")
        assert again == keyed


async def test_list_follows_the_cursor_through_every_page(make_client: MakeClient) -> None:
    server = await make_client(concurrency=0)
    requested: list[URL] = []

    async def on_request_start(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: Any
    ) -> None:
        requested.append(params.url)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        async with PacelineClient(base_url(server), session=session) as paceline:
            ids = [(await paceline.submit(3)).id for _ in range(5)]
            other = await paceline.submit(4)
            cancelled = await paceline.cancel(ids[1])
            requested.clear()

            listed = [job.id async for job in paceline.list(object_id=3, limit=2)]
            assert listed == ids[::-1], "newest first, all five"
            assert len(requested) == 3, "three pages of two"
            # Each page's cursor names its last job (on a cluster, with its created_at).
            cursors = [url.query.get("cursor") for url in requested]
            assert [None if c is None else c.split(".")[0] for c in cursors] == [
                None,
                str(ids[3]),
                str(ids[1]),
            ]

            everything = [job.id async for job in paceline.list()]
            assert everything == [other.id, *ids[::-1]]
            assert [job async for job in paceline.list(status="CANCELLED")] == [cancelled]
            assert [job async for job in paceline.list(object_id=99)] == []
        # A session passed in is the caller's: still open.
        assert not session.closed


async def test_wait_until_done_returns_the_finished_job(make_client: MakeClient) -> None:
    server = await make_client(handler="noop")
    async with PacelineClient(base_url(server)) as paceline:
        job = await paceline.submit(8)
        done = await paceline.wait_until_done(job.id, timeout=10, poll_interval=0.02)
    assert (done.id, done.status, done.attempts) == (job.id, "SUCCESS", 1)
    assert done.started_at is not None
    assert done.run_at is not None
    assert done.started_at >= done.run_at
    assert done.duration is not None


async def test_wait_until_done_gives_up_after_its_timeout(make_client: MakeClient) -> None:
    server = await make_client(concurrency=0)  # nothing runs the job
    async with PacelineClient(base_url(server)) as paceline:
        job = await paceline.submit(8)
        with pytest.raises(TimeoutError, match=f"job {job.id} did not finish within 0.3s"):
            await paceline.wait_until_done(job.id, timeout=0.3, poll_interval=0.05)
        assert (await paceline.get(job.id)).status == "PENDING"


async def test_refusals_carry_the_servers_problem(make_client: MakeClient) -> None:
    server = await make_client(concurrency=0)
    async with PacelineClient(base_url(server)) as paceline:
        with pytest.raises(PacelineError) as too_big:
            await paceline.submit(2**63)
        assert too_big.value.status == 422
        assert too_big.value.detail.startswith("object_id must be between")
        assert too_big.value.problem["invalid_params"][0]["name"] == "object_id"

        with pytest.raises(PacelineError) as bad_limit:
            _ = [job async for job in paceline.list(limit=1000)]
        assert bad_limit.value.status == 400
        assert bad_limit.value.detail == "limit must be an integer from 1 to 500 (got '1000')."
        assert [job async for job in paceline.list()] == [], "nothing was created"


async def test_the_token_is_sent_when_given(make_client: MakeClient) -> None:
    server = await make_client(concurrency=0, api_token=TOKEN)
    async with PacelineClient(base_url(server)) as anonymous:
        with pytest.raises(PacelineError) as refused:
            await anonymous.submit(1)
    assert refused.value.status == 401
    assert "Authorization: Bearer" in refused.value.detail

    async with PacelineClient(base_url(server), token=TOKEN) as paceline:
        job = await paceline.submit(1)
        assert [listed.id async for listed in paceline.list()] == [job.id]
        assert (await paceline.cancel(job.id)).status == "CANCELLED"

    async with PacelineClient(base_url(server), token="not-" + TOKEN) as impostor:
        with pytest.raises(PacelineError) as wrong:
            await impostor.get(job.id)
    assert wrong.value.status == 401


# --- answers the app does not give yet (backlog policies, idempotency): a stub server.

JOB = {
    "id": 17,
    "object_id": 1,
    "status": "PENDING",
    "timestamp": 1795958929,
    "created_at": "2026-11-29T13:28:49.462456Z",
    "run_at": "2026-11-29T13:28:49.462456Z",
    "started_at": None,
    "finished_at": None,
    "duration": None,
    "attempts": 0,
    "error": None,
}


class Stub:
    """Records each request; answers with the next scripted response."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.responses: list[web.Response] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((await request.json(), dict(request.headers)))
        return self.responses.pop(0)


@pytest.fixture
async def stub() -> AsyncIterator[tuple[Stub, str]]:
    stub = Stub()
    app = web.Application()
    app.router.add_post("/jobs", stub.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield stub, base_url(server)
    await server.close()


def answer(status: int, document: dict[str, Any], **headers: str) -> web.Response:
    content_type = "application/json" if status < 400 else "application/problem+json"
    return web.Response(
        status=status, text=json.dumps(document), content_type=content_type, headers=headers
    )


async def test_backlog_and_idempotency_options_are_sent_only_when_given(
    stub: tuple[Stub, str],
) -> None:
    server, url = stub
    coalesced = {**JOB, "coalesced": True}  # a field this client does not know yet
    server.responses += [answer(201, JOB), answer(200, coalesced)]
    async with PacelineClient(url) as paceline:
        plain = await paceline.submit(1)
        again = await paceline.submit(
            1, on_busy="coalesce", max_backlog=3, idempotency_key="order-17"
        )
    (body, headers), (body_with, headers_with) = server.requests
    assert body == {"object_id": 1}
    assert "Idempotency-Key" not in headers
    assert body_with == {"object_id": 1, "on_busy": "coalesce", "max_backlog": 3}
    assert headers_with["Idempotency-Key"] == "order-17"
    assert plain == again, "200 (an existing job) reads like 201"
    assert again.raw["coalesced"] is True


async def test_429_raises_busy_with_retry_after(stub: tuple[Stub, str]) -> None:
    server, url = stub
    detail = "Object 1 already has 3 jobs waiting (max_backlog=3); nothing was created."
    problem = {"type": "about:blank", "title": "Too many requests", "status": 429, "detail": detail}
    server.responses.append(answer(429, problem, **{"Retry-After": "7"}))
    async with PacelineClient(url) as paceline:
        with pytest.raises(Busy) as busy:
            await paceline.submit(1, on_busy="reject", max_backlog=3)
    assert isinstance(busy.value, PacelineError)
    assert (busy.value.status, busy.value.retry_after) == (429, 7.0)
    assert (busy.value.title, busy.value.detail) == ("Too many requests", detail)
    assert busy.value.problem == problem


async def test_an_answer_that_is_not_a_problem_still_says_what_happened(
    stub: tuple[Stub, str],
) -> None:
    server, url = stub
    server.responses.append(
        web.Response(
            status=502, text="<html><h1>Bad gateway</h1>\n</html>", content_type="text/html"
        )
    )
    async with PacelineClient(url) as paceline:
        with pytest.raises(PacelineError) as failed:
            await paceline.submit(1)
    assert (failed.value.status, failed.value.title) == (502, "Bad Gateway")
    assert failed.value.detail == "<html><h1>Bad gateway</h1> </html>"
    assert failed.value.retry_after is None


async def test_the_client_must_be_entered(stub: tuple[Stub, str]) -> None:
    _server, url = stub
    with pytest.raises(RuntimeError, match="async with"):
        await PacelineClient(url).submit(1)


async def test_limits_are_read_and_changed_through_the_client(make_client: MakeClient) -> None:
    server = await make_client(concurrency=0, rate_window=60)
    async with PacelineClient(base_url(server)) as paceline:
        first = await paceline.submit(4)
        second = await paceline.submit(4)
        assert [limit["kind"] for limit in await paceline.limits()] == ["default"]

        planned = await paceline.set_limit("default", 4, limit=2, dry_run=True)
        assert (planned["dry_run"], planned["moved"]) == (True, 1)
        assert (await paceline.get(second.id)).run_at == second.run_at  # nothing written

        done = await paceline.set_limit("default", 4, limit=2)
        assert done["limit"]["set"]["limit"] == 2
        moved = await paceline.get(second.id)
        assert moved.run_at is not None
        assert first.run_at is not None
        assert moved.run_at - first.run_at < timedelta(seconds=60)
        assert (await paceline.limit("default", 4))["limit"] == 2

        paused = await paceline.pause("default", 4)
        assert paused["limit"]["paused"] is True
        assert (await paceline.get(second.id)).run_at is None
        await paceline.resume("default", 4)
        assert (await paceline.get(second.id)).run_at is not None

        await paceline.drop_limit("default", 4)
        assert (await paceline.limit("default", 4))["set"] is None
        with pytest.raises(PacelineError) as refused:
            await paceline.drop_limit("default")
        assert refused.value.status == 409
