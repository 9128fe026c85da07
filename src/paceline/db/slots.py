"""Planning an object's slots beyond the plain enqueue: the queries of `slots.sql`.

Backlog policies and coalescing, idempotency keys, compaction after a cancel, re-planning for
a new window. A key is a (kind, object_id): windows, FIFO and coalescing are per key.
Typed, keyword-argument functions, one per named query. Every multi-step change calls
`lock_object_slots` first, inside the caller's transaction, so it serializes with enqueues of
that key.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from paceline.db.pool import Connection, Executor
from paceline.db.queries import QUERIES


async def lock_object_slots(conn: Connection, *, kind: str, object_id: int) -> None:
    """Take the key's slot-row lock (creating the row as "free now" if it has none)."""
    await conn.execute(QUERIES["lock_object_slots"], kind, object_id)


async def object_backlog(
    conn: Connection, *, kind: str, object_id: int, count_up_to: int
) -> asyncpg.Record:
    """pending (counted up to `count_up_to`), head_id and head_run_at (first in slot order)."""
    record = await conn.fetchrow(QUERIES["object_backlog"], kind, object_id, count_up_to)
    assert record is not None
    return record


async def lock_pending_tail(
    conn: Connection, *, kind: str, object_id: int
) -> asyncpg.Record | None:
    """The key's last pending job (id, absorbed, payload_bytes), locked; None if it has none
    (or its tail started while this waited for its lock)."""
    return await conn.fetchrow(QUERIES["lock_pending_tail"], kind, object_id)


async def replace_payload(
    conn: Connection, *, job_id: int, payload: str | None
) -> asyncpg.Record | None:
    """Give the pending job `payload`; its row, or None if it is no longer pending."""
    return await conn.fetchrow(QUERIES["replace_payload"], job_id, payload)


async def append_payload(
    conn: Connection, *, job_id: int, payload: str | None
) -> asyncpg.Record | None:
    """Append `payload` to the pending appending job's array; its row, or None."""
    return await conn.fetchrow(QUERIES["append_payload"], job_id, payload)


async def claim_idempotency_key(conn: Connection, *, key: str, fingerprint: str) -> bool:
    """True if this request now owns `key`; waits for a concurrent owner's commit first."""
    return await conn.fetchval(QUERIES["claim_idempotency_key"], key, fingerprint) is not None


async def read_idempotency_key(conn: Connection, *, key: str, ttl: float) -> asyncpg.Record | None:
    """The earlier request's fingerprint, job_id, job_ids, and whether the key `expired`."""
    return await conn.fetchrow(QUERIES["read_idempotency_key"], key, ttl)


async def forget_idempotency_key(conn: Connection, *, key: str) -> None:
    """Drop `key` (it expired, or its jobs were pruned)."""
    await conn.execute(QUERIES["forget_idempotency_key"], key)


async def bind_idempotency_key(conn: Connection, *, key: str, job_id: int) -> None:
    """Remember the job a single request with `key` created."""
    await conn.execute(QUERIES["bind_idempotency_key"], key, job_id)


async def bind_idempotency_key_to_batch(
    conn: Connection, *, key: str, job_ids: Sequence[int]
) -> None:
    """Remember the jobs a batch with `key` created, in request order."""
    await conn.execute(QUERIES["bind_idempotency_key_to_batch"], key, list(job_ids))


async def prune_idempotency_keys(db: Executor, *, ttl: float, batch: int) -> None:
    """Delete up to `batch` keys older than `ttl` seconds."""
    await db.execute(QUERIES["prune_idempotency_keys"], ttl, batch)


async def key_of_job(db: Executor, *, job_id: int) -> tuple[str, int] | None:
    """The job's (kind, object_id) (they never change, so no lock is needed), or None."""
    row = await db.fetchrow(QUERIES["key_of_job"], job_id)
    return None if row is None else (row["kind"], row["object_id"])


async def cancel_pending_job(conn: Connection, *, job_id: int) -> asyncpg.Record | None:
    """Cancel the job if it is PENDING; the cancelled job's row, or None."""
    return await conn.fetchrow(QUERIES["cancel_pending_job"], job_id)


async def move_slots(
    conn: Connection,
    *,
    job_ids: Sequence[int],
    run_at: Sequence[datetime],
    key: tuple[str, int] | None = None,
) -> None:
    """Give each job its new slot (the two sequences are parallel). `key`: the (kind,
    object_id) all the jobs are of, when they are one key's, which on a Citus cluster makes
    the statement one shard's instead of every shard's."""
    if QUERIES.citus and key is not None:
        await conn.execute(QUERIES["move_slots_of_key"], list(job_ids), list(run_at), *key)
        return
    await conn.execute(QUERIES["move_slots"], list(job_ids), list(run_at))


async def objects_with_pending(
    db: Executor, *, keys: Sequence[tuple[str, int]]
) -> set[tuple[str, int]]:
    """Those of `keys` (kind, object_id) that have a pending job."""
    rows = await db.fetch(
        QUERIES["objects_with_pending"], [k for k, _ in keys], [o for _, o in keys]
    )
    return {(row["kind"], row["object_id"]) for row in rows}
