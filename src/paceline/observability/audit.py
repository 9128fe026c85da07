"""The window auditor: checks, after the fact, that starts of one object were a window apart.

The claim enforces I1; the auditor is the independent witness. Every few seconds it reads the
attempts that started since its last look (from `job_attempts`, the record of every start) and
compares each with the previous start of its object. A violation is logged and counted
(`paceline_window_violations_total`, which must stay 0). Every replica audits the whole
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


@dataclasses.dataclass(frozen=True, slots=True)
class Violation:
    """Two starts of one (kind, object) less than a window apart."""

    kind: str
    object_id: int
    job_id: int
    attempt: int
    started_at: datetime
    previous_job_id: int
    previous_attempt: int
    previous_started_at: datetime

    @property
    def gap(self) -> float:
        """Seconds between the two starts."""
        return (self.started_at - self.previous_started_at).total_seconds()


class WindowAuditor(Service):
    """Audits new starts every `interval` seconds until `stop()`; an unreachable database
    only delays the next look."""

    name = "paceline-auditor"
    failure = "the window audit failed"

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        window: float,
        on_violation: Callable[[Violation], None],
        interval: float = 10.0,
        margin: float = COMMIT_MARGIN,
        since: datetime | None = None,
    ) -> None:
        super().__init__(logger=log, retry=Backoff(interval, interval))
        self._pool = pool
        self._window = window
        self._on_violation = on_violation
        self._interval = interval
        self._margin = margin
        # Starts up to here are audited. None: from the first look on (a replica audits what
        # happens while it lives; the previous start it compares with may be older).
        self.audited_to = since

    async def step(self) -> float:
        """One look."""
        await self.check()
        return self._interval

    async def check(self) -> list[Violation]:
        """Audit the starts since the last check; report and return the violations found."""
        horizon = await dashboard.audit_horizon(self._pool, margin=self._margin)
        if self.audited_to is None:
            self.audited_to = horizon
            return []
        if horizon <= self.audited_to:
            return []
        rows = await dashboard.audit_window(
            self._pool, after=self.audited_to, up_to=horizon, window=self._window
        )
        self.audited_to = horizon
        violations = [Violation(**dict(row)) for row in rows]
        for violation in violations:
            log.error(
                "window violated: %s object %d started job %d (attempt %d) %.6fs after job %d "
                "(attempt %d); the window is %gs",
                violation.kind,
                violation.object_id,
                violation.job_id,
                violation.attempt,
                violation.gap,
                violation.previous_job_id,
                violation.previous_attempt,
                self._window,
                extra={
                    "job_id": violation.job_id,
                    "kind": violation.kind,
                    "object_id": violation.object_id,
                    "attempt": violation.attempt,
                },
            )
            self._on_violation(violation)
        return violations
