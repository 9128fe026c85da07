"""One object's timeline: its past runs, its reserved slots, and why each waiting job waits.

"Why is my job not running?" is what users of a rate-limited queue ask most; the answer is
always one of: its slot has not come (the window since the object's last start), it queues
behind an older job of its object (FIFO, each a window apart), or it is due and waits for a
free worker.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from paceline.contract import DEFAULT_KIND
from paceline.db import dashboard
from paceline.queue.jobs import isoformat

RUNS_SHOWN = 50
WAITING_SHOWN = 50
WAITING_CAP = 10_000


@dataclasses.dataclass(frozen=True, slots=True)
class Wait:
    """Why a pending job has not started, and from when it may."""

    # "window": its slot (or the window since the last start) has not come;
    # "queue": an older job of the object goes first, a window before it;
    # "due": nothing holds it but a free worker.
    kind: str
    slot: datetime
    starts_at: datetime
    last_start: datetime | None = None
    after_job: int | None = None
    after_slot: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """Times as ISO 8601 UTC; the page words them in the viewer's time zone."""
        return {
            "kind": self.kind,
            "slot": isoformat(self.slot),
            "starts_at": isoformat(self.starts_at),
            "last_start": isoformat(self.last_start),
            "after_job": self.after_job,
            "after_slot": isoformat(self.after_slot),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Timeline:
    """What the object page shows."""

    kind: str
    object_id: int
    window: float
    now: datetime
    last_start: datetime | None
    next_free_slot: datetime | None
    waiting: list[dict[str, Any]]
    waiting_total: int
    runs: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """For the page."""
        return {
            "kind": self.kind,
            "object_id": self.object_id,
            "window": self.window,
            "now": isoformat(self.now),
            "last_start": isoformat(self.last_start),
            "next_free_slot": isoformat(self.next_free_slot),
            "waiting": self.waiting,
            "waiting_total": self.waiting_total,
            "waiting_capped": self.waiting_total >= WAITING_CAP,
            "runs": self.runs,
        }


async def read_timeline(
    pool: asyncpg.Pool, object_id: int, window: float, kind: str = DEFAULT_KIND
) -> Timeline:
    """The object's timeline now; every read is an index probe of this object's rows."""
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        windows = await dashboard.timeline_windows(conn, kind=kind, object_id=object_id)
        pending = [
            dict(row)
            for row in await dashboard.timeline_waiting(
                conn, kind=kind, object_id=object_id, limit=WAITING_SHOWN
            )
        ]
        total = await dashboard.timeline_waiting_count(
            conn, kind=kind, object_id=object_id, cap=WAITING_CAP
        )
        # One more than shown: the oldest run shown still gets its gap to the one before.
        runs = await dashboard.timeline_runs(
            conn, kind=kind, object_id=object_id, limit=RUNS_SHOWN + 1
        )
    now, last_start = windows["now"], windows["last_started_at"]
    waits = explain_waits(pending, now=now, last_start=last_start, window=window)
    next_slot = windows["next_slot"]
    return Timeline(
        kind=kind,
        object_id=object_id,
        window=window,
        now=now,
        last_start=last_start,
        # A slot in the past is no reservation: a new job would start at once.
        next_free_slot=next_slot if next_slot is not None and next_slot > now else None,
        waiting=[
            {
                "id": row["id"],
                "created_at": isoformat(row["created_at"]),
                "run_at": isoformat(row["run_at"]),
                "attempts": row["attempts"],
                "error": row["error"],
                "wait": wait.to_json(),
            }
            for row, wait in zip(pending, waits, strict=True)
        ],
        waiting_total=total,
        runs=_runs_with_gaps(runs, window),
    )


def explain_waits(
    pending: Sequence[Mapping[str, Any]],
    *,
    now: datetime,
    last_start: datetime | None,
    window: float,
) -> list[Wait]:
    """Why each of an object's pending jobs (oldest first) waits.

    Only the oldest may start next (FIFO); it waits for its slot and for a window since the
    object's last actual start, which is later than the slot when that start was late.
    Every job behind it holds a slot a window after the one before.
    """
    waits: list[Wait] = []
    previous: Mapping[str, Any] | None = None
    for row in pending:
        slot = row["run_at"]
        if previous is not None:
            waits.append(
                Wait(
                    "queue",
                    slot=slot,
                    starts_at=slot,
                    last_start=last_start,
                    after_job=previous["id"],
                    after_slot=previous["run_at"],
                )
            )
        else:
            window_opens = last_start + timedelta(seconds=window) if last_start else slot
            starts_at = max(slot, window_opens)
            kind = "due" if starts_at <= now else "window"
            waits.append(Wait(kind, slot=slot, starts_at=starts_at, last_start=last_start))
        previous = row
    return waits


def _runs_with_gaps(rows: list[asyncpg.Record], window: float) -> list[dict[str, Any]]:
    """Newest first, each with the seconds since the object's start before it (I1: >= W)."""
    runs = []
    for row, before in itertools.zip_longest(rows[:RUNS_SHOWN], rows[1 : RUNS_SHOWN + 1]):
        gap = None if before is None else (row["started_at"] - before["started_at"]).total_seconds()
        runs.append(
            {
                "job_id": row["job_id"],
                "attempt": row["attempt"],
                "started_at": isoformat(row["started_at"]),
                "finished_at": isoformat(row["finished_at"]),
                # NULL while the attempt runs.
                "outcome": row["outcome"] or "RUNNING",
                "error": row["error"],
                "replica": _replica(row),
                "gap": gap,
                "too_soon": gap is not None and gap < window,
            }
        )
    return runs


def _replica(row: asyncpg.Record) -> str | None:
    if row["host"] is not None:
        return f"{row['host']}:{row['pid']}"
    # The replica stopped and its row is gone; its id still tells runs of one process apart.
    return None if row["worker_id"] is None else str(row["worker_id"])[:8]
