"""The last hour's chart is drawn on the server: every bar of the hour, empty ones included,
each scaled to the kind's tallest, failures stacked on successes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from paceline.observability.board import BARS, CHART_HEIGHT, CHART_WIDTH, charts

NOW_BAR = datetime(2026, 1, 2, 12, 55, tzinfo=UTC)


def row(kind: str, minutes_ago: int, ok: int, bad: int, cancelled: int = 0) -> dict[str, object]:
    return {
        "kind": kind,
        "bar": NOW_BAR - timedelta(minutes=minutes_ago),
        "succeeded": ok,
        "failed": bad,
        "cancelled": cancelled,
    }


def test_every_bar_of_the_hour_is_drawn_and_scaled_to_the_tallest() -> None:
    drawn = charts(
        [row("default", 0, 6, 2), row("default", 30, 2, 0), row("notify", 55, 0, 1)], NOW_BAR
    )
    assert [chart.kind for chart in drawn] == ["default", "notify"]
    default = drawn[0]
    assert len(default.bars) == BARS
    assert (default.succeeded, default.failed, default.most) == (8, 2, 8)
    last = default.bars[-1]
    assert last.start == NOW_BAR
    assert last.ok_height == CHART_HEIGHT * 6 / 8
    assert last.failed_height == CHART_HEIGHT * 2 / 8
    # Failures sit on top of the successes, and the tallest bar fills the height.
    assert last.failed_y == 0
    assert last.ok_y + last.ok_height == CHART_HEIGHT
    assert default.bars[-7].ok_height == CHART_HEIGHT * 2 / 8
    assert all(bar.ok_height == bar.failed_height == 0 for bar in default.bars[:5])
    # Bars stay inside the drawing, oldest on the left.
    assert default.bars[0].x >= 0
    assert default.bars[-1].x + default.bars[-1].width <= CHART_WIDTH
    assert drawn[1].bars[0].failed_height == CHART_HEIGHT
    assert last.label == "12:55 to 13:00 UTC: 6 succeeded, 2 failed"
