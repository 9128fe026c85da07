"""The retry policy by itself: today's numbers, pinned."""

from __future__ import annotations

import pytest

from paceline.queue.errors import PermanentFailure, RetryLater
from paceline.queue.retry import FAIL, Action, Decision, RetryPolicy


def fixed(factor: float) -> RetryPolicy:
    """Three attempts, 2 s first backoff, the jitter factor always `factor`."""
    return RetryPolicy(max_attempts=3, backoff=2.0, uniform=lambda _low, _high: factor)


def test_the_first_retry_waits_the_backoff_then_it_doubles() -> None:
    policy = RetryPolicy(max_attempts=10, backoff=2.0, uniform=lambda _low, _high: 1.0)
    delays = [policy.decide(attempt, ValueError("boom")).delay for attempt in range(1, 6)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert policy.decide(1, ValueError()).action is Action.RETRY


def test_jitter_is_plus_or_minus_half() -> None:
    asked: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        asked.append((low, high))
        return low

    policy = RetryPolicy(max_attempts=3, backoff=2.0, uniform=uniform)
    assert policy.decide(2, ValueError()) == Decision(Action.RETRY, 2.0)  # 4 s x 0.5
    assert asked == [(0.5, 1.5)]
    assert fixed(1.5).decide(2, ValueError()) == Decision(Action.RETRY, 6.0)


def test_the_default_jitter_stays_inside_its_bounds() -> None:
    policy = RetryPolicy(max_attempts=100, backoff=1.0)
    for _ in range(200):
        assert 0.5 <= policy.decide(1, ValueError()).delay <= 1.5
        assert 1.0 <= policy.decide(2, ValueError()).delay <= 3.0


def test_backoff_is_capped_at_an_hour() -> None:
    policy = RetryPolicy(max_attempts=100, backoff=2.0, uniform=lambda _low, _high: 1.5)
    assert policy.decide(30, ValueError()).delay == 3600.0
    assert policy.max_backoff == 3600.0


def test_retry_later_is_honoured_as_asked() -> None:
    assert fixed(1.0).decide(1, RetryLater(0.6, "429")) == Decision(Action.RETRY, 0.6)
    assert fixed(1.0).decide(2, RetryLater(7200.0)) == Decision(Action.RETRY, 7200.0)
    assert fixed(1.0).decide(1, RetryLater(-3.0)) == Decision(Action.RETRY, 0.0)


def test_permanent_failure_fails_at_once() -> None:
    assert fixed(1.0).decide(1, PermanentFailure("400")) is FAIL


@pytest.mark.parametrize("error", [ValueError("boom"), RetryLater(1.0), TimeoutError()])
def test_the_last_attempt_fails_whatever_the_error(error: BaseException) -> None:
    assert fixed(1.0).decide(3, error) is FAIL
    assert fixed(1.0).decide(4, error) is FAIL
    assert fixed(1.0).decide(2, error).action is Action.RETRY


def test_one_attempt_means_no_retry() -> None:
    assert RetryPolicy(max_attempts=1, backoff=2.0).decide(1, ValueError()) is FAIL
