"""The shape of every background loop of a replica, and the one way to retry a write.

A `Service` runs in one task: `start()` creates it, `stop()` sets one stop event (and wakes
what the loop sleeps on), `wait()` awaits the task; `cancel()` ends it at once instead, in the
middle of a step. Its `run()` calls `step()` until stopped, sleeping the seconds `step()`
returns; a step that raises is retried after a `Backoff` (doubling up to a cap, back to the
start after a step that succeeds). An error that means the database is unavailable is
expected and waited out; any other is logged with its traceback, once per failure (as River's
`startstop` and pgqueuer's task manager do, in their languages).

`retry_until` retries a write on transient database errors until a deadline: the worker's
"until the lease has surely run out".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from paceline.db.pool import is_transient, is_unavailable

T = TypeVar("T")


class Backoff:
    """Delays that start at `first` and double up to `cap`; `reset()` starts over."""

    __slots__ = ("cap", "current", "first")

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        self.current = first

    def next(self) -> float:
        """The delay to wait now; the following one is twice as long (up to the cap)."""
        delay = self.current
        self.current = min(delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        """After a success: the next failure waits `first` again."""
        self.current = self.first


class Service:
    """A background loop: `start()`, `stop()` then `wait()` (or `cancel()`).

    Subclasses implement `step()` (one round; returns the seconds to sleep before the next),
    or override `run()` for a loop of another shape (then they still start and stop alike).
    """

    name = "paceline-service"
    # Logged with the traceback when a step fails for an unexpected reason.
    failure = "a background task failed"

    def __init__(self, *, logger: logging.Logger, retry: Backoff) -> None:
        self._log = logger
        self._backoff = retry
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def stopping(self) -> bool:
        """True once `stop()` was called."""
        return self._stop.is_set()

    def start(self) -> asyncio.Task[None]:
        """Run the loop in a task of its own (named after the service)."""
        self._task = asyncio.create_task(self.run(), name=self.name)
        return self._task

    def stop(self) -> None:
        """Ask the loop to return (after the step in flight); `wait()` for it."""
        self._stop.set()
        self._wake()

    async def wait(self) -> None:
        """Until the task started by `start()` has returned; raises what it raised."""
        if self._task is not None:
            await self._task

    async def cancel(self) -> None:
        """Stop at once, cancelling the step in flight, and wait for that."""
        self.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        """Call `step()` until stopped; failures are retried with backoff."""
        while not self.stopping:
            try:
                pause = await self.step()
            except Exception as exc:
                pause = self._backoff.next()
                if self.expected(exc):
                    self.waiting_out(exc, pause)
                else:
                    self.unexpected(exc)
                self.failed(exc)
            else:
                self._backoff.reset()
            await self.sleep(pause)

    async def step(self) -> float:
        """One round of work; the seconds until the next."""
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        """Sleep up to `seconds`, or until `stop()`."""
        if seconds <= 0 or self.stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def expected(self, exc: Exception) -> bool:
        """Whether `exc` is an outage to wait out rather than a bug to report."""
        return is_unavailable(exc)

    def waiting_out(self, exc: Exception, delay: float) -> None:
        """Called for an expected failure before sleeping `delay`; quiet by default."""

    def unexpected(self, exc: Exception) -> None:
        """Called for any other failure: logged with its traceback (a subclass may raise)."""
        self._log.error(self.failure, exc_info=exc)

    def failed(self, exc: Exception) -> None:
        """Called after every failure, expected or not."""

    def _wake(self) -> None:
        """Wake whatever `run()` waits on besides the stop event (for `stop()`)."""


async def retry_until(
    give_up_at: Callable[[], float],
    write: Callable[[], Awaitable[T]],
    on_retry: Callable[[Exception], None],
) -> T:
    """`write()` until it succeeds; on a transient database error (an outage, a deadlock) call
    `on_retry` and try again with backoff, until the monotonic clock passes `give_up_at()`
    (then, or on any other error, raise it)."""
    backoff: Backoff | None = None
    while True:
        try:
            return await write()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() > give_up_at():
                raise
            on_retry(exc)
            if backoff is None:
                backoff = Backoff(0.05, 2.0)
            await asyncio.sleep(backoff.next())
