"""A small async client for paceline's JSON API: submit, read, list, search, cancel, retry,
wait for a job; read and change limits.

    async with PacelineClient("http://127.0.0.1:8080", token=token) as paceline:
        job = await paceline.submit(7)
        done = await paceline.wait_until_done(job.id, timeout=600)

A refusal raises PacelineError, built from the server's problem document (RFC 9457); a 429
raises its subclass Busy, whose `retry_after` says when to ask again. Network failures are
aiohttp's own exceptions. Needs only aiohttp and paceline.contract (the standard library
alone), not the rest of paceline.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import email.utils
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import aiohttp
from yarl import URL

from paceline.contract import DEFAULT_KIND, FINISHED
from paceline.contract import OnBusyName as OnBusy

__all__ = ["FINISHED", "Busy", "Job", "OnBusy", "PacelineClient", "PacelineError"]
# An error quotes this much of an answer that is not a problem document (a proxy's page).
_EXCERPT_CHARS = 300


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """A job as the API shows it. `raw` is the whole document, fields added later included."""

    id: int
    object_id: int
    status: str
    timestamp: int  # created, whole UNIX seconds (the original service's integer column)
    created_at: datetime  # created, the precise instant
    run_at: datetime | None  # the earliest moment it may start; None while its key is paused
    started_at: datetime | None
    finished_at: datetime | None
    duration: float | None  # seconds its processing took
    attempts: int
    error: str | None
    raw: Mapping[str, Any] = dataclasses.field(repr=False, compare=False)
    kind: str = DEFAULT_KIND  # which handler runs it; the window is per (kind, object_id)
    payload: Any = None  # what it was given to work on (on_busy="append": a list of them)
    result: Any = None  # what its handler returned, once it succeeded
    not_before: datetime | None = None  # the earliest start the client chose, if any
    # `attempts` when it was last retried by hand (0: never); `attempts` counts every attempt,
    # PACELINE_MAX_ATTEMPTS those since the retry.
    attempts_at_retry: int = 0

    @property
    def done(self) -> bool:
        """SUCCESS, FAILED or CANCELLED: it will not change any more."""
        return self.status in FINISHED

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Job:
        """Build from the API's JSON for a job."""
        return cls(
            id=document["id"],
            object_id=document["object_id"],
            status=document["status"],
            timestamp=document["timestamp"],
            # A server from before `created_at` existed showed only `timestamp`.
            created_at=(
                datetime.fromisoformat(document["created_at"])
                if "created_at" in document
                else datetime.fromtimestamp(document["timestamp"], UTC)
            ),
            run_at=_optional_moment(document.get("run_at")),
            started_at=_optional_moment(document.get("started_at")),
            finished_at=_optional_moment(document.get("finished_at")),
            duration=document.get("duration"),
            attempts=document.get("attempts", 0),
            error=document.get("error"),
            raw=document,
            # A server from before kinds existed ran every job as the default kind.
            kind=document.get("kind", DEFAULT_KIND),
            payload=document.get("payload"),
            result=document.get("result"),
            not_before=_optional_moment(document.get("not_before")),
            attempts_at_retry=document.get("attempts_at_retry", 0),
        )


class PacelineError(Exception):
    """The API refused a request: the status and its problem document (`title`, `detail`)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        problem: dict[str, Any],
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.problem = problem
        # Seconds the server asked to wait (Retry-After), if it said.
        self.retry_after = retry_after


class Busy(PacelineError):
    """429: the server will not take this now (e.g. `on_busy="reject"` and a full backlog);
    `retry_after` says after how many seconds to ask again, if the server said."""


class PacelineClient:
    """The JSON API of one paceline service. Use as `async with`; a `session` passed in is
    used as is and left open."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        session: aiohttp.ClientSession | None = None,
        *,
        timeout: float = 30.0,
    ) -> None:
        self._base = URL(base_url)
        self._headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        self._session = session
        self._owns_session = session is None
        self._timeout = timeout

    async def __aenter__(self) -> Self:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session this client opened (not one it was given)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def submit(
        self,
        object_id: int,
        *,
        kind: str | None = None,
        payload: Any = None,
        on_busy: OnBusy | None = None,
        max_backlog: int | None = None,
        idempotency_key: str | None = None,
        not_before: datetime | float | None = None,
    ) -> Job:
        """Create a job of `kind` (default: `default`) for `object_id`, with `payload` (any
        JSON value, up to 64 KiB encoded); the options are sent only when given. With
        `on_busy="replace"` or `"append"` the answer may be the key's pending job, changed
        (`job.raw["coalesced"]` is then true). `not_before` (an aware datetime, or UNIX
        seconds): the job takes its key's first free slot at or after it."""
        body: dict[str, Any] = {"object_id": object_id}
        if kind is not None:
            body["kind"] = kind
        if payload is not None:
            body["payload"] = payload
        if on_busy is not None:
            body["on_busy"] = on_busy
        if max_backlog is not None:
            body["max_backlog"] = max_backlog
        if not_before is not None:
            body["not_before"] = (
                not_before.isoformat() if isinstance(not_before, datetime) else not_before
            )
        headers = {} if idempotency_key is None else {"Idempotency-Key": idempotency_key}
        return Job.from_json(await self._call("POST", "jobs", body=body, headers=headers))

    async def submit_batch(
        self,
        jobs: Sequence[int | Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> list[Job]:
        """Create 1 to 1000 jobs (repeats allowed) in one request and one statement, all or
        none; each an object id, or `{"object_id": n, "kind": ..., "payload": ...}`. The jobs
        come back in the order given, each in its (kind, object)'s next free slot. With
        `idempotency_key`, sending the same batch again returns the same jobs."""
        body = [{"object_id": job} if isinstance(job, int) else dict(job) for job in jobs]
        headers = {} if idempotency_key is None else {"Idempotency-Key": idempotency_key}
        answer = await self._call("POST", "jobs", body=body, headers=headers)
        return [Job.from_json(document) for document in answer["jobs"]]

    async def get(self, job_id: int) -> Job:
        """The job; PacelineError with status 404 if there is none."""
        return Job.from_json(await self._call("GET", "jobs", str(int(job_id))))

    async def cancel(self, job_id: int) -> Job:
        """Cancel a job that has not started; PacelineError 409 if it has, 404 if unknown."""
        return Job.from_json(await self._call("POST", "jobs", str(int(job_id)), "cancel"))

    async def retry(self, job_id: int) -> Job:
        """Run a FAILED or CANCELLED job again, at its object's next free slot; the job, now
        PENDING. PacelineError 409 if it is pending, running or succeeded, 404 if unknown."""
        return Job.from_json(await self._call("POST", "jobs", str(int(job_id)), "retry"))

    async def retry_all(
        self,
        status: str = "FAILED",
        *,
        kind: str | None = None,
        object_id: int | None = None,
        payload: Mapping[str, Any] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Run every job of `status` (FAILED or CANCELLED) that matches the filters again, each
        at its object's next free slot. Returns {"retried", "first_run_at", "last_run_at",
        "dry_run"}: with `dry_run`, what would be retried, and nothing is changed."""
        query = _filters(kind, object_id, status, payload)
        if dry_run:
            query["dry_run"] = "true"
        answer: dict[str, Any] = await self._call("POST", "jobs", "retry", query=query)
        return answer

    async def list(
        self,
        object_id: int | None = None,
        status: str | None = None,
        limit: int = 50,
        *,
        kind: str | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[Job]:
        """Jobs newest first, optionally of one kind, object and/or status, and whose payload
        contains `payload` (a JSON object), fetched `limit` (1-500) at a time; iterating
        follows `next_cursor` through every page."""
        query = {"limit": str(limit), **_filters(kind, object_id, status, payload)}
        while True:
            page = await self._call("GET", "jobs", query=query)
            for document in page["jobs"]:
                yield Job.from_json(document)
            if page.get("next_cursor") is None:
                return
            query["cursor"] = str(page["next_cursor"])

    async def wait_until_done(
        self,
        job_id: int,
        timeout: float,  # noqa: ASYNC109 - how long to wait is part of the question asked
        poll_interval: float = 0.1,
    ) -> Job:
        """Poll until the job is SUCCESS, FAILED or CANCELLED and return it; TimeoutError if
        it is not within `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout) as deadline:
                while True:
                    job = await self.get(job_id)
                    if job.done:
                        return job
                    await asyncio.sleep(poll_interval)
        except TimeoutError:
            if deadline.expired():
                raise TimeoutError(f"job {job_id} did not finish within {timeout:g}s") from None
            raise

    async def limits(self) -> builtins.list[dict[str, Any]]:  # `list` is a method here
        """Every kind's limit (GET /limits): window, limit, max_running, paused, and `set`,
        what the kind's own row sets (null: inherited)."""
        answer = await self._call("GET", "limits")
        found: builtins.list[dict[str, Any]] = answer["limits"]
        return found

    async def limit(self, kind: str, object_id: int | None = None) -> dict[str, Any]:
        """A kind's limit, or one (kind, object)'s (its override over its kind's)."""
        limit: dict[str, Any] = await self._call("GET", *_limit_path(kind, object_id))
        return limit

    async def set_limit(
        self,
        kind: str,
        object_id: int | None = None,
        *,
        window: float | None = None,
        limit: int | None = None,
        max_running: int | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Set a kind's limit or override one object's (None: inherited); the key's waiting
        jobs are re-planned at once. Returns {"limit", "dry_run", "moved", "changes"}: with
        `dry_run`, what would move, and nothing is written."""
        body = {"window": window, "limit": limit, "max_running": max_running}
        return await self._change("PUT", kind, object_id, dry_run=dry_run, body=body)

    async def drop_limit(
        self, kind: str, object_id: int | None = None, *, dry_run: bool = False
    ) -> dict[str, Any]:
        """Drop a kind's own limit or an object's override: it inherits again."""
        return await self._change("DELETE", kind, object_id, dry_run=dry_run)

    async def pause(
        self, kind: str, object_id: int | None = None, *, dry_run: bool = False
    ) -> dict[str, Any]:
        """Pause a kind or one object: nothing of it starts; its waiting jobs' run_at is null."""
        return await self._change("POST", kind, object_id, "pause", dry_run=dry_run)

    async def resume(
        self, kind: str, object_id: int | None = None, *, dry_run: bool = False
    ) -> dict[str, Any]:
        """Resume a kind or one object: its waiting jobs are planned from now, by the limit."""
        return await self._change("POST", kind, object_id, "resume", dry_run=dry_run)

    async def _change(
        self,
        method: str,
        kind: str,
        object_id: int | None,
        *action: str,
        dry_run: bool,
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        query = {"dry_run": "true"} if dry_run else None
        path = (*_limit_path(kind, object_id), *action)
        answer: dict[str, Any] = await self._call(method, *path, body=body, query=query)
        return answer

    async def _call(
        self,
        method: str,
        *path: str,
        body: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        if self._session is None:
            raise RuntimeError("use the client as `async with PacelineClient(...) as client`")
        url = self._base.joinpath(*path)
        async with self._session.request(
            method, url, json=body, params=query, headers={**self._headers, **(headers or {})}
        ) as response:
            if response.status >= 400:
                raise await _error(response)
            return await response.json(content_type=None)


async def _error(response: aiohttp.ClientResponse) -> PacelineError:
    text = (await response.read()).decode("utf-8", "replace")
    problem: dict[str, Any] = {}
    if response.content_type.endswith("json"):
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        if isinstance(document, dict):
            problem = document
    reason = response.reason or "Error"
    excerpt = " ".join(text.split())[:_EXCERPT_CHARS]
    title = str(problem.get("title") or reason)
    detail = str(problem.get("detail") or excerpt or reason)
    kind = Busy if response.status == 429 else PacelineError
    return kind(
        response.status,
        title,
        detail,
        problem or {"status": response.status, "title": title, "detail": detail},
        retry_after=_retry_after(response.headers.get("Retry-After")),
    )


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (it may be a number of seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - time.time())


def _filters(
    kind: str | None, object_id: int | None, status: str | None, payload: Mapping[str, Any] | None
) -> dict[str, str]:
    """The query of GET /jobs and POST /jobs/retry (the payload as compact JSON)."""
    query: dict[str, str] = {}
    if kind is not None:
        query["kind"] = kind
    if object_id is not None:
        query["object_id"] = str(object_id)
    if status is not None:
        query["status"] = status
    if payload is not None:
        query["payload"] = json.dumps(payload, separators=(",", ":"))
    return query


def _limit_path(kind: str, object_id: int | None) -> tuple[str, ...]:
    if object_id is None:
        return ("limits", kind)
    return ("limits", kind, "objects", str(int(object_id)))


def _optional_moment(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)
