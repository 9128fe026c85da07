"""The sliding-window rule and an exact slot planner for it, without a database.

A key's limit is N starts per W seconds: no half-open interval of length W holds more than N
of the key's starts (past starts and reserved slots alike). For the sorted starts T that is
`T[i + N] - T[i] >= W` for every i; N = 1 is "starts at least W apart". N starts may share an
instant; the (N+1)-th comes a window after the first.

Times are datetimes and the window is `Limit.step`, a timedelta (whole microseconds), so the
arithmetic is exact and the planner's answers are the true minima, not approximations.
"""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect_right, insort
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

# The slot of a job that cannot start before the last instant a datetime holds (asyncpg sends
# it as PostgreSQL's 'infinity').
BEYOND = datetime.max.replace(tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class Limit:
    """At most `per_window` starts in any `window` seconds."""

    window: float
    per_window: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.window, int | float) and math.isfinite(self.window)):
            raise ValueError(f"window must be a finite number of seconds, not {self.window!r}")
        if isinstance(self.per_window, bool) or not isinstance(self.per_window, int):
            raise ValueError(f"per_window must be an integer, not {self.per_window!r}")
        if self.per_window < 1:
            raise ValueError(f"per_window must be at least 1, not {self.per_window}")
        try:
            step = timedelta(seconds=self.window)
        except OverflowError:
            raise ValueError(f"window {self.window} s is too long") from None
        # A window that rounds to nothing would allow any number of starts at once.
        if step <= timedelta(0):
            raise ValueError(f"window must be at least a microsecond, not {self.window} s")

    @property
    def step(self) -> timedelta:
        """The window as a timedelta: what the rule compares distances with."""
        return timedelta(seconds=self.window)


def holds(times: Sequence[datetime], limit: Limit) -> bool:
    """True if no window of `limit` holds more than `limit.per_window` of `times` (any order)."""
    ordered = sorted(times)
    n, step = limit.per_window, limit.step
    return all(ordered[i + n] - ordered[i] >= step for i in range(len(ordered) - n))


def count_in_window(times: Sequence[datetime], at: datetime, limit: Limit) -> int:
    """How many of `times` fall in the window that ends at `at`: `(at - W, at]`.

    A start at `at` is allowed by the past alone when this is below `limit.per_window`.
    """
    ordered = sorted(times)
    return bisect_right(ordered, at) - bisect_right(ordered, at - limit.step)


def fits(taken: Sequence[datetime], t: datetime, limit: Limit) -> bool:
    """True if a start at `t` puts no window containing `t` over the limit of `taken`."""
    return _blocked_until(sorted(taken), t, limit) is None


def earliest_slot(taken: Sequence[datetime], lower: datetime, limit: Limit) -> datetime:
    """The earliest `t >= lower` at which a start fits among `taken` (any order).

    First fit: a free slot before a reservation far ahead is found. If `taken` satisfies the
    rule, so does `taken + [t]`. (If it does not, e.g. starts made under an older, looser limit,
    `t` is still the earliest start that puts no window containing it over the limit.) Starts
    at or before `lower - W` cannot affect the answer, so a caller may leave them out.
    """
    return _earliest_in_sorted(sorted(taken), lower, limit)


def replan(
    fixed: Sequence[datetime],
    lowers: Sequence[datetime],
    limit: Limit,
    *,
    keep_order: bool | Sequence[bool] = True,
) -> list[datetime]:
    """New slots for a key's pending jobs, given in slot order with their lower bounds.

    `fixed` are starts that already happened; they count against the window. Each job in turn
    takes the earliest slot that fits after its lower bound and, if it keeps order (all jobs
    with `keep_order=True`, or those whose flag is true in a sequence of flags), not before
    the slot of the previous job that keeps order, so those jobs start in this order. A job
    that does not keep order (a job scheduled far ahead) may be passed by those behind it,
    and it does not hold them up.

    With every job keeping order the plan is the earliest possible, job by job: if some other
    ordered plan P fits (`P[i] >= lowers[i]`), then `P[i]` also fits among `fixed` and the
    greedy slots before i (each of those is <= its counterpart in P and <= `P[i]`, so a window
    containing `P[i]` holds no more of them than of P), hence greedy slot i <= `P[i]`, by
    induction.
    """
    ordered = [keep_order] * len(lowers) if isinstance(keep_order, bool) else list(keep_order)
    if len(ordered) != len(lowers):
        raise ValueError("keep_order needs one flag per job")
    taken = sorted(fixed)
    slots: list[datetime] = []
    previous: datetime | None = None
    for lower, in_order in zip(lowers, ordered, strict=True):
        bound = max(lower, previous) if in_order and previous is not None else lower
        slot = _earliest_in_sorted(taken, bound, limit)
        insort(taken, slot)
        slots.append(slot)
        if in_order:
            previous = slot
    return slots


def _earliest_in_sorted(taken: list[datetime], lower: datetime, limit: Limit) -> datetime:
    # Why this finds the minimum, and quickly. A start t is blocked exactly when some N starts
    # of `taken` together with t span less than W; for the run taken[j : j + N] that is
    #     taken[j + N - 1] - W  <  t  <  taken[j] + W,
    # an open interval. The allowed times are the complement of a union of open intervals, so
    # the earliest allowed t >= lower is `lower` itself or the right end of one of them, some
    # `s + W` with s in `taken`. When t is blocked by run j, every time in [t, taken[j] + W) is
    # blocked by the same run, so we jump there; each jump lands on a larger `s + W`, so there
    # are at most len(taken) of them, each a bisect and an O(N) look at the runs around t. On
    # an idle key, or when appending after the last slot, the first or second look succeeds.
    #
    # A slot past Python's last datetime (the year 9999: a window of years behind a backlog of
    # hundreds) is `BEYOND`, which the database stores as 'infinity': the job waits, like a
    # paused one, until a change of limit brings it back in range.
    t = lower
    try:
        while (until := _blocked_until(taken, t, limit)) is not None:
            t = until
    except OverflowError:
        return BEYOND
    return t


def _blocked_until(taken: list[datetime], t: datetime, limit: Limit) -> datetime | None:
    """None if a start at `t` fits in sorted `taken`; else a later time before which none does."""
    n, step = limit.per_window, limit.step
    # Only runs of N consecutive starts around t's place need a look: a run further left (or
    # right) spans more with t than the run next to it on the same side, so if it blocks t the
    # nearer one does too.
    place = bisect_right(taken, t)
    until: datetime | None = None
    for j in range(max(0, place - n), min(place, len(taken) - n) + 1):
        first, last = taken[j], taken[j + n - 1]
        if max(last, t) - min(first, t) < step:
            # first + W > t here: first > t, or first <= t and t - first < W.
            until = first + step if until is None else max(until, first + step)
    return until
