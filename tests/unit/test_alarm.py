"""The worker's alarm: fired now, at a deadline, or by a job due sooner than it meant to wake."""

from __future__ import annotations

import asyncio
import math
import time

from paceline.queue.worker import Alarm


async def elapsed(alarm: Alarm, seconds: float, **kwargs: bool) -> float:
    started = time.monotonic()
    await asyncio.wait_for(alarm.wait(seconds, **kwargs), 5)
    return time.monotonic() - started


async def test_it_sleeps_until_the_deadline() -> None:
    alarm = Alarm()
    alarm.reset()
    assert 0.05 <= await elapsed(alarm, 0.06) < 1


async def test_fire_wakes_the_sleeper_at_once() -> None:
    alarm = Alarm()
    alarm.reset()
    asyncio.get_running_loop().call_later(0.02, alarm.fire)
    assert await elapsed(alarm, math.inf) < 1


async def test_a_signal_before_the_sleep_is_not_lost_until_reset() -> None:
    alarm = Alarm()
    alarm.reset()
    alarm.fire_in(10.0)  # busy, not armed: every signal counts
    assert await elapsed(alarm, math.inf) < 0.5
    alarm.reset()
    assert 0.03 <= await elapsed(alarm, 0.04) < 1


async def test_fire_in_wakes_only_if_sooner_than_planned() -> None:
    alarm = Alarm()
    alarm.reset()
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, alarm.fire_in, 30.0)  # later than the planned wake-up: ignored
    assert 0.09 <= await elapsed(alarm, 0.1) < 1
    alarm.reset()
    loop.call_later(0.01, alarm.fire_in, 0.0)  # sooner: wakes now
    assert await elapsed(alarm, 10.0) < 1


async def test_heed_due_false_ignores_fire_in_but_not_fire() -> None:
    alarm = Alarm()
    alarm.reset()
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, alarm.fire_in, 0.0)
    assert 0.09 <= await elapsed(alarm, 0.1, heed_due=False) < 1
    alarm.reset()
    loop.call_later(0.01, alarm.fire)
    assert await elapsed(alarm, math.inf, heed_due=False) < 1
