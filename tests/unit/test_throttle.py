"""The sign-in throttle: a burst per address, then a steady rate; a cap for everyone; every
attempt counts; a refused attempt is told how long to wait and takes nothing."""

from __future__ import annotations

import pytest

from paceline.web.throttle import SignInThrottle, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttle(clock: Clock, **kw: int) -> SignInThrottle:
    return SignInThrottle(
        per_address=TokenBucket(burst=5, rate=5 / 60),
        overall=TokenBucket(burst=kw.get("overall", 30), rate=1.0),
        max_addresses=kw.get("max_addresses", 100),
        clock=clock,
    )


def test_five_at_once_then_one_every_twelve_seconds() -> None:
    clock = Clock()
    guard = throttle(clock)
    assert [guard.attempt("10.0.0.1") for _ in range(5)] == [0.0] * 5
    assert guard.attempt("10.0.0.1") == pytest.approx(12.0)
    clock.now += 11.9
    assert guard.attempt("10.0.0.1") == pytest.approx(0.1)
    clock.now += 0.2  # 0.1 s past the next attempt: it goes ahead, and the one after it
    assert guard.attempt("10.0.0.1") == 0.0  # the next waits 12 s less those 0.1 s
    assert guard.attempt("10.0.0.1") == pytest.approx(11.9)
    # Another address has its own burst.
    assert guard.attempt("10.0.0.2") == 0.0


def test_refused_attempts_take_nothing_and_waiting_refills_to_the_burst_only() -> None:
    clock = Clock()
    guard = throttle(clock)
    for _ in range(5):
        guard.attempt("a")
    for _ in range(100):  # hammering while refused does not push the wait further out
        assert guard.attempt("a") == pytest.approx(12.0)
    clock.now += 3600
    assert [guard.attempt("a") for _ in range(6)][-2:] == [0.0, pytest.approx(12.0)]


def test_everyone_together_is_capped() -> None:
    clock = Clock()
    guard = throttle(clock, overall=8)
    allowed = [guard.attempt(f"10.0.0.{n}") == 0.0 for n in range(20)]
    assert allowed == [True] * 8 + [False] * 12
    clock.now += 1.0
    assert guard.attempt("10.0.1.1") == 0.0
    assert guard.attempt("10.0.1.2") == pytest.approx(1.0)


def test_the_addresses_remembered_are_bounded() -> None:
    clock = Clock()
    guard = throttle(clock, overall=10_000, max_addresses=3)
    for _ in range(5):
        guard.attempt("a")
    assert guard.attempt("a") > 0
    for other in ("b", "c", "d"):  # "a" is the least recently seen and is forgotten
        guard.attempt(other)
    assert guard.attempt("a") == 0.0
