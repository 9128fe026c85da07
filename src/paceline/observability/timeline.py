"""One key's timeline: its limit, its past runs, its reserved slots, and why each waiting job
waits.

"Why is my job not running?" is what users of a rate-limited queue ask most. The answer, as the
claim decides it (db/jobs.sql, claim_due_jobs), is one of: the key is paused; its slot has not
come (the key's limit of N starts per window W, counted from its recent starts); it was
scheduled for later (`not_before`); it queues behind an earlier job of its key (jobs of a key
start in slot order); the key already runs its M jobs at once; or it is due and waits for a
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
from paceline.db import limits as limits_store
from paceline.db.pool import Connection
from paceline.queue.jobs import Job, Status, finite, isoformat
from paceline.queue.scheduling import KeyLimit, next_free, read_limit

RUNS_SHOWN = 50
WAITING_SHOWN = 50
WAITING_CAP = 10_000

# A reason in words: text, and times ({"time": ISO 8601}) the page shows in the viewer's zone.
Reason = list[str | dict[str, str | None]]


@dataclasses.dataclass(frozen=True, slots=True)
class Wait:
    """Why a pending job has not started, and from when it may."""

    # "paused": the key is paused, the job starts after the resume (no slot);
    # "window": its slot, or the key's recent starts (N in the last W), hold it;
    # "not_before": it was scheduled for later, and its slot is that time;
    # "queue": an earlier job of the key goes first;
    # "running": due, but the key runs its M jobs at once (after_job: the oldest of them);
    # "due": nothing holds it but a free worker.
    kind: str
    slot: datetime | None
    starts_at: datetime | None
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
class KeyActivity:
    """What holds a key's next start besides its slots, read in the timeline's snapshot."""

    now: datetime
    limit: KeyLimit
    last_start: datetime | None
    # The key's starts in the last W that count against its limit, newest first, at most N.
    window_starts: Sequence[datetime]
    # The key's running jobs, oldest start first.
    running: Sequence[int]

    @property
    def window_opens(self) -> datetime | None:
        """When the recent starts let one more start: the N-th newest plus W (None: now)."""
        n = self.limit.per_window
        if len(self.window_starts) < n:
            return None
        return self.window_starts[n - 1] + timedelta(seconds=self.limit.window)


@dataclasses.dataclass(frozen=True, slots=True)
class Timeline:
    """What the object page shows."""

    kind: str
    object_id: int
    limit: KeyLimit
    now: datetime
    last_start: datetime | None
    next_free_slot: datetime | None
    running: Sequence[int]
    waiting: list[dict[str, Any]]
    waiting_total: int
    runs: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """For the page."""
        return {
            "kind": self.kind,
            "object_id": self.object_id,
            "window": self.limit.window,
            "limit": {
                "window": self.limit.window,
                "limit": self.limit.per_window,
                "max_running": self.limit.max_running,
                "paused": self.limit.paused,
                "overridden": self.limit.overridden,
                "text": limit_sentence(self.kind, self.limit),
            },
            "now": isoformat(self.now),
            "last_start": isoformat(self.last_start),
            "next_free_slot": isoformat(self.next_free_slot),
            "running": list(self.running),
            "waiting": self.waiting,
            "waiting_total": self.waiting_total,
            "waiting_capped": self.waiting_total >= WAITING_CAP,
            "runs": self.runs,
        }


def limit_sentence(kind: str, limit: KeyLimit) -> str:
    """The key's limit in words, and where it comes from."""
    starts = f"{limit.per_window} start{'' if limit.per_window == 1 else 's'}"
    source = (
        "this object's own limit (an override)" if limit.overridden else f"the limit of kind {kind}"
    )
    sentence = (
        f"At most {starts} every {limit.window:g} seconds and {limit.max_running} running at "
        f"once: {source}."
    )
    return f"Paused: nothing starts until it is resumed. {sentence}" if limit.paused else sentence


async def read_timeline(pool: asyncpg.Pool, object_id: int, kind: str = DEFAULT_KIND) -> Timeline:
    """The key's timeline now; every read is an index probe of this key's rows."""
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        limit = await read_limit(conn, kind, object_id)
        activity, next_slot = await _key_activity(conn, kind, object_id, limit)
        if next_slot is None and not limit.paused:
            # Where the one statement would leave a new job to the planner: worked out as the
            # planner would place it (reads the key's pending jobs and recent starts).
            _, next_slot = await next_free(conn, kind, object_id, lock=False)
        pending = [
            dict(row)
            for row in await dashboard.timeline_waiting(
                conn, kind=kind, object_id=object_id, limit=WAITING_SHOWN
            )
        ]
        total = await dashboard.timeline_waiting_count(
            conn, kind=kind, object_id=object_id, cap=WAITING_CAP
        )
        # Enough earlier starts that each run shown can be checked against its key's limit.
        runs = await dashboard.timeline_runs(
            conn,
            kind=kind,
            object_id=object_id,
            limit=RUNS_SHOWN + min(limit.per_window, RUNS_SHOWN),
        )
    now, last_start = activity.now, activity.last_start
    running = activity.running
    waits = explain_waits(pending, activity)
    return Timeline(
        kind=kind,
        object_id=object_id,
        limit=limit,
        now=now,
        last_start=last_start,
        # A slot in the past is no reservation: a new job would start at once.
        next_free_slot=next_slot if next_slot is not None and next_slot > now else None,
        running=running,
        waiting=[
            {
                "id": row["id"],
                "created_at": isoformat(row["created_at"]),
                "run_at": isoformat(finite(row["run_at"])),
                "not_before": isoformat(row["not_before"]),
                "attempts": row["attempts"],
                "error": row["error"],
                "wait": {**wait.to_json(), "reason": reason(wait, activity, row["attempts"])},
            }
            for row, wait in zip(pending, waits, strict=True)
        ],
        waiting_total=total,
        runs=_runs_with_gaps(runs, limit),
    )


async def _key_activity(
    conn: Connection, kind: str, object_id: int, limit: KeyLimit
) -> tuple[KeyActivity, datetime | None]:
    """What holds the key's next start besides its slots, and the slot the one-statement
    enqueue would give a new job (None where it would leave the job to the planner)."""
    windows = await dashboard.timeline_windows(
        conn, kind=kind, object_id=object_id, window=limit.window, per_window=limit.per_window
    )
    now, last_start = windows["now"], windows["last_started_at"]
    if limit.per_window == 1:
        # What the claim reads for N = 1: the key's last start (it outlives the history).
        recent = last_start is not None and last_start > now - timedelta(seconds=limit.window)
        window_starts = [last_start] if recent else []
    else:
        window_starts = await dashboard.timeline_window_starts(
            conn, kind=kind, object_id=object_id, window=limit.window, limit=limit.per_window
        )
    running = await limits_store.running_jobs_of_key(conn, kind=kind, object_id=object_id)
    activity = KeyActivity(now, limit, last_start, window_starts, running)
    return activity, windows["one_statement_slot"]


async def job_wait(pool: asyncpg.Pool, job: Job) -> Reason | None:
    """Why one pending job waits, worded as its object's timeline words it (None unless it is
    pending): the same reading of its key, and the one job ahead of it in slot order."""
    if job.status is not Status.PENDING:
        return None
    row = {
        "id": job.id,
        "run_at": job.run_at,
        "not_before": job.not_before,
        "attempts": job.attempts,
    }
    async with (
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        limit = await read_limit(conn, job.kind, job.object_id)
        activity, _ = await _key_activity(conn, job.kind, job.object_id, limit)
        ahead = None
        if job.run_at is not None:
            ahead = await dashboard.job_ahead(
                conn, kind=job.kind, object_id=job.object_id, run_at=job.run_at, job_id=job.id
            )
    pending = [row] if ahead is None else [dict(ahead), row]
    wait = explain_waits(pending, activity)[-1]
    return reason(wait, activity, job.attempts)


def explain_waits(pending: Sequence[Mapping[str, Any]], key: KeyActivity) -> list[Wait]:
    """Why each of a key's pending jobs (in slot order) waits.

    Only the first may start next (slot order); it waits for its slot, and for the key's
    recent starts to leave room for one more, which is later than the slot when those starts
    were late; once both have come, for one of the key's M running jobs to finish. Every job
    behind it waits for the one before, unless its slot is the later time it was scheduled
    for.
    """
    waits: list[Wait] = []
    previous: Mapping[str, Any] | None = None
    for row in pending:
        slot = finite(row["run_at"])
        not_before = row.get("not_before")
        if key.limit.paused or slot is None:
            waits.append(Wait("paused", slot=None, starts_at=None, last_start=key.last_start))
        elif not_before is not None and slot == not_before and slot > key.now:
            waits.append(Wait("not_before", slot=slot, starts_at=slot))
        elif previous is not None:
            waits.append(
                Wait(
                    "queue",
                    slot=slot,
                    starts_at=slot,
                    last_start=key.last_start,
                    after_job=previous["id"],
                    after_slot=finite(previous["run_at"]),
                )
            )
        else:
            opens = key.window_opens
            starts_at = slot if opens is None else max(slot, opens)
            if starts_at > key.now:
                wait = Wait("window", slot=slot, starts_at=starts_at, last_start=key.last_start)
            elif len(key.running) >= key.limit.max_running:
                wait = Wait("running", slot=slot, starts_at=None, after_job=key.running[0])
            else:
                wait = Wait("due", slot=slot, starts_at=starts_at, last_start=key.last_start)
            waits.append(wait)
        previous = row
    return waits


def reason(wait: Wait, key: KeyActivity, attempts: int) -> Reason:
    """Why the job waits, in words (what the page shows)."""
    words: Reason = [f"retry, attempt {attempts + 1} · "] if attempts > 0 else []
    limit = key.limit
    if wait.kind == "paused":
        words.append("paused (starts after resume)")
    elif wait.kind == "not_before":
        words += ["not before ", _time(wait.slot), " (scheduled for then)"]
    elif wait.kind == "queue":
        words += [
            f"after job {wait.after_job} (slot ",
            _time(wait.after_slot),
            "): jobs of an object start in slot order; slot ",
            _time(wait.slot),
        ]
    elif wait.kind == "running":
        words.append(
            f"waits for job {wait.after_job} to finish: {len(key.running)} running, at most "
            f"{limit.max_running} at once"
        )
    elif wait.kind == "window":
        starts = len(key.window_starts)
        words.append(
            f"window: {starts} start{'' if starts == 1 else 's'} in the last {limit.window:g} s "
            f"(at most {limit.per_window})"
        )
        if key.last_start is not None:
            words += [", the last at ", _time(key.last_start)]
        words += ["; slot ", _time(wait.slot)]
        # Only a start late by a second or more moves the time shown (shown to the second).
        late = wait.starts_at and wait.slot and wait.starts_at - wait.slot >= timedelta(seconds=1)
        if late:
            words += ["; the last starts were late, so not before ", _time(wait.starts_at)]
    else:
        words += ["due since ", _time(wait.starts_at), ": waiting for a free worker"]
    return words


def _time(moment: datetime | None) -> dict[str, str | None]:
    return {"time": isoformat(moment)}


def _runs_with_gaps(rows: list[asyncpg.Record], limit: KeyLimit) -> list[dict[str, Any]]:
    """Newest first, each with the seconds since the key's start before it, and whether it came
    less than W after the N-th start before it (I1'); rows holds that many earlier starts
    where the key has them (N at most RUNS_SHOWN)."""
    n, window = limit.per_window, timedelta(seconds=limit.window)
    runs = []
    for index, (row, before) in enumerate(
        itertools.zip_longest(rows[:RUNS_SHOWN], rows[1 : RUNS_SHOWN + 1])
    ):
        gap = None if before is None else (row["started_at"] - before["started_at"]).total_seconds()
        nth_before = rows[index + n] if index + n < len(rows) else None
        runs.append(
            {
                "job_id": row["job_id"],
                "attempt": row["attempt"],
                "started_at": isoformat(row["started_at"]),
                "finished_at": isoformat(row["finished_at"]),
                # NULL while the attempt runs.
                "outcome": row["outcome"] or "RUNNING",
                "error": row["error"],
                "replica": replica_name(row),
                "gap": gap,
                "too_soon": nth_before is not None
                and row["started_at"] - nth_before["started_at"] < window,
            }
        )
    return runs


def replica_name(row: asyncpg.Record) -> str | None:
    """The replica that ran an attempt (host:pid), or its id's start once it is gone."""
    if row["host"] is not None:
        return f"{row['host']}:{row['pid']}"
    # The replica stopped and its row is gone; its id still tells runs of one process apart.
    return None if row["worker_id"] is None else str(row["worker_id"])[:8]
