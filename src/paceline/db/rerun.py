"""Retrying finished jobs by hand: the queries of `rerun.sql`.

Typed, keyword-argument functions, one per named query. Each runs in the caller's transaction
except `retry_candidates`, which plans itself for the filters it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from paceline.db.citus import SHARDS
from paceline.db.pool import Connection
from paceline.db.queries import QUERIES
from paceline.db.slots import lock_object_slots

# A plan made for this call's values (the NULL tests of the filters fold away), for this
# transaction only. Bitmap scans stay allowed: a GIN index is read no other way.
_PLAN_FOR_VALUES = "SET LOCAL plan_cache_mode = force_custom_plan"


async def retry_candidates(
    conn: Connection,
    *,
    status: str,
    kind: str | None,
    object_id: int | None,
    payload: str | None,
) -> list[asyncpg.Record]:
    """(id, kind, object_id) of the jobs of `status` that match the filters (None: any;
    `payload` a JSON object as text the job's payload contains), in slot order."""
    async with conn.transaction():
        await conn.execute(_PLAN_FOR_VALUES)
        return list(await conn.fetch(QUERIES["retry_candidates"], status, kind, object_id, payload))


async def lock_slot_rows(conn: Connection, *, keys: Sequence[tuple[str, int]]) -> None:
    """Take the slot-row locks of the keys (kind, object_id), in key order, in one statement
    (on a Citus cluster, which cannot keep one statement's order across shards, one statement
    per key, each on its key's shard)."""
    if QUERIES.citus:
        for kind, object_id in sorted(set(keys)):
            await lock_object_slots(conn, kind=kind, object_id=object_id)
        return
    await conn.execute(
        QUERIES["lock_slot_rows"], [kind for kind, _ in keys], [obj for _, obj in keys]
    )


async def lock_jobs_to_retry(conn: Connection, *, job_ids: Sequence[int]) -> list[asyncpg.Record]:
    """The jobs that exist among `job_ids` (id, kind, object_id, status, created_at,
    not_before), locked, in id order (on a Citus cluster shard by shard, FOR UPDATE being
    refused across shards: each job's bucket is read first)."""
    if not QUERIES.citus:
        return list(await conn.fetch(QUERIES["lock_jobs_to_retry"], list(job_ids)))
    buckets = {
        row["id"]: row["bucket"]
        for row in await conn.fetch(QUERIES["buckets_of_jobs"], list(job_ids))
    }
    found = list(buckets)
    locked: list[asyncpg.Record] = []
    for shard_buckets, at in await SHARDS.group(conn, [buckets[i] for i in found], len(found)):
        locked += await conn.fetch(
            QUERIES["lock_jobs_to_retry"], [found[i] for i in at], shard_buckets
        )
    return sorted(locked, key=lambda row: row["id"])


async def retry_jobs(
    conn: Connection, *, job_ids: Sequence[int], run_at: Sequence[datetime]
) -> list[asyncpg.Record]:
    """Put the FAILED or CANCELLED jobs among `job_ids` back to PENDING at their slots (parallel
    sequences); their rows."""
    return list(await conn.fetch(QUERIES["retry_jobs"], list(job_ids), list(run_at)))
