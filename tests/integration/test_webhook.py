"""The webhook handler: jobs POSTed, signed, to a real local receiver, through the real app."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from email.utils import format_datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from paceline.config import ConfigError, Settings
from paceline.db.embedded import free_port
from paceline.queue import webhook
from paceline.queue.handlers import resolve_handler
from paceline.queue.webhook import WebhookHandler, retry_after_seconds, sign, verify_signature
from tests.conftest import MakeClient
from tests.support import ROOT, attempts_of, eventually, post, wait_until_finished

Client = TestClient[Any, Any]
SECRET = "whsec-test-0123456789abcdef"


@dataclasses.dataclass(frozen=True)
class Reply:
    """What the receiver answers to one request."""

    status: int = 200
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: str = ""
    hang: bool = False  # answer nothing until the test ends


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One request the receiver got."""

    body: bytes
    headers: CIMultiDict[str]
    received: float  # time.monotonic()

    @property
    def job(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.body)
        return document


class Receiver:
    """A webhook receiver on 127.0.0.1: records every request, answers from a script (then 200)."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.replies: list[Reply] = []
        self.url = ""
        self.released = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.deliveries.append(Delivery(body, CIMultiDict(request.headers), time.monotonic()))
        reply = self.replies.pop(0) if self.replies else Reply()
        if reply.hang:
            await self.released.wait()
        return web.Response(status=reply.status, headers=reply.headers, text=reply.body)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/paceline", receiver.handle)
    server = TestServer(app, host="127.0.0.1")  # a free port
    await server.start_server()
    receiver.url = str(server.make_url("/hooks/paceline"))
    yield receiver
    receiver.released.set()
    await server.close()


async def start(make_client: MakeClient, receiver: Receiver, **changes: Any) -> Client:
    """The app with workers running the webhook handler against `receiver`."""
    options: dict[str, Any] = {
        "handler": "webhook",
        "webhook_url": receiver.url,
        "webhook_secret": SECRET,
        "retry_backoff": 0.05,
        **changes,
    }
    return await make_client(**options)


def signed_at(header: str) -> int:
    match = re.fullmatch(r"t=(\d+),v1=[0-9a-f]{64}", header)
    assert match is not None, header
    return int(match.group(1))


async def test_a_job_is_posted_signed_and_succeeds_on_2xx(
    receiver: Receiver, make_client: MakeClient, database_url: str
) -> None:
    client = await start(make_client, receiver)
    job = await post(client, 7)
    rows = await wait_until_finished(database_url, 1, timeout=10)
    assert (rows[0]["status"], rows[0]["attempts"]) == ("SUCCESS", 1)

    [delivery] = receiver.deliveries
    # The body is the job as the API shows it, as it runs.
    assert delivery.job.keys() == job.keys()
    assert delivery.job["id"] == job["id"]
    assert (delivery.job["object_id"], delivery.job["status"]) == (7, "PROCESSING")
    assert delivery.job["attempts"] == 1
    headers = delivery.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["Paceline-Job-Id"] == str(job["id"])
    assert headers["Paceline-Attempt"] == "1"
    assert headers["Idempotency-Key"] == str(job["id"])

    signature = headers["Paceline-Signature"]
    assert abs(signed_at(signature) - time.time()) < 10
    assert verify_signature(SECRET, delivery.body, signature)
    assert verify_signature(SECRET.encode(), delivery.body, signature)
    tampered = delivery.body.replace(b'"object_id":7', b'"object_id":8')
    assert tampered != delivery.body
    assert not verify_signature(SECRET, tampered, signature)
    assert not verify_signature("another-secret-entirely", delivery.body, signature)


@pytest.mark.parametrize(
    ("reply", "result"),
    [
        (
            Reply(headers={"Content-Type": "application/json"}, body='{"ticket": 812}'),
            {"ticket": 812},
        ),
        (Reply(body="thanks!"), None),
        (Reply(status=204), None),
        (Reply(body=json.dumps("x" * 70_000)), None),
    ],
    ids=["json", "text", "empty", "too-big"],
)
async def test_the_receivers_json_answer_is_the_result_and_the_payload_is_sent(
    receiver: Receiver, make_client: MakeClient, reply: Reply, result: Any
) -> None:
    receiver.replies.append(reply)
    client = await start(make_client, receiver, handler="noop", handlers="notify=webhook")
    response = await client.post(
        "/jobs", json={"object_id": 3, "kind": "notify", "payload": {"to": "ops", "n": [1, 2]}}
    )
    created = await response.json()

    async def done() -> dict[str, Any] | None:
        job: dict[str, Any] = await (await client.get(f"/jobs/{created['id']}")).json()
        return job if job["status"] == "SUCCESS" else None

    job = await eventually(done, timeout=10)
    assert job["result"] == result
    [delivery] = receiver.deliveries
    assert (delivery.job["kind"], delivery.job["payload"]) == ("notify", {"to": "ops", "n": [1, 2]})


def test_a_stale_or_malformed_signature_is_refused() -> None:
    body = b'{"id":1}'
    sent = 1_800_000_000
    header = sign(SECRET, body, sent)
    assert verify_signature(SECRET, body, header, now=sent + 299)
    assert not verify_signature(SECRET, body, header, now=sent + 301), "replayed too late"
    assert not verify_signature(SECRET, body, header, now=sent - 301), "from the future"
    assert not verify_signature(SECRET, body, header, tolerance=10, now=sent + 11)
    digest = header.partition(",v1=")[2]
    # Rotating secrets: several v1 values, one of them right.
    assert verify_signature(SECRET, body, f"t={sent},v1={'0' * 64},v1={digest}", now=sent)
    for malformed in ["", f"v1={digest}", f"t={sent}", f"t=soon,v1={digest}", f"t={sent},v1=é"]:
        assert not verify_signature(SECRET, body, malformed, now=sent), malformed
    # Two timestamps: which one was signed is ambiguous, so neither is trusted.
    assert not verify_signature(SECRET, body, f"t={sent},{header}", now=sent)


def readme_recipe() -> Callable[..., bool]:
    """The `verify` function of README.md's "Webhook handler" section, as a reader copies it."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Webhook handler", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None, "the section shows a Python recipe"
    namespace: dict[str, Any] = {}
    exec(compile(code.group(1), "README.md", "exec"), namespace)
    verify: Callable[..., bool] = namespace["verify"]
    return verify


async def test_the_readme_recipe_verifies_a_delivery(
    receiver: Receiver, make_client: MakeClient, database_url: str
) -> None:
    verify = readme_recipe()
    client = await start(make_client, receiver)
    await post(client, 3)
    await wait_until_finished(database_url, 1, timeout=10)
    [delivery] = receiver.deliveries
    signature = delivery.headers["Paceline-Signature"]
    assert verify(SECRET, delivery.body, signature)
    assert not verify(SECRET, delivery.body + b" ", signature)
    assert not verify("another-secret-entirely", delivery.body, signature)
    stale = sign(SECRET, delivery.body, int(time.time()) - 301)
    assert not verify(SECRET, delivery.body, stale)
    assert not verify(SECRET, delivery.body, "v1=" + signature.partition("v1=")[2])


async def test_429_with_retry_after_moves_the_job_and_its_objects_later_jobs(
    receiver: Receiver, make_client: MakeClient, database_url: str, db: asyncpg.Connection
) -> None:
    window = 0.5
    api = await make_client(concurrency=0, rate_window=window)
    first, second = await post(api, 9), await post(api, 9)
    receiver.replies.append(Reply(429, {"Retry-After": "1"}, "slow down"))
    await start(make_client, receiver, rate_window=window, max_attempts=3)

    async def retry_pending() -> asyncpg.Record | None:
        row = await db.fetchrow("SELECT * FROM jobs WHERE id = $1", first["id"])
        assert row is not None
        return row if row["status"] == "PENDING" and row["attempts"] == 1 else None

    requeued = await eventually(retry_pending, timeout=5)
    assert "answered 429: slow down (Retry-After: 1s)" in requeued["error"]
    [attempt] = await attempts_of(db, first["id"])
    # 1 s after the requeue began, which was after the 429 arrived.
    assert requeued["run_at"] >= attempt["started_at"] + timedelta(seconds=1)
    # The job behind it moved back: still a window after the retried one, later than promised.
    moved = await db.fetchval("SELECT run_at FROM jobs WHERE id = $1", second["id"])
    assert moved >= requeued["run_at"] + timedelta(seconds=window)
    assert moved > datetime.fromisoformat(second["run_at"])

    rows = await wait_until_finished(database_url, 2, timeout=10)
    assert [(row["status"], row["attempts"]) for row in rows] == [("SUCCESS", 2), ("SUCCESS", 1)]
    order = [(d.job["id"], d.headers["Paceline-Attempt"]) for d in receiver.deliveries]
    assert order == [(first["id"], "1"), (first["id"], "2"), (second["id"], "1")]
    # As the receiver saw it: the retry came no sooner than it asked.
    assert receiver.deliveries[1].received - receiver.deliveries[0].received >= 1.0
    history = await attempts_of(db, first["id"])
    assert history[1]["started_at"] >= requeued["run_at"]


@pytest.mark.parametrize(
    ("reply", "said"),
    [
        (Reply(400, body="unknown object " + "x" * 5000), "answered 400: unknown object xxx"),
        (Reply(404), "answered 404"),
        (
            Reply(301, {"Location": "https://elsewhere.example/new?key=k"}),
            "answered 301 (redirects to https://elsewhere.example are not followed)",
        ),
    ],
)
async def test_a_refusal_fails_the_job_at_once_with_the_status(
    receiver: Receiver,
    make_client: MakeClient,
    database_url: str,
    reply: Reply,
    said: str,
) -> None:
    receiver.replies.append(reply)
    # A credential in the URL's path or query must not end up in the job's error.
    receiver.url += "?token=s3cret-in-query"
    await post(await start(make_client, receiver, max_attempts=5), 1)
    rows = await wait_until_finished(database_url, 1, timeout=10)
    assert (rows[0]["status"], rows[0]["attempts"]) == ("FAILED", 1)
    error = rows[0]["error"]
    origin = receiver.url.split("/hooks")[0]
    assert error.startswith(f"PermanentFailure: {origin} {said}")
    assert "s3cret" not in error
    assert "/hooks/paceline" not in error
    assert len(error) < 400, "a long answer is cut short"
    assert error.endswith("…") == (reply.status == 400)
    assert len(receiver.deliveries) == 1


@pytest.mark.parametrize(
    "case",
    [
        (Reply(500, body="boom"), "answered 500: boom"),
        (Reply(503), "answered 503"),
        (Reply(429, body="busy"), "answered 429: busy"),
        (Reply(429, {"Retry-After": "soon"}), "answered 429"),
    ],
    ids=["500", "503-without-retry-after", "429-without-retry-after", "unreadable-retry-after"],
)
async def test_server_errors_are_retried_with_backoff(
    receiver: Receiver,
    make_client: MakeClient,
    database_url: str,
    db: asyncpg.Connection,
    case: tuple[Reply, str],
) -> None:
    reply, said = case
    receiver.replies.append(reply)
    job = await post(await start(make_client, receiver, max_attempts=3), 1)
    rows = await wait_until_finished(database_url, 1, timeout=10)
    assert (rows[0]["status"], rows[0]["attempts"]) == ("SUCCESS", 2)
    history = await attempts_of(db, job["id"])
    assert [row["outcome"] for row in history] == ["RETRY", "SUCCESS"]
    assert history[0]["error"].startswith("WebhookError: http://127.0.0.1:")
    assert history[0]["error"].endswith(said)
    assert len(receiver.deliveries) == 2


async def test_a_receiver_that_hangs_past_the_timeout_is_retried(
    receiver: Receiver, make_client: MakeClient, database_url: str, db: asyncpg.Connection
) -> None:
    receiver.replies.append(Reply(hang=True))
    client = await start(make_client, receiver, webhook_timeout=0.3, max_attempts=2)
    job = await post(client, 1)
    rows = await wait_until_finished(database_url, 1, timeout=10)
    assert (rows[0]["status"], rows[0]["attempts"]) == ("SUCCESS", 2)
    first = (await attempts_of(db, job["id"]))[0]
    assert "did not answer within PACELINE_WEBHOOK_TIMEOUT=0.3s" in first["error"]
    waited = first["finished_at"] - first["started_at"]
    assert timedelta(seconds=0.3) <= waited < timedelta(seconds=3)


async def test_an_unreachable_receiver_fails_after_the_last_attempt(
    make_client: MakeClient, database_url: str
) -> None:
    client = await make_client(
        handler="webhook",
        webhook_url=f"http://127.0.0.1:{free_port()}/hooks",
        retry_backoff=0.05,
        max_attempts=2,
    )
    await post(client, 1)
    rows = await wait_until_finished(database_url, 1, timeout=10)
    assert (rows[0]["status"], rows[0]["attempts"]) == ("FAILED", 2)
    assert rows[0]["error"].startswith("WebhookError: POST to http://127.0.0.1:")
    assert "Cannot connect" in rows[0]["error"]


async def test_stopping_the_app_closes_the_handlers_http_session(
    receiver: Receiver,
    make_client: MakeClient,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed: list[bool] = []
    original = WebhookHandler.aclose

    async def aclose(self: WebhookHandler) -> None:
        session = self._session
        await original(self)
        closed.append(session is not None and session.closed)

    monkeypatch.setattr(WebhookHandler, "aclose", aclose)
    client = await start(make_client, receiver)
    await post(client, 1)
    await wait_until_finished(database_url, 1, timeout=10)
    await client.close()
    assert closed == [True]


def test_retry_after_is_seconds_or_an_http_date() -> None:
    now = 1_800_000_000.0
    in_30s = format_datetime(datetime.fromtimestamp(now + 30).astimezone(), usegmt=False)
    assert retry_after_seconds("1", now=now) == 1.0
    assert retry_after_seconds(" 2.5 ", now=now) == 2.5
    assert retry_after_seconds(in_30s, now=now) == pytest.approx(30)
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0
    assert retry_after_seconds("99999999", now=now) == 86400.0, "at most a day"
    for unreadable in [None, "", "soon", "-1", "inf", "nan", "1e3"]:
        assert retry_after_seconds(unreadable, now=now) is None, unreadable


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"handler": "webhook"}, "PACELINE_HANDLER=webhook needs PACELINE_WEBHOOK_URL"),
        ({"webhook_url": "ftp://example.com/hook"}, "PACELINE_WEBHOOK_URL must be an http"),
        ({"webhook_url": "example.com/hook"}, "PACELINE_WEBHOOK_URL must be an http"),
        ({"webhook_url": "http://[::1/hook"}, "PACELINE_WEBHOOK_URL must be an http"),
        ({"webhook_timeout": 0}, "PACELINE_WEBHOOK_TIMEOUT must be a positive"),
    ],
)
def test_bad_webhook_settings_name_their_variable(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(**changes)


def test_webhook_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "PACELINE_HANDLER": "webhook",
            "PACELINE_WEBHOOK_URL": "https://hooks.example.com/paceline",
            "PACELINE_WEBHOOK_SECRET": SECRET,
            "PACELINE_WEBHOOK_TIMEOUT": "2.5",
        }
    )
    assert settings.webhook_url == "https://hooks.example.com/paceline"
    assert (settings.webhook_secret, settings.webhook_timeout) == (SECRET, 2.5)
    assert SECRET not in repr(settings)
    assert Settings().webhook_timeout == 10
    assert isinstance(resolve_handler(settings), webhook.WebhookHandler)
