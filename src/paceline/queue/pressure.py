"""Submits first: while submits wait on a saturated event loop, workers claim nothing ahead.

One replica serves the API and runs its worker on one event loop, so on one core. Claiming
ahead of the free handler slots (`queue/ahead.py`) makes the worker's drain bound by that core
instead of by its claims' round trips, which is what it is for when nothing else needs the
core. Under a load of submits that saturates the loop, it took the core from them: 1000-job
batches with the worker on were accepted at 0.7 of the rate with it off, while the worker ran
a job for every eight it cost the API (12 s runs on PG15; a drained job costs a replica about
six times what accepting one does). A submit has a client waiting on it, with a timeout; a
job that is due already waits behind a backlog either way, and the claim still starts it in
slot order. So while submits are in flight *and* the loop runs behind (a timer fires more than
`LAG_LIMIT` late, smoothed), the worker claims only for its free handler slots, as it did
before it claimed ahead. A drain with no submits, and an API the loop keeps up with (half
load), keep claiming ahead: the lateness and drain goals of the README hold with this on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

# How often the loop's lag is sampled while submits come in, and how late a timer may fire
# before the loop counts as behind. One 1000-job batch answer is ~5 ms of Python: a loop busy
# with those is late by several ms on every sample; one keeping up with single submits, by
# tens of microseconds.
INTERVAL = 0.005
LAG_LIMIT = 0.002
# The lag is a moving average over roughly the last 1 / _WEIGHT samples.
_WEIGHT = 0.2
# The sampler stops after this many samples with no submit in flight (and starts again with
# the next one), so an idle replica runs no timer for it.
_IDLE_SAMPLES = 20


class SubmitPressure:
    """Counts the submits in flight; `high` while there are some and the loop runs behind."""

    def __init__(self) -> None:
        self._in_flight = 0
        self._lag = 0.0
        self._sampler: asyncio.Task[None] | None = None

    @property
    def high(self) -> bool:
        """True while the worker should leave the loop to the submits."""
        return self._in_flight > 0 and self._lag > LAG_LIMIT

    @property
    def sampling(self) -> bool:
        """Whether the loop's lag is being sampled (submits came in lately)."""
        return self._sampler is not None

    @contextlib.contextmanager
    def submitting(self) -> Iterator[None]:
        """Around the handling of one submit."""
        self._in_flight += 1
        if self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(
                self._sample(), name="paceline-submit-pressure"
            )
        try:
            yield
        finally:
            self._in_flight -= 1

    async def close(self) -> None:
        """Stop sampling (the app shuts down)."""
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        idle = 0
        try:
            while idle < _IDLE_SAMPLES:
                due = loop.time() + INTERVAL
                await asyncio.sleep(INTERVAL)
                self._lag += _WEIGHT * (max(loop.time() - due, 0.0) - self._lag)
                idle = 0 if self._in_flight else idle + 1
        finally:
            self._lag = 0.0
            if self._sampler is asyncio.current_task():
                self._sampler = None
