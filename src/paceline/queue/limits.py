"""Changing limits at runtime: one truth in the database, pending slots re-planned at once.

A limit belongs to a kind (`kind_limits`), optionally overridden for one key (`key_limits`);
the fields a row leaves NULL are inherited (a key's from its kind, a kind's from the default
kind). Every change here writes the row, then re-plans the pending jobs of every key whose
limit it changed (`scheduling.replan_key`), then wakes the workers of every replica: the claim
reads the limit from the database on every call, so they all follow at once.

A dry run does all of it in a transaction that is rolled back, so what it shows is exactly
what the change would do, and nothing is written. Changes are serialized across replicas by
an advisory lock: two at once could otherwise re-plan a key with two different limits.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from paceline.contract import DEFAULT_KIND, MAX_LIMIT_CHANGES_SHOWN
from paceline.db import jobs as jobs_store
from paceline.db import limits as store
from paceline.db import slots
from paceline.db.pool import Connection, in_transaction, is_unavailable
from paceline.queue.jobs import finite, isoformat
from paceline.queue.scheduling import KeyLimit, SlotChange, read_limit, replan_key
from paceline.queue.wakeup import CHANNEL

log = logging.getLogger(__name__)

# Re-planned keys per transaction when a change is applied: a kind with many keys waiting is
# re-planned in steps, so no claim or enqueue of those keys waits for all of them.
KEYS_PER_TRANSACTION = 100


@dataclasses.dataclass(frozen=True)
class LimitFields:
    """The numbers a row sets; None inherits."""

    window: float | None = None
    per_window: int | None = None
    max_running: int | None = None


@dataclasses.dataclass(frozen=True)
class LimitView:
    """A kind's or a key's limit: what its own row sets, and what is in force."""

    kind: str
    object_id: int | None
    own: LimitFields | None  # None: no row of its own (everything inherited)
    paused_here: bool  # the row itself says paused
    effective: KeyLimit
    updated_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        """The API's view."""
        own = self.own
        body: dict[str, Any] = {
            "kind": self.kind,
            "window": self.effective.window,
            "limit": self.effective.per_window,
            "max_running": self.effective.max_running,
            "paused": self.effective.paused,
            "set": None
            if own is None
            else {
                "window": own.window,
                "limit": own.per_window,
                "max_running": own.max_running,
                "paused": self.paused_here,
            },
            "updated_at": isoformat(self.updated_at),
        }
        if self.object_id is not None:
            body["object_id"] = self.object_id
        return body


@dataclasses.dataclass(frozen=True)
class Replanned:
    """What a change did (or, dry, would do): the limit after it and each slot that moved."""

    limit: LimitView
    changes: list[SlotChange]
    dry_run: bool

    def to_json(self) -> dict[str, Any]:
        """The API's view: the limit after the change and the first moves."""
        return {
            "limit": self.limit.to_json(),
            "dry_run": self.dry_run,
            "moved": len(self.changes),
            "changes": [
                {
                    "id": change.job_id,
                    "object_id": change.object_id,
                    "before": isoformat(change.before),
                    "after": isoformat(change.after),
                }
                for change in self.changes[:MAX_LIMIT_CHANGES_SHOWN]
            ],
        }


class LimitError(Exception):
    """A change that cannot be made (e.g. dropping the default kind's limit)."""


async def seed_default_limit(pool: asyncpg.Pool, window: float) -> None:
    """On a fresh database, make `window` (PACELINE_RATE_WINDOW) the default kind's limit; on
    one that has a default limit, keep it (one truth for every replica) and say so if the
    environment asks for another."""
    try:
        stored = await store.seed_default_limit(pool, window=window)
    except asyncpg.UndefinedTableError:
        # Not migrated yet: the replica reports not ready; `paceline migrate` seeds it then.
        log.warning("the database has no limits table yet; `paceline migrate` will seed it")
        return
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        # The workers wait the outage out; the limit in the database (or its default) holds.
        log.warning("could not read the default limit (%s); the database's stays in force", exc)
        return
    if stored != window:
        log.warning(
            "PACELINE_RATE_WINDOW is %gs but the database's default limit has a window of %gs, "
            "which every replica uses; change it with `paceline limits set default --window "
            "%g` or PUT /limits/default",
            window,
            stored,
            window,
        )


async def view(db: asyncpg.Pool | Connection, kind: str, object_id: int | None = None) -> LimitView:
    """The limit of a kind (object_id None: as a key without an override sees it) or a key."""
    if object_id is None:
        row = await store.kind_limit_row(db, kind=kind)
        # What a key of the kind without an override has in force.
        effective = await read_limit(db, kind, None)
    else:
        row = await store.key_limit_row(db, kind=kind, object_id=object_id)
        effective = await read_limit(db, kind, object_id)
    return _view_of(kind, object_id, row, effective)


def _view_of(
    kind: str, object_id: int | None, row: asyncpg.Record | None, effective: KeyLimit
) -> LimitView:
    """The view of a kind's or key's own row (None: it has none) and the limit in force."""
    own = (
        None
        if row is None
        else LimitFields(row["window_seconds"], row["per_window"], row["max_running"])
    )
    return LimitView(
        kind=kind,
        object_id=object_id,
        own=own,
        paused_here=bool(row and row["paused"]),
        effective=effective,
        updated_at=None if row is None else row["updated_at"],
    )


async def kinds_view(pool: asyncpg.Pool, kinds: Sequence[str]) -> list[LimitView]:
    """The limit of every kind that has a row, plus `kinds` (those the replicas run)."""
    rows = await store.kind_limit_rows(pool)
    names = sorted({DEFAULT_KIND, *kinds, *(row["kind"] for row in rows)})
    return [await view(pool, name) for name in names]


async def overrides(pool: asyncpg.Pool, kind: str, *, after: int, limit: int) -> list[LimitView]:
    """The kind's overrides, object ids above `after`, in object order (one statement)."""
    rows = await store.key_limit_rows(pool, kind=kind, after=after, limit=limit)
    return [
        _view_of(
            kind,
            row["object_id"],
            row,
            KeyLimit(
                window=row["in_force_window_seconds"],
                per_window=row["in_force_per_window"],
                max_running=row["in_force_max_running"],
                paused=row["in_force_paused"],
                overridden=True,
            ),
        )
        for row in rows
    ]


async def set_limit(
    pool: asyncpg.Pool,
    kind: str,
    object_id: int | None,
    fields: LimitFields,
    *,
    dry_run: bool = False,
) -> Replanned:
    """Set a kind's limit (object_id None) or a key's override, and re-plan what it changes."""
    if object_id is None and kind == DEFAULT_KIND:
        # Every kind inherits from this row and it inherits from none, so it sets every
        # number: one not given keeps its value (1 on a database never seeded, but a window).
        current = await store.kind_limit_row(pool, kind=DEFAULT_KIND)
        window = fields.window or (current["window_seconds"] if current else None)
        if window is None:
            raise LimitError(
                "The default kind's limit needs a window: every other kind inherits it."
            )
        fields = LimitFields(
            window,
            fields.per_window or (current["per_window"] if current else 1),
            fields.max_running or (current["max_running"] if current else 1),
        )

    async def write(conn: Connection) -> None:
        if object_id is None:
            await store.put_kind_limit(
                conn,
                kind=kind,
                window=fields.window,
                per_window=fields.per_window,
                max_running=fields.max_running,
                paused=None,
            )
        else:
            await store.put_key_limit(
                conn,
                kind=kind,
                object_id=object_id,
                window=fields.window,
                per_window=fields.per_window,
                max_running=fields.max_running,
                paused=None,
            )

    return await _change(pool, kind, object_id, write, dry_run=dry_run)


async def drop_limit(
    pool: asyncpg.Pool, kind: str, object_id: int | None, *, dry_run: bool = False
) -> Replanned | None:
    """Drop a kind's own limit or a key's override (it inherits again); None if it had none."""
    if object_id is None and kind == DEFAULT_KIND:
        raise LimitError("The default kind's limit cannot be dropped: every kind inherits it.")
    found = True

    async def write(conn: Connection) -> None:
        nonlocal found
        if object_id is None:
            found = await store.drop_kind_limit(conn, kind=kind)
        else:
            found = await store.drop_key_limit(conn, kind=kind, object_id=object_id)

    replanned = await _change(pool, kind, object_id, write, dry_run=dry_run)
    return replanned if found else None


async def pause(
    pool: asyncpg.Pool, kind: str, object_id: int | None, *, dry_run: bool = False
) -> Replanned:
    """Pause a kind or a key: it starts nothing (running jobs finish); its pending jobs, and
    those submitted meanwhile, wait for the resume (run_at null)."""

    write = _paused_writer(kind, object_id, paused=True)
    return await _change(pool, kind, object_id, write, dry_run=dry_run, park=True)


async def resume(
    pool: asyncpg.Pool, kind: str, object_id: int | None, *, dry_run: bool = False
) -> Replanned:
    """Resume a kind or a key: its pending jobs are planned from now, spaced by the limit."""

    write = _paused_writer(kind, object_id, paused=False)
    return await _change(pool, kind, object_id, write, dry_run=dry_run, from_now=True)


def _paused_writer(
    kind: str, object_id: int | None, *, paused: bool
) -> Callable[[Connection], Awaitable[None]]:
    """The write of a pause or a resume: the kind's row, or the key's."""

    async def write(conn: Connection) -> None:
        if object_id is None:
            await store.set_kind_paused(conn, kind=kind, paused=paused)
        else:
            await store.set_key_paused(conn, kind=kind, object_id=object_id, paused=paused)

    return write


class _DryRun(Exception):
    """Rolls a dry run's transaction back, carrying what it would have done."""

    def __init__(self, after: LimitView, changes: list[SlotChange]) -> None:
        super().__init__("dry run")
        self.after = after
        self.changes = changes


async def _change(
    pool: asyncpg.Pool,
    kind: str,
    object_id: int | None,
    write: Callable[[Connection], Awaitable[None]],
    *,
    dry_run: bool,
    from_now: bool = False,
    park: bool = False,
) -> Replanned:
    async def decide(conn: Connection) -> tuple[LimitView, list[tuple[str, int]], list[SlotChange]]:
        # The change itself, in one transaction: the new limit, its keys marked for the planner,
        # and a pause's parked jobs (or the keys to re-plan). Run again whole if PostgreSQL
        # broke it off to end a deadlock (plan_exactly locks many slot rows).
        await store.lock_limit_changes(conn)
        await write(conn)
        after = await view(conn, kind, object_id)
        kinds = [kind] if object_id is not None else await store.kinds_inheriting(conn, kind=kind)
        if object_id is not None:
            # The key may have no slot row yet (no job so far, or pruned): make one, locked,
            # so an enqueue of the key that read the limit before this change waits for it
            # and then finds the row marked below, instead of placing its job under the old
            # limit beside the re-plan.
            await slots.lock_object_slots(conn, kind=kind, object_id=object_id)
        # Until each key is re-planned, the one-statement enqueue leaves them be.
        await store.plan_exactly(conn, kinds=kinds, object_id=object_id)
        if park:
            # A pause parks every pending job of the kind (or key) in one statement; nothing
            # needs a re-plan.
            parked = [
                SlotChange(row["id"], row["kind"], row["object_id"], finite(row["before"]), None)
                for row in await store.park_pending(conn, kind=kind, object_id=object_id)
            ]
            if dry_run:
                raise _DryRun(after, parked)
            return after, [], parked
        keys = await store.keys_with_pending(conn, kinds=kinds, object_id=object_id)
        if object_id is not None and (kind, object_id) not in keys:
            # A key without pending jobs is still re-planned, which moves nothing but writes
            # its slot row under the new limit: its next job is then the one statement's
            # again, not the planner's.
            keys.append((kind, object_id))
        if dry_run:
            planned: list[SlotChange] = []
            for key_kind, key_object in keys:
                planned += await replan_key(
                    conn, key_kind, key_object, from_now=from_now, apply=False
                )
            raise _DryRun(after, planned)
        return after, keys, []

    async with pool.acquire() as conn:
        try:
            after, keys, changes = await in_transaction(conn, decide)
        except _DryRun as dry:
            return Replanned(dry.after, dry.changes, dry_run=True)

        async def replan(conn: Connection, some: list[tuple[str, int]]) -> list[SlotChange]:
            await jobs_store.plan_per_call(conn)
            moved: list[SlotChange] = []
            for key_kind, key_object in some:
                moved += await replan_key(conn, key_kind, key_object, from_now=from_now)
            return moved

        # Applied: the new limit is committed (the claim obeys it from now on); the pending
        # slots follow, a few keys per transaction.
        for start in range(0, len(keys), KEYS_PER_TRANSACTION):
            some = keys[start : start + KEYS_PER_TRANSACTION]
            changes += await in_transaction(conn, functools.partial(replan, some=some))
        await jobs_store.notify_due(conn, channel=CHANNEL, seconds=0.0)
    log.info(
        "limit of %s%s changed: %d pending job(s) moved in %d key(s)",
        kind,
        "" if object_id is None else f" object {object_id}",
        len(changes),
        len(keys),
    )
    return Replanned(after, changes, dry_run=False)
