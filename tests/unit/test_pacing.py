"""The slot planner for N starts per window, against a brute-force model and by example.

The model scans a grid finer than the inputs (which sit on quarter seconds) for the first time
at which the rule still holds; the planner must give exactly that time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paceline.queue.pacing import (
    BEYOND,
    Limit,
    count_in_window,
    earliest_slot,
    fits,
    holds,
    replan,
)

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)
GRID = timedelta(seconds=0.125)


def sec(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def quarters(count: int) -> datetime:
    return NOW + timedelta(microseconds=250_000 * count)


def offsets(times: Sequence[datetime]) -> list[float]:
    return [(t - NOW).total_seconds() for t in times]


def first_on_grid(allowed: Callable[[datetime], bool], lower: datetime) -> datetime:
    t = lower
    while not allowed(t):
        t += GRID
    return t


def model_earliest(taken: Sequence[datetime], lower: datetime, limit: Limit) -> datetime:
    """The first grid time at or after `lower` that keeps the rule (`taken` keeps it)."""
    return first_on_grid(lambda t: holds([*taken, t], limit), lower)


def model_fits(taken: Sequence[datetime], t: datetime, limit: Limit) -> bool:
    """No N starts of `taken` together with `t` fit in less than a window (any `taken`)."""
    return all(
        max(*group, t) - min(*group, t) >= limit.step
        for group in itertools.combinations(taken, limit.per_window)
    )


LIMITS = st.builds(
    Limit, window=st.sampled_from([0.25, 1.0, 2.5, 3.0]), per_window=st.integers(1, 4)
)
TIMES = st.lists(st.integers(0, 80).map(quarters), max_size=12)


def keeping_the_rule(times: Sequence[datetime], limit: Limit) -> list[datetime]:
    """The times, in their random order, that fit among those kept before: gaps and all."""
    kept: list[datetime] = []
    for t in times:
        if holds([*kept, t], limit):
            kept.append(t)
    return kept


# Properties against the model.


@settings(max_examples=300, deadline=None)
@given(limit=LIMITS, times=TIMES, lower=st.integers(0, 100).map(quarters))
def test_the_earliest_slot_is_the_first_time_the_rule_allows(
    limit: Limit, times: list[datetime], lower: datetime
) -> None:
    taken = keeping_the_rule(times, limit)
    slot = earliest_slot(taken, lower, limit)
    assert slot == model_earliest(taken, lower, limit)
    assert slot >= lower
    assert holds([*taken, slot], limit)


@settings(max_examples=200, deadline=None)
@given(limit=LIMITS, times=TIMES, lower=st.integers(0, 100).map(quarters))
def test_starts_a_window_before_the_lower_bound_do_not_matter(
    limit: Limit, times: list[datetime], lower: datetime
) -> None:
    taken = keeping_the_rule(times, limit)
    recent = [t for t in taken if t > lower - limit.step]
    assert earliest_slot(recent, lower, limit) == earliest_slot(taken, lower, limit)


@settings(max_examples=200, deadline=None)
@given(
    limit=LIMITS,
    times=st.lists(st.integers(0, 40).map(quarters), max_size=8),
    lower=st.integers(0, 60).map(quarters),
)
def test_starts_that_break_a_tighter_limit_still_give_the_first_start_that_fits(
    limit: Limit, times: list[datetime], lower: datetime
) -> None:
    # E.g. starts made under an older, looser limit: the new start must not be in a window
    # that already holds N of them.
    slot = earliest_slot(times, lower, limit)
    assert slot == first_on_grid(lambda t: model_fits(times, t, limit), lower)
    assert fits(times, slot, limit)


@settings(max_examples=150, deadline=None)
@given(
    limit=LIMITS,
    times=TIMES,
    lowers=st.lists(st.integers(0, 100).map(quarters), max_size=8),
)
def test_a_replan_keeps_the_order_and_gives_each_job_its_earliest_slot(
    limit: Limit, times: list[datetime], lowers: list[datetime]
) -> None:
    fixed = keeping_the_rule(times, limit)
    slots = replan(fixed, lowers, limit)
    assert len(slots) == len(lowers)
    assert slots == sorted(slots)
    assert all(slot >= lower for slot, lower in zip(slots, lowers, strict=True))
    assert holds([*fixed, *slots], limit)
    for i, (slot, lower) in enumerate(zip(slots, lowers, strict=True)):
        bound = max(lower, slots[i - 1]) if i else lower
        assert slot == model_earliest([*fixed, *slots[:i]], bound, limit)


@settings(max_examples=150, deadline=None)
@given(
    limit=LIMITS,
    times=TIMES,
    lowers=st.lists(st.integers(0, 100).map(quarters), max_size=8),
)
def test_a_replan_without_order_gives_each_job_the_first_free_slot_after_its_bound(
    limit: Limit, times: list[datetime], lowers: list[datetime]
) -> None:
    fixed = keeping_the_rule(times, limit)
    slots = replan(fixed, lowers, limit, keep_order=False)
    assert holds([*fixed, *slots], limit)
    for i, (slot, lower) in enumerate(zip(slots, lowers, strict=True)):
        assert slot == model_earliest([*fixed, *slots[:i]], lower, limit)


@settings(max_examples=150, deadline=None)
@given(
    limit=LIMITS,
    times=TIMES,
    jobs=st.lists(st.tuples(st.integers(0, 100), st.integers(0, 12)), max_size=8),
)
def test_no_other_ordered_plan_starts_any_job_earlier(
    limit: Limit, times: list[datetime], jobs: list[tuple[int, int]]
) -> None:
    # Another plan that keeps the order and the rule: each job some quarters later than it
    # could go. The greedy plan is at least as early for every job, not only the first.
    fixed = keeping_the_rule(times, limit)
    lowers = [quarters(lower) for lower, _ in jobs]
    other: list[datetime] = []
    for lower, (_, delay) in zip(lowers, jobs, strict=True):
        bound = max(lower, other[-1]) if other else lower
        other.append(earliest_slot([*fixed, *other], bound + delay * GRID, limit))
    assert holds([*fixed, *other], limit)
    slots = replan(fixed, lowers, limit)
    assert all(mine <= theirs for mine, theirs in zip(slots, other, strict=True))


# Cases a user would recognise.


def test_thirty_jobs_at_once_start_in_triples_a_window_apart() -> None:
    limit = Limit(window=1.0, per_window=3)
    slots = replan([], [NOW] * 30, limit)
    assert offsets(slots) == [float(i // 3) for i in range(30)]
    # Submitted one by one, as enqueue would, they get the same slots.
    one_by_one: list[datetime] = []
    for _ in range(30):
        one_by_one.append(earliest_slot(one_by_one, NOW, limit))
    assert one_by_one == slots


def test_one_per_window_spaces_the_starts_a_window_apart() -> None:
    assert offsets(replan([], [NOW] * 5, Limit(window=60))) == [0, 60, 120, 180, 240]


def test_a_job_scheduled_an_hour_ahead_does_not_hold_up_the_jobs_submitted_after_it() -> None:
    limit = Limit(window=7 * 60)
    taken = [sec(3600)]
    for _ in range(10):
        taken.append(earliest_slot(taken, NOW, limit))
    # Eight fit before it; the ninth, at 56 min, would start 4 min before it, so it goes a
    # window after it, and the tenth after that.
    assert [t / 60 for t in offsets(taken[1:])] == [0, 7, 14, 21, 28, 35, 42, 49, 67, 74]
    assert holds(taken, limit)
    # A re-plan without order does the same; one that keeps the order puts them all after it.
    lowers = [sec(3600), *[NOW] * 10]
    assert replan([], lowers, limit, keep_order=False) == taken
    assert [t / 60 for t in offsets(replan([], lowers, limit))] == [60 + 7 * i for i in range(11)]


def test_raising_the_limit_from_one_to_five_replans_a_backlog_into_bursts_of_five() -> None:
    backlog = replan([], [NOW] * 20, Limit(window=60, per_window=1))
    assert offsets(backlog)[-1] == 19 * 60
    slots = replan([], [NOW] * len(backlog), Limit(window=60, per_window=5))
    assert offsets(slots) == [60.0 * (i // 5) for i in range(20)]


def test_lowering_the_limit_waits_out_the_burst_the_old_limit_allowed() -> None:
    # Five starts 10 s ago were fine at 5 per minute; at 1 per minute the next waits for the
    # window of the last of them (a start in a window already holding one is refused).
    burst = [sec(-10)] * 5
    assert not holds(burst, Limit(window=60))
    assert earliest_slot(burst, NOW, Limit(window=60)) == sec(50)
    assert earliest_slot(burst, NOW, Limit(window=60, per_window=6)) == NOW


def test_a_gap_of_exactly_two_windows_fits_a_start_in_the_middle() -> None:
    limit = Limit(window=10)
    assert earliest_slot([sec(0), sec(20)], sec(5), limit) == sec(10)
    assert earliest_slot([sec(0), sec(19)], sec(5), limit) == sec(29)
    # N at one instant; the next exactly a window after them (the window is half-open).
    assert earliest_slot([NOW, NOW], NOW, Limit(window=10, per_window=2)) == sec(10)
    # The arithmetic is exact: a microsecond short of the window is too early.
    almost = sec(10) - timedelta(microseconds=1)
    assert not holds([NOW, almost], limit)
    assert earliest_slot([NOW], almost, limit) == sec(10)


def test_count_in_window_counts_the_window_that_ends_at_the_given_time() -> None:
    starts = [sec(-60), sec(-59.5), sec(-1), NOW, sec(1)]
    limit = Limit(window=60, per_window=3)
    # (now - 60 s, now]: the start exactly a window ago has left it; the one after now is out.
    assert count_in_window(starts, NOW, limit) == 3
    assert fits(starts[:3], NOW, limit)


@pytest.mark.parametrize(
    ("window", "per_window"),
    [
        (0, 1),
        (-1, 1),
        (float("nan"), 1),
        (float("inf"), 1),
        (1e-9, 1),
        (1e20, 1),
        (1, 0),
        (1, True),
    ],
)
def test_a_limit_that_means_nothing_is_refused(window: float, per_window: int) -> None:
    with pytest.raises(ValueError, match="window"):
        Limit(window=window, per_window=per_window)


def test_a_slot_past_the_year_9999_is_beyond() -> None:
    """A ten-year window behind a backlog of a thousand: the slots that a datetime cannot hold
    are BEYOND (stored as 'infinity': the jobs wait), not an OverflowError (a 500 of PUT
    /limits, found by schemathesis)."""
    ten_years = Limit(10 * 366 * 24 * 3600.0)
    start = datetime(2026, 12, 5, tzinfo=UTC)
    slots = replan([], [start] * 1000, ten_years)
    assert slots[0] == start
    assert slots[-1] == BEYOND
    finite = [slot for slot in slots if slot != BEYOND]
    assert holds(finite, ten_years)
    assert 790 < len(finite) < 800  # about (9999 - 2026) / 10 of them fit
    assert earliest_slot(slots, start, ten_years) == BEYOND
