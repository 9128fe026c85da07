"""What the page, /metrics, /readyz and the limit auditor read: the queries of `dashboard.sql`.

Typed, keyword-argument functions, one per named query; `dashboard.sql` says which index keeps
each read small. Callers pass a pool or a connection (a snapshot transaction, say).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from paceline.db.pool import Executor
from paceline.db.queries import QUERIES


async def overview_counts(db: Executor, *, count_cap: int) -> asyncpg.Record:
    """now, and the exact pending, due and processing counts (each capped at `count_cap`)."""
    record = await db.fetchrow(QUERIES["overview_counts"], count_cap)
    assert record is not None
    return record


async def overview_first_due(db: Executor) -> asyncpg.Record | None:
    """The pending job whose slot comes first (id, object_id, created_at, run_at)."""
    return await db.fetchrow(QUERIES["overview_first_due"])


async def overview_oldest_pending(db: Executor) -> asyncpg.Record | None:
    """The pending job accepted first (id, object_id, created_at, run_at)."""
    return await db.fetchrow(QUERIES["overview_oldest_pending"])


async def overview_table_estimates(db: Executor) -> list[asyncpg.Record]:
    """(live_rows, status, share) from the statistics; nothing before the first ANALYZE."""
    return await db.fetch(QUERIES["overview_table_estimates"])


async def overview_live_rows(db: Executor) -> float | None:
    """The statistics' count of live rows in `jobs`."""
    rows: float | None = await db.fetchval(QUERIES["overview_live_rows"])
    return rows


async def overview_finished_per_minute(db: Executor, *, minutes: int) -> list[asyncpg.Record]:
    """(minute, status, jobs) finished over the last `minutes` minutes."""
    return await db.fetch(QUERIES["overview_finished_per_minute"], minutes)


async def overview_recent_failures(db: Executor, *, limit: int) -> list[asyncpg.Record]:
    """The newest FAILED jobs (id, object_id, finished_at, attempts, error)."""
    return await db.fetch(QUERIES["overview_recent_failures"], limit)


async def overview_kind_limits(db: Executor, *, count_cap: int, limit: int) -> list[asyncpg.Record]:
    """Per kind: its limit in force, own_row, and its overrides and paused keys (capped)."""
    return await db.fetch(QUERIES["overview_kind_limits"], count_cap, limit)


async def overview_overrides(db: Executor, *, limit: int) -> list[asyncpg.Record]:
    """The first per-key overrides by (kind, object_id), with each key's limit in force."""
    return await db.fetch(QUERIES["overview_overrides"], limit)


async def overview_paused_keys(db: Executor, *, limit: int, count_cap: int) -> list[asyncpg.Record]:
    """The first paused keys (kind, object_id, updated_at) and their waiting jobs (capped)."""
    return await db.fetch(QUERIES["overview_paused_keys"], limit, count_cap)


async def replicas(db: Executor, *, dead_after: float) -> list[asyncpg.Record]:
    """Every registered replica, with `alive` = a heartbeat within `dead_after` seconds."""
    return await db.fetch(QUERIES["replicas"], dead_after)


async def timeline_windows(
    db: Executor, *, kind: str, object_id: int, window: float, per_window: int
) -> asyncpg.Record:
    """now, the key's last start, and the slot the one-statement enqueue would give a plain
    job of it under this limit (either may be None)."""
    record = await db.fetchrow(QUERIES["timeline_windows"], kind, object_id, window, per_window)
    assert record is not None
    return record


async def timeline_window_starts(
    db: Executor, *, kind: str, object_id: int, window: float, limit: int
) -> list[datetime]:
    """The key's starts within the last `window` seconds, newest first, at most `limit`."""
    rows = await db.fetch(QUERIES["timeline_window_starts"], kind, object_id, window, limit)
    return [row["started_at"] for row in rows]


async def timeline_waiting(
    db: Executor, *, kind: str, object_id: int, limit: int
) -> list[asyncpg.Record]:
    """The object's pending jobs in the order they start."""
    return await db.fetch(QUERIES["timeline_waiting"], kind, object_id, limit)


async def timeline_waiting_count(db: Executor, *, kind: str, object_id: int, cap: int) -> int:
    """How many jobs of the object are pending, counting up to `cap`."""
    count: int = await db.fetchval(QUERIES["timeline_waiting_count"], kind, object_id, cap)
    return count


async def timeline_runs(
    db: Executor, *, kind: str, object_id: int, limit: int
) -> list[asyncpg.Record]:
    """The object's latest starts, newest first, with the replica that ran each."""
    return await db.fetch(QUERIES["timeline_runs"], kind, object_id, limit)


async def audit_horizon(db: Executor, *, margin: float) -> datetime:
    """The newest start the auditor may trust to be committed: now() - `margin` seconds."""
    horizon: datetime = await db.fetchval(QUERIES["audit_horizon"], margin)
    return horizon


async def audit_starts(
    db: Executor, *, after: datetime, up_to: datetime, lookback: int
) -> list[asyncpg.Record]:
    """Starts in (after, up_to] that broke their key's limit: `previous_*` set for N + 1 starts
    in less than W, `running_job_ids` for a start made while its key's max_running attempts
    (or more) ran, judged from the key's `lookback` previous starts."""
    return await db.fetch(QUERIES["audit_starts"], after, up_to, lookback)


async def schema_revisions(db: Executor) -> set[str]:
    """The migrations the database is at; UndefinedTableError if it was never migrated."""
    return {row["version_num"] for row in await db.fetch(QUERIES["schema_revisions"])}


async def job_ahead(
    db: Executor, *, kind: str, object_id: int, run_at: datetime, job_id: int
) -> asyncpg.Record | None:
    """The key's pending job just before (run_at, job_id) in slot order, if any."""
    return await db.fetchrow(QUERIES["job_ahead"], kind, object_id, run_at, job_id)


async def job_attempts(db: Executor, *, job_id: int) -> list[asyncpg.Record]:
    """Every attempt of a job, oldest first (attempt, started_at, finished_at, outcome, error,
    worker_id, host, pid)."""
    return await db.fetch(QUERIES["job_attempts"], job_id)


async def finished_per_kind(
    db: Executor, *, minutes: int, bar_minutes: int
) -> list[asyncpg.Record]:
    """(kind, bar, succeeded, failed, cancelled) over the last `minutes`, `bar_minutes` a bar."""
    return await db.fetch(QUERIES["finished_per_kind"], minutes, bar_minutes)


async def busiest_keys(db: Executor, *, limit: int, read_cap: int) -> list[asyncpg.Record]:
    """The `limit` keys with the most pending jobs among the first `read_cap`: kind, object_id,
    waiting, first_slot, next_slot, now."""
    return await db.fetch(QUERIES["busiest_keys"], limit, read_cap)
