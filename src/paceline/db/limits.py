"""Limits per kind and per key, and what the exact planner reads and writes: the queries of
`limits.sql`.

Typed, keyword-argument functions, one per named query. A key's limit in force is the SQL
function `paceline_limit(kind, object_id)` (migration 0009), so the claim, next-due and the
planner all read one definition.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from paceline.db.pool import Connection, Executor
from paceline.db.queries import QUERIES


async def seed_default_limit(db: Executor, *, window: float) -> float:
    """Give the default kind `window` if the database has no default limit yet; the window of
    the default limit in force (the stored one wins)."""
    stored: float = await db.fetchval(QUERIES["seed_default_limit"], window)
    return stored


async def key_limit(db: Executor, *, kind: str, object_id: int | None) -> asyncpg.Record:
    """window_seconds, per_window, max_running, paused (in force), overridden, and now."""
    record = await db.fetchrow(QUERIES["key_limit"], kind, object_id)
    assert record is not None
    return record


async def kind_limit_rows(db: Executor) -> list[asyncpg.Record]:
    """Every kind's own limit row, by kind."""
    return await db.fetch(QUERIES["kind_limit_rows"])


async def kind_limit_row(db: Executor, *, kind: str) -> asyncpg.Record | None:
    """The kind's own row, if it has one."""
    return await db.fetchrow(QUERIES["kind_limit_row"], kind)


async def key_limit_row(db: Executor, *, kind: str, object_id: int) -> asyncpg.Record | None:
    """The key's override, if it has one."""
    return await db.fetchrow(QUERIES["key_limit_row"], kind, object_id)


async def key_limit_rows(
    db: Executor, *, kind: str, after: int, limit: int
) -> list[asyncpg.Record]:
    """The kind's overrides with object ids above `after`, in object order, each with the
    limit in force for its key (`in_force_*` columns)."""
    return await db.fetch(QUERIES["key_limit_rows"], kind, after, limit)


async def put_kind_limit(
    conn: Connection,
    *,
    kind: str,
    window: float | None,
    per_window: int | None,
    max_running: int | None,
    paused: bool | None,
) -> None:
    """Set the kind's own numbers (None inherits from `default`); `paused` None keeps it."""
    await conn.execute(QUERIES["put_kind_limit"], kind, window, per_window, max_running, paused)


async def set_kind_paused(conn: Connection, *, kind: str, paused: bool) -> None:
    """Pause or resume a kind (its row is made, inheriting every number, if it has none)."""
    await conn.execute(QUERIES["set_kind_paused"], kind, paused)


async def drop_kind_limit(conn: Connection, *, kind: str) -> bool:
    """Drop the kind's own row (never the default kind's); True if there was one."""
    return await conn.fetchval(QUERIES["drop_kind_limit"], kind) is not None


async def put_key_limit(
    conn: Connection,
    *,
    kind: str,
    object_id: int,
    window: float | None,
    per_window: int | None,
    max_running: int | None,
    paused: bool | None,
) -> None:
    """Set the key's override (None inherits from its kind); `paused` None keeps it."""
    await conn.execute(
        QUERIES["put_key_limit"], kind, object_id, window, per_window, max_running, paused
    )


async def set_key_paused(conn: Connection, *, kind: str, object_id: int, paused: bool) -> None:
    """Pause or resume one key (its override is made, inheriting everything, if none)."""
    await conn.execute(QUERIES["set_key_paused"], kind, object_id, paused)


async def drop_key_limit(conn: Connection, *, kind: str, object_id: int) -> bool:
    """Drop the key's override; True if there was one."""
    return await conn.fetchval(QUERIES["drop_key_limit"], kind, object_id) is not None


async def plan_exactly(
    conn: Connection, *, kinds: Sequence[str] | None, object_id: int | None
) -> None:
    """Make the one-statement enqueue leave these keys to the planner until it re-planned them."""
    await conn.execute(QUERIES["plan_exactly"], None if kinds is None else list(kinds), object_id)


async def keys_with_pending(
    db: Executor, *, kinds: Sequence[str] | None, object_id: int | None
) -> list[tuple[str, int]]:
    """The keys of `kinds` (None: all) and `object_id` (None: all) that have pending jobs."""
    rows = await db.fetch(
        QUERIES["keys_with_pending"], None if kinds is None else list(kinds), object_id
    )
    return [(row["kind"], row["object_id"]) for row in rows]


async def kinds_inheriting(db: Executor, *, kind: str) -> list[str]:
    """The kinds whose limit a change of `kind`'s row changes (itself; for `default`, every
    kind that inherits a number from it)."""
    return [row["kind"] for row in await db.fetch(QUERIES["kinds_inheriting"], kind)]


async def pending_of_key(
    conn: Connection, *, kind: str, object_id: int, lock: bool = True
) -> list[asyncpg.Record]:
    """The key's pending jobs (id, created_at, run_at, not_before) in slot order, locked
    unless `lock` is False (a reader's look)."""
    query = QUERIES["pending_of_key" if lock else "pending_slots_of_key"]
    return await conn.fetch(query, kind, object_id)


async def starts_of_key(
    conn: Connection, *, kind: str, object_id: int, since: datetime
) -> set[datetime]:
    """The key's starts after `since`, and its last start."""
    rows = await conn.fetch(QUERIES["starts_of_key"], kind, object_id, since)
    return {row[0] for row in rows}


# A (kind, object_id): the pair every limit and slot row is kept by.
Key = tuple[str, int]


def keys_share_a_transaction() -> bool:
    """Whether many keys may be locked and re-planned in one transaction with the `*_of_keys`
    statements below: on one server, yes. On a Citus cluster, no: each key's statements stay
    its shard's, and a transaction over many keys' shards would be a distributed one,
    committed in two phases on every worker it touched."""
    return not QUERIES.citus


async def lock_key_rows(conn: Connection, *, keys: Sequence[Key]) -> None:
    """`lock_object_slots` for every key of `keys`, in key order, in one statement."""
    await conn.execute(QUERIES["lock_key_rows"], [k for k, _ in keys], [o for _, o in keys])


async def limits_of_keys(conn: Connection, *, keys: Sequence[Key]) -> dict[Key, asyncpg.Record]:
    """`key_limit` of every key of `keys`."""
    rows = await conn.fetch(QUERIES["limits_of_keys"], [k for k, _ in keys], [o for _, o in keys])
    return {(row["kind"], row["object_id"]): row for row in rows}


async def pending_of_keys(
    conn: Connection, *, keys: Sequence[Key]
) -> dict[Key, list[asyncpg.Record]]:
    """`pending_of_key` of every key of `keys` (locked), each key's in slot order."""
    rows = await conn.fetch(QUERIES["pending_of_keys"], [k for k, _ in keys], [o for _, o in keys])
    by_key: dict[Key, list[asyncpg.Record]] = {key: [] for key in keys}
    for row in sorted(rows, key=lambda row: (row["run_at"], row["id"])):
        by_key[row["kind"], row["object_id"]].append(row)
    return by_key


async def starts_of_keys(
    conn: Connection, *, keys: Sequence[Key], since: Sequence[datetime]
) -> dict[Key, set[datetime]]:
    """`starts_of_key` of every key of `keys`, each after its own `since` (parallel)."""
    rows = await conn.fetch(
        QUERIES["starts_of_keys"], [k for k, _ in keys], [o for _, o in keys], list(since)
    )
    by_key: dict[Key, set[datetime]] = {key: set() for key in keys}
    for row in rows:
        by_key[row["kind"], row["object_id"]].add(row["started_at"])
    return by_key


@dataclasses.dataclass(frozen=True)
class SlotRow:
    """A key's object_slots row as the exact planner writes it: where the one-statement
    enqueue may place the key's next job (`next_slot`), how far it may go (`open_until`), the
    limit that holds under (`window`, `per_window`), and under N > 1 the reservations the
    next slot depends on (`recent`, in order; None under N = 1)."""

    next_slot: datetime
    open_until: datetime
    window: float
    per_window: int
    recent: list[datetime] | None


async def set_key_rows(conn: Connection, *, keys: Sequence[Key], rows: Sequence[SlotRow]) -> None:
    """`set_key_row` for every key of `keys`, its row in `rows` (parallel)."""
    await conn.execute(
        QUERIES["set_key_rows"],
        [k for k, _ in keys],
        [o for _, o in keys],
        [row.next_slot for row in rows],
        [row.open_until for row in rows],
        [row.window for row in rows],
        [row.per_window for row in rows],
        [None if row.recent is None else _instants_json(row.recent) for row in rows],
    )


def _instants_json(instants: Sequence[datetime]) -> str:
    """A JSON array of the instants, as PostgreSQL reads them back into timestamptz."""
    return json.dumps([instant.isoformat() for instant in instants])


async def set_key_row(conn: Connection, *, kind: str, object_id: int, row: SlotRow) -> None:
    """Where the one-statement enqueue may place the key's next job, and under which limit."""
    await conn.execute(
        QUERIES["set_key_row"],
        kind,
        object_id,
        row.next_slot,
        row.open_until,
        row.window,
        row.per_window,
        row.recent,
    )


async def insert_planned_job(
    conn: Connection,
    *,
    kind: str,
    object_id: int,
    run_at: datetime,
    payload: str | None,
    absorbed: int | None,
    not_before: datetime | None,
) -> asyncpg.Record:
    """Insert a job at the slot the planner chose; its row."""
    record = await conn.fetchrow(
        QUERIES["insert_planned_job"], kind, object_id, run_at, payload, absorbed, not_before
    )
    assert record is not None
    return record


async def park_pending(
    conn: Connection, *, kind: str, object_id: int | None
) -> list[asyncpg.Record]:
    """A paused kind's (or key's) pending jobs wait at 'infinity' until the resume; each
    parked job's id, kind, object_id and slot `before`."""
    return await conn.fetch(QUERIES["park_pending"], kind, object_id)


async def stranded_keys(db: Executor, *, limit: int, scan: int) -> list[tuple[str, int]]:
    """Up to `limit` keys, not paused, whose jobs are still parked for a resume (among the
    first `scan` parked jobs): a resume that was cut off before it re-planned them."""
    rows = await db.fetch(QUERIES["stranded_keys"], limit, scan)
    return [(row["kind"], row["object_id"]) for row in rows]


async def lock_limit_changes(conn: Connection) -> None:
    """One limit change at a time, across replicas; released at commit."""
    await conn.execute(QUERIES["lock_limit_changes"])


async def running_jobs_of_key(db: Executor, *, kind: str, object_id: int) -> list[int]:
    """Ids of the key's running jobs, oldest start first."""
    return [row["id"] for row in await db.fetch(QUERIES["running_jobs_of_key"], kind, object_id)]
