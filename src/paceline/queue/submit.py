"""Admitting a job under a backlog policy and an optional idempotency key.

`queue` (the default) with no cap and no key is the one-statement enqueue. Everything else
runs in a transaction that first takes the key's slot row lock (a key is a (kind, object_id);
concurrent requests for one key, on any replica, decide one after the other on what the
previous ones committed), then decides, then enqueues, changes the key's pending job
(`coalesce`, `replace`, `append`) or refuses; a refusal rolls back and leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import asyncpg

from paceline import contract
from paceline.contract import DEFAULT_KIND, MAX_APPENDED, MAX_PAYLOAD_BYTES
from paceline.db import slots
from paceline.db.pool import Connection, in_transaction
from paceline.queue.grouping import EnqueueGrouper
from paceline.queue.jobs import Job, NewJob, finite, get_job, get_jobs
from paceline.queue.scheduling import create, create_in, create_many, next_free

T = TypeVar("T")

# How long an Idempotency-Key returns the same job.
IDEMPOTENCY_TTL = 24 * 3600.0


# What a request wants when its key's window is busy (queue, coalesce, reject, replace, append).
OnBusy = contract.OnBusy


@dataclasses.dataclass(frozen=True)
class Submission:
    """A validated POST /jobs."""

    object_id: int
    on_busy: OnBusy = OnBusy.QUEUE
    max_backlog: int | None = None
    idempotency_key: str | None = None
    kind: str = DEFAULT_KIND
    # Compact JSON text (the validation wrote it), or None for no payload.
    payload_json: str | None = None
    # The client's earliest start, if it chose one.
    not_before: datetime | None = None

    @property
    def new_job(self) -> NewJob:
        """The job this request creates when it creates one."""
        return NewJob(self.object_id, self.kind, self.payload_json, self.not_before)

    def fingerprint(self) -> str:
        """What the request means, to tell a retry of it from another request with its key."""
        text = f"{self.object_id}|{self.on_busy.value}|{self.max_backlog}"
        # Requests with none of these keep the fingerprint of the releases before kinds
        # existed, so a retry across an upgrade still finds its job.
        if self.kind != DEFAULT_KIND or self.payload_json is not None or self.not_before:
            text += f"|{_meaning(self.new_job)}"
        return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Admitted:
    """The job a request got: created now, joined (coalesced), or replayed (idempotency)."""

    job: Job
    created: bool
    coalesced: bool = False
    replayed: bool = False


class Busy(Exception):
    """The request's policy refused it; nothing was written."""

    def __init__(self, detail: str, *, retry_after: int, next_free: datetime) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        self.next_free = next_free


class KeyPaused(Exception):
    """on_busy=reject for a paused key: no slot can be promised; nothing was written."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class KeyReused(Exception):
    """An Idempotency-Key came back with a different request."""


async def submit(
    pool: asyncpg.Pool,
    request: Submission,
    *,
    grouper: EnqueueGrouper | None = None,
) -> Admitted:
    """Admit `request`; raises Busy, KeyPaused or KeyReused when it must be refused.

    Plain requests go through `grouper` (group commit) when one is given.
    """
    plain = request.on_busy is OnBusy.QUEUE and request.max_backlog is None
    if plain and request.idempotency_key is None:
        if grouper is not None and request.not_before is None:
            return Admitted(await grouper.enqueue(request.new_job), created=True)
        return Admitted(await create(pool, request.new_job), created=True)

    async def admit(conn: Connection) -> Admitted:
        if request.idempotency_key is not None:
            replay = await _claim_key(conn, request)
            if replay is not None:
                return replay
        admitted = await _admit(conn, request)
        if request.idempotency_key is not None:
            await slots.bind_idempotency_key(
                conn, key=request.idempotency_key, job_id=admitted.job.id
            )
        return admitted

    return await in_transaction(pool, admit)


@dataclasses.dataclass(frozen=True)
class AdmittedBatch:
    """The jobs of a batch: created now, or replayed (the same key and body came before)."""

    jobs: list[Job]
    replayed: bool = False


def _meaning(new: NewJob) -> str:
    """A job's key, payload and earliest start as fingerprint text: the object id alone for a
    plain default job (as before kinds existed), else kind, object, the payload's digest and
    the not_before instant."""
    if new.kind == DEFAULT_KIND and new.payload_json is None and new.not_before is None:
        return str(new.object_id)
    payload = b"-" if new.payload_json is None else new.payload_json.encode()
    text = f"{new.kind}:{new.object_id}:{hashlib.sha256(payload).hexdigest()}"
    if new.not_before is not None:
        text += f"@{new.not_before.timestamp():.6f}"
    return text


def batch_fingerprint(new: list[NewJob]) -> str:
    """What a batch means: its jobs in order (a prefix keeps it apart from one job)."""
    text = "batch|" + ",".join(map(_meaning, new))
    return hashlib.sha256(text.encode()).hexdigest()


async def submit_batch(
    pool: asyncpg.Pool,
    new: list[NewJob],
    *,
    idempotency_key: str | None = None,
) -> AdmittedBatch:
    """Create the jobs, all or none (one statement for the keys it may plan, the exact planner
    for the rest, one transaction); with a key, a retry of the same batch gets the same jobs
    back, and concurrent retries create it once. Raises KeyReused."""

    async def admit(conn: Connection) -> AdmittedBatch:
        if idempotency_key is None:
            return AdmittedBatch(await create_many(conn, new))
        fingerprint = batch_fingerprint(new)
        earlier = await _claim_batch_key(conn, idempotency_key, fingerprint)
        if earlier is not None:
            return AdmittedBatch(earlier, replayed=True)
        jobs = await create_many(conn, new)
        await slots.bind_idempotency_key_to_batch(
            conn, key=idempotency_key, job_ids=[job.id for job in jobs]
        )
        return AdmittedBatch(jobs)

    return await in_transaction(pool, admit)


async def _claim_batch_key(conn: Connection, key: str, fingerprint: str) -> list[Job] | None:
    """Own `key` for a new batch (None), or the jobs of the batch that used it before."""

    async def jobs_of(earlier: asyncpg.Record) -> list[Job] | None:
        ids = earlier["job_ids"]
        if ids is None:
            return None
        found = await get_jobs(conn, ids)
        return [found[job_id] for job_id in ids] if len(found) == len(ids) else None

    return await _replay_or_own(conn, key, fingerprint, jobs_of)


async def _claim_key(conn: Connection, request: Submission) -> Admitted | None:
    """Own the request's key for a new job (None), or the job of the request that used it."""
    key = request.idempotency_key
    assert key is not None

    async def job_of(earlier: asyncpg.Record) -> Admitted | None:
        job = None if earlier["job_id"] is None else await get_job(conn, earlier["job_id"])
        return None if job is None else Admitted(job, created=False, replayed=True)

    return await _replay_or_own(conn, key, request.fingerprint(), job_of)


async def _replay_or_own(
    conn: Connection,
    key: str,
    fingerprint: str,
    replay: Callable[[asyncpg.Record], Awaitable[T | None]],
) -> T | None:
    """What the live earlier request with `key` got (`replay` of its row), or None once this
    request owns the key: a new key, an expired one, or one whose jobs were pruned."""
    earlier = await _own_or_read_key(conn, key, fingerprint)
    if earlier is None:
        return None
    replayed = await replay(earlier)
    if replayed is None:  # its jobs were pruned: this request takes the key over
        await _take_over_key(conn, key, fingerprint)
    return replayed


async def _own_or_read_key(conn: Connection, key: str, fingerprint: str) -> asyncpg.Record | None:
    """Take `key` for this request (None), or the row of the live earlier request that holds
    it with the same fingerprint. A concurrent request with the key waits here for that one's
    commit. Raises KeyReused for another request's key."""
    if await slots.claim_idempotency_key(conn, key=key, fingerprint=fingerprint):
        return None
    earlier = await slots.read_idempotency_key(conn, key=key, ttl=IDEMPOTENCY_TTL)
    if earlier is None or earlier["expired"]:
        await _take_over_key(conn, key, fingerprint)
        return None
    if earlier["fingerprint"] != fingerprint:
        raise KeyReused(
            f"The Idempotency-Key {key!r} was used for a different request in the last 24 hours."
        )
    return earlier


async def _take_over_key(conn: Connection, key: str, fingerprint: str) -> None:
    await slots.forget_idempotency_key(conn, key=key)
    await slots.claim_idempotency_key(conn, key=key, fingerprint=fingerprint)


async def _admit(conn: Connection, request: Submission) -> Admitted:
    kind, object_id = request.kind, request.object_id
    await slots.lock_object_slots(conn, kind=kind, object_id=object_id)
    if request.on_busy in (OnBusy.REPLACE, OnBusy.APPEND):
        changed = await _change_pending_tail(conn, request)
        if changed is not None:
            return Admitted(changed, created=False, coalesced=True)
    cap = (request.max_backlog or 0) + 1
    state = await slots.object_backlog(conn, kind=kind, object_id=object_id, count_up_to=cap)
    if request.on_busy is OnBusy.COALESCE and state["head_id"] is not None:
        job = await get_job(conn, state["head_id"])
        assert job is not None
        return Admitted(job, created=False, coalesced=True)
    if request.on_busy is OnBusy.REJECT or request.max_backlog is not None:
        now, free_at = await next_free(conn, kind, object_id)
        if request.on_busy is OnBusy.REJECT:
            _reject_if_busy(object_id, now, free_at)
        if request.max_backlog is not None and state["pending"] >= request.max_backlog:
            head = None if state["head_run_at"] is None else finite(state["head_run_at"])
            head_wait = 1.0 if head is None else (head - now).total_seconds()
            raise Busy(
                f"Object {object_id} already has {request.max_backlog} pending job(s), "
                f"its max_backlog; nothing was queued.",
                retry_after=max(1, math.ceil(head_wait)),
                next_free=free_at or now,
            )
    # The key's row is ours already: the enqueue statement's upsert does not wait.
    if request.on_busy is OnBusy.APPEND:
        # An appending job's payload is the list of every payload it absorbed.
        first = dataclasses.replace(
            request.new_job, payload_json=f"[{request.payload_json or 'null'}]"
        )
        return Admitted(await create_in(conn, first, absorbed=1), created=True)
    return Admitted(await create_in(conn, request.new_job), created=True)


def _reject_if_busy(object_id: int, now: datetime, free_at: datetime | None) -> None:
    """on_busy=reject: refuse unless a job of the key could start now."""
    if free_at is None:
        raise KeyPaused(
            f"Object {object_id} is paused: no slot can be promised until it is resumed; "
            "nothing was queued."
        )
    if free_at > now:
        seconds = (free_at - now).total_seconds()
        raise Busy(
            f"Object {object_id} is busy until {free_at.isoformat()}; nothing was queued.",
            retry_after=max(1, math.ceil(seconds)),
            next_free=free_at,
        )


async def _change_pending_tail(conn: Connection, request: Submission) -> Job | None:
    """replace / append: give the key's last pending job this request's payload (replace) or
    add it to the job's list (append); the job, or None when a new job must be made instead.

    The tail, not the head: with several jobs pending (some queued), the latest payload belongs
    in the last slot, so payloads still run in the order they arrived. The tail is locked
    first: a claim skips it meanwhile, and a claim that got it first has started it, and a
    started job is never changed. An appending job takes at most MAX_APPENDED payloads and
    MAX_PAYLOAD_BYTES; the request past either gets a new job in the next free slot."""
    tail = await slots.lock_pending_tail(conn, kind=request.kind, object_id=request.object_id)
    if tail is None:
        return None
    if request.on_busy is OnBusy.REPLACE:
        record = await slots.replace_payload(conn, job_id=tail["id"], payload=request.payload_json)
    else:
        if tail["absorbed"] is None or tail["absorbed"] >= MAX_APPENDED:
            return None
        added = len((request.payload_json or "null").encode()) + 2  # ", " between elements
        if tail["payload_bytes"] + added > MAX_PAYLOAD_BYTES:
            return None
        record = await slots.append_payload(conn, job_id=tail["id"], payload=request.payload_json)
    return None if record is None else Job.from_record(record)
