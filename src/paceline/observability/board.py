"""What the pages draw and rank beyond the overview: the last hour per kind as a small chart,
and the keys with the longest backlogs. Both read only recent or pending rows (dashboard.sql).

The chart is drawn here, on the server, as the geometry of an inline SVG: no script and no
chart library, so it shows under the pages' CSP and without JavaScript.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from paceline.db import dashboard
from paceline.queue.jobs import finite

HOUR_MINUTES = 60
BAR_MINUTES = 5
BARS = HOUR_MINUTES // BAR_MINUTES
# The chart's drawing box (SVG user units); the page scales it to its width.
CHART_WIDTH = 240
CHART_HEIGHT = 48
BAR_GAP = 2
BUSIEST_SHOWN = 10
# The busiest keys are ranked among this many pending jobs (the page says so beyond it).
BUSIEST_READ_CAP = 100_000


@dataclasses.dataclass(frozen=True, slots=True)
class Bar:
    """One bar of a kind's chart: BAR_MINUTES of finished jobs, drawn as two stacked rects."""

    start: datetime
    succeeded: int
    failed: int
    cancelled: int
    x: float
    width: float
    ok_y: float
    ok_height: float
    failed_y: float
    failed_height: float

    @property
    def label(self) -> str:
        """The bar in words (its tooltip, and what a screen reader says)."""
        end = self.start + timedelta(minutes=BAR_MINUTES)
        span = f"{self.start:%H:%M} to {end:%H:%M} UTC"
        words = f"{span}: {self.succeeded} succeeded, {self.failed} failed"
        return words + (f", {self.cancelled} cancelled" if self.cancelled else "")


@dataclasses.dataclass(frozen=True, slots=True)
class KindChart:
    """A kind's last hour: its totals and its bars, oldest first."""

    kind: str
    succeeded: int
    failed: int
    cancelled: int
    most: int  # the tallest bar's jobs: the chart's scale
    bars: Sequence[Bar]


@dataclasses.dataclass(frozen=True, slots=True)
class BusyKey:
    """A key with a backlog: how many wait, the first one's slot, and a new job's slot."""

    kind: str
    object_id: int
    waiting: int
    first_slot: datetime | None  # None: the key is paused
    next_slot: datetime | None  # None: a new job would start at once
    now: datetime


async def read_charts(pool: asyncpg.Pool) -> list[KindChart]:
    """Every kind that finished a job in the last hour, with its chart."""
    rows = await dashboard.finished_per_kind(pool, minutes=HOUR_MINUTES, bar_minutes=BAR_MINUTES)
    if not rows:
        return []
    return charts([dict(row) for row in rows], rows[0]["current_bar"])


def charts(rows: Sequence[Mapping[str, Any]], latest: datetime) -> list[KindChart]:
    """The charts of `rows` (kind, bar, succeeded, failed, cancelled), BARS bars each, the
    last starting at `latest`."""
    starts = [latest - timedelta(minutes=BAR_MINUTES * back) for back in range(BARS - 1, -1, -1)]
    by_kind: dict[str, dict[datetime, tuple[int, int, int]]] = {}
    for row in rows:
        counts = (row["succeeded"], row["failed"], row["cancelled"])
        by_kind.setdefault(row["kind"], {})[row["bar"]] = counts
    slot = CHART_WIDTH / BARS
    found = []
    for kind, bars in sorted(by_kind.items()):
        series = [bars.get(start, (0, 0, 0)) for start in starts]
        most = max(1, *(sum(counts) for counts in series))
        drawn = []
        for index, (start, (ok, bad, cancelled)) in enumerate(zip(starts, series, strict=True)):
            ok_height = CHART_HEIGHT * (ok + cancelled) / most
            bad_height = CHART_HEIGHT * bad / most
            drawn.append(
                Bar(
                    start=start,
                    succeeded=ok,
                    failed=bad,
                    cancelled=cancelled,
                    x=round(index * slot + BAR_GAP / 2, 2),
                    width=round(slot - BAR_GAP, 2),
                    ok_y=round(CHART_HEIGHT - ok_height, 2),
                    ok_height=round(ok_height, 2),
                    failed_y=round(CHART_HEIGHT - ok_height - bad_height, 2),
                    failed_height=round(bad_height, 2),
                )
            )
        found.append(
            KindChart(
                kind=kind,
                succeeded=sum(counts[0] for counts in series),
                failed=sum(counts[1] for counts in series),
                cancelled=sum(counts[2] for counts in series),
                most=most,
                bars=drawn,
            )
        )
    return found


async def read_busiest(pool: asyncpg.Pool) -> list[BusyKey]:
    """The keys with the longest backlogs, longest first."""
    rows = await dashboard.busiest_keys(pool, limit=BUSIEST_SHOWN, read_cap=BUSIEST_READ_CAP)
    return [
        BusyKey(
            kind=row["kind"],
            object_id=row["object_id"],
            waiting=row["waiting"],
            first_slot=finite(row["first_slot"]),
            next_slot=row["next_slot"]
            if row["next_slot"] and row["next_slot"] > row["now"]
            else None,
            now=row["now"],
        )
        for row in rows
    ]
