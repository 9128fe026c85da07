"""The limit auditor: checks, after the fact, that the starts of each key obeyed its limit.

The claim enforces I1' (at most N starts of a key in any window W) and I7 (at most M of its
attempts at once); the auditor is the independent witness. Every few seconds it reads the
attempts that started since its last look (from `job_attempts`, the record of every start) and
checks each against the limit its claim started it under (recorded with the attempt, so a limit
changed since does not make a lawful start look unlawful): the N-th previous start of the key
must be a window or more before it, and fewer than M of the key's attempts may have been
running when it started. A violation is logged and counted (`paceline_window_violations_total` and
`paceline_running_violations_total`, which must stay 0). Every replica audits the whole
database, so alert on the maximum across replicas, not the sum.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime

import asyncpg

from paceline.db import dashboard
from paceline.queue.service import Backoff, Service

log = logging.getLogger(__name__)

# Starts younger than this may belong to a claim not committed yet; they wait for the next look.
COMMIT_MARGIN = 5.0
# How many earlier starts of its key a start is compared with for I7: an attempt still running
# after this many later starts of its key is not seen (the read per start stays bounded).
RUNNING_LOOKBACK = 100


@dataclasses.dataclass(frozen=True, slots=True)
class WindowViolation:
    """A start less than its key's window after the key's N-th previous start: N + 1 starts
    in less than W."""

    kind: str
    object_id: int
    job_id: int
    attempt: int
    started_at: datetime
    window_seconds: float
    per_window: int
    previous_job_id: int
    previous_attempt: int
    previous_started_at: datetime

    @property
    def gap(self) -> float:
        """Seconds from the N-th previous start to this one (less than the window)."""
        return (self.started_at - self.previous_started_at).total_seconds()


@dataclasses.dataclass(frozen=True, slots=True)
class RunningViolation:
    """A start made while its key already had `max_running` attempts (or more) running."""

    kind: str
    object_id: int
    job_id: int
    attempt: int
    started_at: datetime
    max_running: int
    running_job_ids: list[int]


Violation = WindowViolation | RunningViolation


@dataclasses.dataclass(frozen=True, slots=True)
class Audit:
    """What one look found."""

    window: list[WindowViolation]
    running: list[RunningViolation]


class LimitAuditor(Service):
    """Audits new starts every `interval` seconds until `stop()`; an unreachable database
    only delays the next look."""

    name = "paceline-auditor"
    failure = "the limit audit failed"

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        on_violation: Callable[[Violation], None],
        interval: float = 10.0,
        margin: float = COMMIT_MARGIN,
        since: datetime | None = None,
    ) -> None:
        super().__init__(logger=log, retry=Backoff(interval, interval))
        self._pool = pool
        self._on_violation = on_violation
        self._interval = interval
        self._margin = margin
        # Starts up to here are audited. None: from the first look on (a replica audits what
        # happens while it lives; the previous starts it compares with may be older).
        self.audited_to = since

    async def step(self) -> float:
        """One look."""
        await self.check()
        return self._interval

    async def check(self) -> Audit:
        """Audit the starts since the last check; report and return the violations found."""
        horizon = await dashboard.audit_horizon(self._pool, margin=self._margin)
        if self.audited_to is None:
            self.audited_to = horizon
        if horizon <= self.audited_to:
            return Audit([], [])
        after, self.audited_to = self.audited_to, horizon
        # One read of the new starts for both rules (each start, and its limit, read once).
        rows = await dashboard.audit_starts(
            self._pool, after=after, up_to=horizon, lookback=RUNNING_LOOKBACK
        )
        found = Audit(
            window=[_window_violation(row) for row in rows if row["previous_job_id"] is not None],
            running=[
                _running_violation(row)
                for row in rows
                if len(row["running_job_ids"] or ()) >= row["max_running"]
            ],
        )
        for violation in found.window:
            log.error(
                "window violated: %s object %d started job %d (attempt %d) %.6fs after job %d "
                "(attempt %d), %d start(s) earlier; the limit is %d per %gs",
                violation.kind,
                violation.object_id,
                violation.job_id,
                violation.attempt,
                violation.gap,
                violation.previous_job_id,
                violation.previous_attempt,
                violation.per_window,
                violation.per_window,
                violation.window_seconds,
                extra=_fields(violation),
            )
            self._on_violation(violation)
        for overlap in found.running:
            log.error(
                "max_running violated: %s object %d started job %d (attempt %d) while jobs %s "
                "ran; at most %d may run at once",
                overlap.kind,
                overlap.object_id,
                overlap.job_id,
                overlap.attempt,
                ", ".join(map(str, overlap.running_job_ids)),
                overlap.max_running,
                extra=_fields(overlap),
            )
            self._on_violation(overlap)
        return found


def _window_violation(row: asyncpg.Record) -> WindowViolation:
    return WindowViolation(
        kind=row["kind"],
        object_id=row["object_id"],
        job_id=row["job_id"],
        attempt=row["attempt"],
        started_at=row["started_at"],
        window_seconds=row["window_seconds"],
        per_window=row["per_window"],
        previous_job_id=row["previous_job_id"],
        previous_attempt=row["previous_attempt"],
        previous_started_at=row["previous_started_at"],
    )


def _running_violation(row: asyncpg.Record) -> RunningViolation:
    return RunningViolation(
        kind=row["kind"],
        object_id=row["object_id"],
        job_id=row["job_id"],
        attempt=row["attempt"],
        started_at=row["started_at"],
        max_running=row["max_running"],
        running_job_ids=row["running_job_ids"],
    )


def _fields(violation: Violation) -> dict[str, object]:
    return {
        "job_id": violation.job_id,
        "kind": violation.kind,
        "object_id": violation.object_id,
        "attempt": violation.attempt,
    }
