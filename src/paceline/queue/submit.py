"""Admitting a job under a backlog policy and an optional idempotency key.

`queue` (the default) with no cap and no key is the one-statement enqueue. Everything else
runs in a transaction that first takes the object's slot row lock (so concurrent requests for
one object, on any replica, decide one after the other on what the previous ones committed),
then decides, then enqueues or refuses; a refusal rolls back and leaves nothing behind.
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
from paceline.db import slots
from paceline.db.pool import Connection
from paceline.queue.grouping import EnqueueGrouper
from paceline.queue.jobs import Job, enqueue, enqueue_batch, get_job, get_jobs

T = TypeVar("T")

# How long an Idempotency-Key returns the same job.
IDEMPOTENCY_TTL = 24 * 3600.0


# What a request wants when its object's window is busy (queue, coalesce, reject).
OnBusy = contract.OnBusy


@dataclasses.dataclass(frozen=True)
class Submission:
    """A validated POST /jobs."""

    object_id: int
    on_busy: OnBusy = OnBusy.QUEUE
    max_backlog: int | None = None
    idempotency_key: str | None = None

    def fingerprint(self) -> str:
        """What the request means, to tell a retry of it from another request with its key."""
        text = f"{self.object_id}|{self.on_busy.value}|{self.max_backlog}"
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


class KeyReused(Exception):
    """An Idempotency-Key came back with a different request."""


async def submit(
    pool: asyncpg.Pool,
    request: Submission,
    window: float,
    *,
    grouper: EnqueueGrouper | None = None,
) -> Admitted:
    """Admit `request`; raises Busy or KeyReused when it must be refused.

    Plain requests go through `grouper` (group commit) when one is given.
    """
    plain = request.on_busy is OnBusy.QUEUE and request.max_backlog is None
    if plain and request.idempotency_key is None:
        if grouper is not None:
            return Admitted(await grouper.enqueue(request.object_id), created=True)
        return Admitted(await enqueue(pool, request.object_id, window), created=True)
    async with pool.acquire() as conn, conn.transaction():
        if request.idempotency_key is not None:
            replay = await _claim_key(conn, request)
            if replay is not None:
                return replay
        admitted = await _admit(conn, request, window)
        if request.idempotency_key is not None:
            await slots.bind_idempotency_key(
                conn, key=request.idempotency_key, job_id=admitted.job.id
            )
        return admitted


@dataclasses.dataclass(frozen=True)
class AdmittedBatch:
    """The jobs of a batch: created now, or replayed (the same key and body came before)."""

    jobs: list[Job]
    replayed: bool = False


def batch_fingerprint(object_ids: list[int]) -> str:
    """What a batch means: its object ids in order (a prefix keeps it apart from one job)."""
    text = "batch|" + ",".join(map(str, object_ids))
    return hashlib.sha256(text.encode()).hexdigest()


async def submit_batch(
    pool: asyncpg.Pool,
    object_ids: list[int],
    window: float,
    *,
    idempotency_key: str | None = None,
) -> AdmittedBatch:
    """Create one job per id in one statement; with a key, a retry of the same batch gets the
    same jobs back, and concurrent retries create it once. Raises KeyReused."""
    if idempotency_key is None:
        return AdmittedBatch(await enqueue_batch(pool, object_ids, window))
    fingerprint = batch_fingerprint(object_ids)
    async with pool.acquire() as conn, conn.transaction():
        earlier = await _claim_batch_key(conn, idempotency_key, fingerprint)
        if earlier is not None:
            return AdmittedBatch(earlier, replayed=True)
        jobs = await enqueue_batch(conn, object_ids, window)
        await slots.bind_idempotency_key_to_batch(
            conn, key=idempotency_key, job_ids=[job.id for job in jobs]
        )
        return AdmittedBatch(jobs)


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


async def _admit(conn: Connection, request: Submission, window: float) -> Admitted:
    object_id = request.object_id
    await slots.lock_object_slots(conn, object_id=object_id)
    cap = (request.max_backlog or 0) + 1
    state = await slots.object_backlog(conn, object_id=object_id, window=window, count_up_to=cap)
    if request.on_busy is OnBusy.COALESCE and state["head_id"] is not None:
        job = await get_job(conn, state["head_id"])
        assert job is not None
        return Admitted(job, created=False, coalesced=True)
    if request.on_busy is OnBusy.REJECT and state["next_free"] > state["now"]:
        seconds = (state["next_free"] - state["now"]).total_seconds()
        raise Busy(
            f"Object {object_id} is busy until {state['next_free'].isoformat()}; "
            "nothing was queued.",
            retry_after=max(1, math.ceil(seconds)),
            next_free=state["next_free"],
        )
    if request.max_backlog is not None and state["pending"] >= request.max_backlog:
        head_wait = (state["head_run_at"] - state["now"]).total_seconds()
        raise Busy(
            f"Object {object_id} already has {request.max_backlog} pending job(s), "
            f"its max_backlog; nothing was queued.",
            retry_after=max(1, math.ceil(head_wait)),
            next_free=state["next_free"],
        )
    # The object's row is ours already: the enqueue statement's upsert does not wait.
    return Admitted(await enqueue(conn, object_id, window), created=True)
