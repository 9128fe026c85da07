"""The queue at a glance, as the page and /metrics show it, read without touching the history:
its counts, the last minutes, the newest failures, the replicas, and the limits in force.

Exact where the rows are few (pending and running jobs, the last minutes, the newest
failures), estimated where they are many (all finished jobs). `dashboard.sql` says which
index keeps each read small.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from paceline.db import dashboard
from paceline.queue.jobs import finite, isoformat

# A count stops reading here; the page says "at least" beyond it.
COUNT_CAP = 100_000
# "Throughput and failures over the last minutes": this many, one bar a minute.
MINUTES = 15
FAILURES_SHOWN = 10
# A replica whose heartbeat is older than this is dead (it beats every ~5 s).
DEAD_AFTER = 15.0
# Limits: at most this many kinds, the first overrides and paused keys shown, and a kind's
# overrides (and a paused key's waiting jobs) counted up to a cap ("at least" beyond it).
KINDS_SHOWN = 100
OVERRIDES_SHOWN = 10
PAUSED_SHOWN = 10
LIMITS_COUNT_CAP = 10_000
FINISHED = ("SUCCESS", "FAILED", "CANCELLED")


@dataclasses.dataclass(frozen=True, slots=True)
class QueuedJob:
    """A pending job the overview points at (the oldest wait, the first slot)."""

    id: int
    kind: str
    object_id: int
    created_at: datetime
    run_at: datetime | None  # None: its key is paused

    def to_json(self) -> dict[str, Any]:
        """For the page."""
        return {
            "id": self.id,
            "kind": self.kind,
            "object_id": self.object_id,
            "created_at": isoformat(self.created_at),
            "run_at": isoformat(self.run_at),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class KindLimit:
    """A kind's limit in force (what its keys without an override have), and its overrides."""

    kind: str
    window_seconds: float
    per_window: int
    max_running: int
    paused: bool
    own_row: bool  # False: everything inherited from the default kind
    overrides: int  # counted up to LIMITS_COUNT_CAP
    paused_keys: int  # among those

    def to_json(self) -> dict[str, Any]:
        """For the page; field names as the /limits API's."""
        return {
            "kind": self.kind,
            "window": self.window_seconds,
            "limit": self.per_window,
            "max_running": self.max_running,
            "paused": self.paused,
            "inherited": not self.own_row,
            "overrides": self.overrides,
            "paused_keys": self.paused_keys,
            "capped": self.overrides >= LIMITS_COUNT_CAP,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class KeyOverride:
    """A key with a limit of its own, and the limit it has in force."""

    kind: str
    object_id: int
    window_seconds: float
    per_window: int
    max_running: int
    paused: bool
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        """For the page."""
        return {
            "kind": self.kind,
            "object_id": self.object_id,
            "window": self.window_seconds,
            "limit": self.per_window,
            "max_running": self.max_running,
            "paused": self.paused,
            "updated_at": isoformat(self.updated_at),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class PausedKey:
    """A paused key: since when (its override's last change), and its jobs waiting."""

    kind: str
    object_id: int
    updated_at: datetime
    waiting: int  # counted up to LIMITS_COUNT_CAP

    def to_json(self) -> dict[str, Any]:
        """For the page."""
        return {
            "kind": self.kind,
            "object_id": self.object_id,
            "updated_at": isoformat(self.updated_at),
            "waiting": self.waiting,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Replica:
    """One process with workers, as its heartbeat row says."""

    id: uuid.UUID
    host: str
    pid: int
    concurrency: int
    running: int
    started_at: datetime
    last_heartbeat: datetime
    alive: bool

    def to_json(self) -> dict[str, Any]:
        """For the page and GET /workers."""
        return {
            "id": str(self.id),
            "host": self.host,
            "pid": self.pid,
            "concurrency": self.concurrency,
            "running": self.running,
            "started_at": isoformat(self.started_at),
            "last_heartbeat": isoformat(self.last_heartbeat),
            "alive": self.alive,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Overview:
    """One consistent look at the whole queue (all replicas), on the database clock."""

    now: datetime
    pending: int
    due: int
    processing: int
    first_due: QueuedJob | None
    oldest_pending: QueuedJob | None
    # Estimated rows per finished status; None where the statistics cannot tell yet.
    finished_estimate: int | None
    finished_by_status: Mapping[str, int | None]
    # (minute, {status: jobs finished in it}), oldest first, the current minute last.
    per_minute: Sequence[tuple[datetime, Mapping[str, int]]]
    recent_failures: Sequence[Mapping[str, Any]]
    replicas: Sequence[Replica]
    limits: Sequence[KindLimit]
    overrides: Sequence[KeyOverride]  # the first OVERRIDES_SHOWN
    paused_keys: Sequence[PausedKey]  # the first PAUSED_SHOWN

    @property
    def waiting(self) -> int:
        """Pending jobs whose slot has not come yet: they wait for their object's window."""
        return max(0, self.pending - self.due)

    def to_json(self) -> dict[str, Any]:
        """What the page renders; counts say whether they are exact."""
        counts: dict[str, Any] = {
            "PENDING": {"count": self.pending, "exact": True, "capped": self.pending >= COUNT_CAP},
            "PROCESSING": {"count": self.processing, "exact": True, "capped": False},
        }
        for status in FINISHED:
            counts[status] = {
                "count": self.finished_by_status.get(status),
                "exact": False,
                "capped": False,
            }
        totals = {
            status: sum(minute[status] for _, minute in self.per_minute) for status in FINISHED
        }
        return {
            "now": isoformat(self.now),
            "counts": counts,
            "count_cap": COUNT_CAP,
            "due": self.due,
            "waiting": self.waiting,
            "first_due": self.first_due.to_json() if self.first_due else None,
            "oldest_pending": self.oldest_pending.to_json() if self.oldest_pending else None,
            "finished_estimate": self.finished_estimate,
            "last_minutes": {
                "minutes": MINUTES,
                **totals,
                "per_minute": [
                    {"minute": isoformat(minute), **finished}
                    for minute, finished in self.per_minute
                ],
            },
            "recent_failures": [dict(failure) for failure in self.recent_failures],
            "replicas": [replica.to_json() for replica in self.replicas],
            "limits": {
                "kinds": [limit.to_json() for limit in self.limits],
                "overrides": [override.to_json() for override in self.overrides],
                "paused_keys": [key.to_json() for key in self.paused_keys],
            },
        }


async def read_overview(pool: asyncpg.Pool) -> Overview:
    """Read the overview in one snapshot, so its numbers add up."""
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        counts = await dashboard.overview_counts(conn, count_cap=COUNT_CAP)
        first_due = await dashboard.overview_first_due(conn)
        oldest = await dashboard.overview_oldest_pending(conn)
        shares = await dashboard.overview_table_estimates(conn)
        # The estimates carry the live rows; read alone only before the first ANALYZE (on a
        # cluster each read visits every shard).
        live_rows = shares[0]["live_rows"] if shares else await dashboard.overview_live_rows(conn)
        minutes = await dashboard.overview_finished_per_minute(conn, minutes=MINUTES)
        failures = await dashboard.overview_recent_failures(conn, limit=FAILURES_SHOWN)
        replicas = await read_replicas(conn)
        limits = await dashboard.overview_kind_limits(
            conn, count_cap=LIMITS_COUNT_CAP, limit=KINDS_SHOWN
        )
        overrides = await dashboard.overview_overrides(conn, limit=OVERRIDES_SHOWN)
        paused = await dashboard.overview_paused_keys(
            conn, limit=PAUSED_SHOWN, count_cap=LIMITS_COUNT_CAP
        )
    finished = _finished_estimate(live_rows, counts["pending"] + counts["processing"])
    return Overview(
        now=counts["now"],
        pending=counts["pending"],
        due=counts["due"],
        processing=counts["processing"],
        first_due=_queued(first_due),
        oldest_pending=_queued(oldest),
        finished_estimate=finished,
        finished_by_status=_split(finished, shares),
        per_minute=_per_minute(counts["now"], minutes),
        recent_failures=[
            {
                "id": row["id"],
                "kind": row["kind"],
                "object_id": row["object_id"],
                "finished_at": isoformat(row["finished_at"]),
                "attempts": row["attempts"],
                "error": row["error"],
            }
            for row in failures
        ],
        replicas=replicas,
        limits=[KindLimit(**dict(row)) for row in limits],
        overrides=[KeyOverride(**dict(row)) for row in overrides],
        paused_keys=[PausedKey(**dict(row)) for row in paused],
    )


async def read_replicas(
    conn: asyncpg.Pool | asyncpg.Connection | PoolConnectionProxy[asyncpg.Record],
) -> list[Replica]:
    """Every registered replica, oldest first, each marked alive or dead."""
    rows = await dashboard.replicas(conn, dead_after=DEAD_AFTER)
    return [Replica(**dict(row)) for row in rows]


class OverviewCache:
    """At most one read of the overview per `max_age` seconds, however many viewers ask."""

    def __init__(self, pool: asyncpg.Pool, *, max_age: float = 0.5) -> None:
        self._pool = pool
        self._max_age = max_age
        self._lock = asyncio.Lock()
        self._value: Overview | None = None
        self._read_at = 0.0

    async def get(self) -> Overview:
        """The overview, read now or at most `max_age` ago."""
        async with self._lock:
            if self._value is None or time.monotonic() - self._read_at >= self._max_age:
                self._value = await read_overview(self._pool)
                self._read_at = time.monotonic()
            return self._value


def _queued(row: asyncpg.Record | None) -> QueuedJob | None:
    if row is None:
        return None
    return QueuedJob(**{**dict(row), "run_at": finite(row["run_at"])})


def _finished_estimate(live_rows: float | None, unfinished: int) -> int | None:
    # n_live_tup is -1 or NULL before the statistics know the table.
    if live_rows is None or live_rows < 0:
        return None
    return max(0, round(live_rows) - unfinished)


def _split(finished: int | None, shares: Sequence[asyncpg.Record]) -> dict[str, int | None]:
    """Share the estimated finished rows out by the statuses' shares in ANALYZE's sample."""
    found = {row["status"]: row["share"] for row in shares if row["status"] in FINISHED}
    total = sum(found.values())
    if finished is None or total <= 0:
        return dict.fromkeys(FINISHED)
    return {status: round(finished * found.get(status, 0.0) / total) for status in FINISHED}


def _per_minute(
    now: datetime, rows: Sequence[asyncpg.Record]
) -> list[tuple[datetime, dict[str, int]]]:
    """Every one of the last MINUTES minutes, those without a finished job included."""
    current = now.replace(second=0, microsecond=0)
    minutes = [current - timedelta(minutes=back) for back in range(MINUTES - 1, -1, -1)]
    table = {minute: dict.fromkeys(FINISHED, 0) for minute in minutes}
    for row in rows:
        if row["minute"] in table:
            table[row["minute"]][row["status"]] = row["jobs"]
    return [(minute, table[minute]) for minute in minutes]
