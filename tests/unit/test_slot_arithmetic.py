"""Slot arithmetic without a database: why a waiting job waits, and the times the API shows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from paceline.observability.timeline import explain_waits
from paceline.queue.jobs import INT64_MAX, INT64_MIN, isoformat, unix_seconds
from paceline.web.validation import json_integer

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)
W = 300.0


def pending(job_id: int, slot: datetime) -> dict[str, object]:
    return {"id": job_id, "run_at": slot}


def test_the_head_waits_for_its_slot_and_the_rest_queue_behind_it() -> None:
    slot = NOW + timedelta(seconds=60)
    waits = explain_waits(
        [pending(1, slot), pending(2, slot + timedelta(seconds=W))],
        now=NOW,
        last_start=slot - timedelta(seconds=W),
        window=W,
    )
    assert [wait.kind for wait in waits] == ["window", "queue"]
    assert waits[0].starts_at == slot
    assert (waits[1].after_job, waits[1].after_slot) == (1, slot)


def test_a_late_last_start_holds_the_head_past_its_slot() -> None:
    # The previous run started 10 s after its own slot: the head waits a window after that
    # start, later than its slot (I1 on actual starts, not only on slots).
    slot = NOW + timedelta(seconds=30)
    last_start = slot - timedelta(seconds=W) + timedelta(seconds=10)
    [wait] = explain_waits([pending(1, slot)], now=NOW, last_start=last_start, window=W)
    assert wait.kind == "window"
    assert wait.starts_at == last_start + timedelta(seconds=W)


def test_a_head_past_its_slot_and_window_waits_only_for_a_worker() -> None:
    slot = NOW - timedelta(seconds=1)
    [wait] = explain_waits([pending(1, slot)], now=NOW, last_start=None, window=W)
    assert (wait.kind, wait.starts_at) == ("due", slot)


def test_timestamp_is_floored_whole_seconds_even_in_the_last_microsecond() -> None:
    # A float timestamp would round 12:00:00.999999 up into the next second.
    assert unix_seconds(NOW.replace(microsecond=999_999)) == int(NOW.timestamp())
    assert unix_seconds(datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC)) == -1
    assert isoformat(NOW.replace(microsecond=5)) == "2026-12-04T12:00:00.000005Z"


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
