"""The worker's two polling statements, planned for each call out of index paths only
(`paceline.db.plans`): their cached plans were what stalled the service when the statistics
were old (docs/design.md)."""

from __future__ import annotations

import uuid

import asyncpg

from paceline.db.plans import fetch_planned
from paceline.db.pool import Connection
from paceline.db.queries import QUERIES


async def claim_due_jobs(
    conn: Connection, limit: int, window: float, lease: float, worker_id: uuid.UUID
) -> list[asyncpg.Record]:
    """Start up to `limit` due jobs under a lease held by `worker_id`; the started jobs."""
    return await fetch_planned(conn, QUERIES["claim_due_jobs"], limit, window, lease, worker_id)


async def seconds_until_next_due(conn: Connection, window: float) -> asyncpg.Record:
    """The row of `seconds_until_next_due`: the database's `now` and `next_start` (or NULL)."""
    (row,) = await fetch_planned(conn, QUERIES["seconds_until_next_due"], window)
    return row
