"""The worker's two polling statements, planned afresh at every call.

Both read `jobs`, the table that grows fastest, through partial indexes of pending jobs. A plan
PostgreSQL caches for a prepared statement (its generic plan, taken after five executions) is
costed with the statistics of the moment: cached while the tables were empty, it is a nested
loop of sequential scans that reads every pending job once per due job (issue 20: 12-25 s per
claim at a million rows, no job started for half a minute). A plan made for the call
(`force_custom_plan`, for this transaction only) sizes each table by its current number of
pages even when its statistics are old, so it walks ix_jobs_due and probes the other indexes
per row. That costs a planning per call (about half a millisecond for the claim); the other
hot statements keep their cached plans (see docs/design.md, "Plans that do not depend on
statistics").
"""

from __future__ import annotations

import uuid

import asyncpg

from paceline.db.pool import Connection
from paceline.db.queries import QUERIES

PLAN_THIS_CALL = (
    "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; "
    "SET LOCAL enable_sort = off; SET LOCAL enable_hashjoin = off; "
    "SET LOCAL enable_mergejoin = off; SET LOCAL plan_cache_mode = force_custom_plan"
)


async def claim_due_jobs(
    conn: Connection, limit: int, window: float, lease: float, worker_id: uuid.UUID
) -> list[asyncpg.Record]:
    """Start up to `limit` due jobs under a lease held by `worker_id`; the started jobs."""
    async with conn.transaction():
        await conn.execute(PLAN_THIS_CALL)
        return list(await conn.fetch(QUERIES["claim_due_jobs"], limit, window, lease, worker_id))


async def seconds_until_next_due(conn: Connection, window: float) -> asyncpg.Record:
    """The row of `seconds_until_next_due`: the database's `now` and `next_start` (or NULL)."""
    async with conn.transaction():
        await conn.execute(PLAN_THIS_CALL)
        row = await conn.fetchrow(QUERIES["seconds_until_next_due"], window)
    assert row is not None
    return row
