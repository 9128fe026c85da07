"""Slot arithmetic without a database: why a waiting job waits, and the times the API shows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from paceline.observability.timeline import KeyActivity, explain_waits
from paceline.queue.jobs import INT64_MAX, INT64_MIN, isoformat, unix_seconds
from paceline.queue.scheduling import KeyLimit
from paceline.web.validation import json_integer

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)
W = 300.0
ONE_PER_WINDOW = KeyLimit(window=W)


def pending(job_id: int, slot: datetime, not_before: datetime | None = None) -> dict[str, object]:
    return {"id": job_id, "run_at": slot, "not_before": not_before}


def key(
    last_start: datetime | None,
    *,
    limit: KeyLimit = ONE_PER_WINDOW,
    starts: list[datetime] | None = None,
    running: list[int] | None = None,
) -> KeyActivity:
    """A key whose recent starts are `starts` (newest first), by default its last start."""
    recent = [last_start] if starts is None and last_start is not None else starts or []
    return KeyActivity(NOW, limit, last_start, recent, running or [])


def test_the_head_waits_for_its_slot_and_the_rest_queue_behind_it() -> None:
    slot = NOW + timedelta(seconds=60)
    waits = explain_waits(
        [pending(1, slot), pending(2, slot + timedelta(seconds=W))],
        key(slot - timedelta(seconds=W)),
    )
    assert [wait.kind for wait in waits] == ["window", "queue"]
    assert waits[0].starts_at == slot
    assert (waits[1].after_job, waits[1].after_slot) == (1, slot)


def test_a_late_last_start_holds_the_head_past_its_slot() -> None:
    # The previous run started 10 s after its own slot: the head waits a window after that
    # start, later than its slot (I1 on actual starts, not only on slots).
    slot = NOW + timedelta(seconds=30)
    last_start = slot - timedelta(seconds=W) + timedelta(seconds=10)
    [wait] = explain_waits([pending(1, slot)], key(last_start))
    assert wait.kind == "window"
    assert wait.starts_at == last_start + timedelta(seconds=W)


def test_a_head_past_its_slot_and_window_waits_only_for_a_worker() -> None:
    slot = NOW - timedelta(seconds=1)
    [wait] = explain_waits([pending(1, slot)], key(None))
    assert (wait.kind, wait.starts_at) == ("due", slot)


def test_n_starts_per_window_hold_the_head_until_the_nth_newest_is_a_window_old() -> None:
    starts = [NOW - timedelta(seconds=ago) for ago in (5, 20, 50)]
    limit = KeyLimit(window=60, per_window=3)
    [wait] = explain_waits(
        [pending(1, NOW - timedelta(seconds=1))], key(None, limit=limit, starts=starts)
    )
    assert (wait.kind, wait.starts_at) == ("window", NOW + timedelta(seconds=10))
    # Two of three starts used: the head is due.
    [due] = explain_waits([pending(1, NOW)], key(None, limit=limit, starts=starts[:2]))
    assert due.kind == "due"


def test_a_due_head_of_a_key_running_its_m_jobs_waits_for_the_oldest_to_finish() -> None:
    busy = key(None, limit=KeyLimit(window=W, max_running=2), running=[7, 8])
    [wait] = explain_waits([pending(9, NOW)], busy)
    assert (wait.kind, wait.after_job) == ("running", 7)
    # One of two running: a free place.
    [due] = explain_waits(
        [pending(9, NOW)], key(None, limit=KeyLimit(window=W, max_running=2), running=[7])
    )
    assert due.kind == "due"


def test_a_paused_key_waits_for_the_resume_and_a_scheduled_job_for_its_time() -> None:
    later = NOW + timedelta(seconds=900)
    paused = key(None, limit=KeyLimit(window=W, paused=True))
    assert [w.kind for w in explain_waits([pending(1, datetime.max)], paused)] == ["paused"]
    waits = explain_waits(
        [pending(1, NOW + timedelta(seconds=5)), pending(2, later, later)], key(None)
    )
    assert [w.kind for w in waits] == ["window", "not_before"]


def test_timestamp_is_floored_whole_seconds_even_in_the_last_microsecond() -> None:
    # A float timestamp would round 12:00:00.999999 up into the next second.
    assert unix_seconds(NOW.replace(microsecond=999_999)) == int(NOW.timestamp())
    assert unix_seconds(datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC)) == -1
    assert isoformat(NOW.replace(microsecond=5)) == "2026-12-04T12:00:00.000005Z"


def test_isoformat_writes_each_instant_in_utc_whatever_it_wrote_before() -> None:
    # isoformat remembers the last instant it wrote (a batch's jobs share one): an instant
    # in another zone, and one after another, still get their own UTC text.
    paris = timezone(timedelta(hours=1))
    moments = [NOW, NOW.astimezone(paris), NOW + timedelta(microseconds=1), NOW, NOW]
    assert [isoformat(moment) for moment in moments] == [
        "2026-12-04T12:00:00Z",
        "2026-12-04T12:00:00Z",
        "2026-12-04T12:00:00.000001Z",
        "2026-12-04T12:00:00Z",
        "2026-12-04T12:00:00Z",
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (7, 7),
        (Decimal("768.0"), 768),
        (Decimal("7.68e2"), 768),
        (Decimal("0e999999999"), 0),
        (Decimal("9007199254740993.0"), 9007199254740993),
        (Decimal("768.5"), None),
        (Decimal("1e-999999999"), None),
        (True, None),
        ("7", None),
        (None, None),
    ],
)
def test_json_integers_are_exact(value: object, expected: int | None) -> None:
    assert json_integer(value) == expected


def test_json_integers_far_outside_int64_are_out_of_range_without_being_built() -> None:
    huge = json_integer(Decimal("1e999999999"))
    tiny = json_integer(Decimal("-1e999999999"))
    assert huge is not None
    assert huge > INT64_MAX
    assert tiny is not None
    assert tiny < INT64_MIN
