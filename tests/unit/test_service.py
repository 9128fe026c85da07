"""The service shape and the retry helper, without a database."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
import pytest

from paceline.queue.service import Backoff, Service, retry_until


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.05, 0.3)
    assert [backoff.next() for _ in range(5)] == [0.05, 0.1, 0.2, 0.3, 0.3]
    backoff.reset()
    assert backoff.next() == 0.05


class Scripted(Service):
    """Steps that do what the test says, one after the other; then it waits to be stopped."""

    name = "scripted"
    failure = "the scripted step failed"

    def __init__(self, script: list[BaseException | None], *, pause: float = 0.0) -> None:
        super().__init__(logger=logging.getLogger("tests.scripted"), retry=Backoff(0.01, 0.04))
        self.script = script
        self.pause = pause
        self.steps: list[float] = []
        self.failures: list[Exception] = []
        self.waited: list[float] = []
        self.done = asyncio.Event()

    async def step(self) -> float:
        self.steps.append(time.monotonic())
        if not self.script:
            self.done.set()
            return 3600.0
        outcome = self.script.pop(0)
        if outcome is not None:
            raise outcome
        return self.pause

    def waiting_out(self, exc: Exception, delay: float) -> None:
        self.waited.append(delay)

    def failed(self, exc: Exception) -> None:
        self.failures.append(exc)


async def test_outages_are_retried_with_backoff_reset_after_a_success() -> None:
    down = ConnectionRefusedError("down")
    service = Scripted([down, down, down, None, down, None])
    task = service.start()
    assert task.get_name() == "scripted"
    await asyncio.wait_for(service.done.wait(), 5)
    assert service.waited == [0.01, 0.02, 0.04, 0.01]
    assert len(service.failures) == 4
    service.stop()
    await asyncio.wait_for(service.wait(), 1)  # the long sleep ends at once
    assert task.done()


async def test_other_errors_are_logged_once_each_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = Scripted([ValueError("bug"), None])
    with caplog.at_level(logging.ERROR, "tests.scripted"):
        service.start()
        await asyncio.wait_for(service.done.wait(), 5)
    assert service.waited == []
    [record] = caplog.records
    assert record.getMessage() == "the scripted step failed"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)
    service.stop()
    await service.wait()


async def test_stop_before_start_runs_no_step() -> None:
    service = Scripted([None])
    service.stop()
    await service.run()
    assert service.steps == []


async def test_cancel_ends_the_step_in_flight() -> None:
    class Stuck(Service):
        async def step(self) -> float:
            await asyncio.Event().wait()
            return 0.0

    stuck = Stuck(logger=logging.getLogger("tests.stuck"), retry=Backoff(1, 1))
    task = stuck.start()
    await asyncio.sleep(0)
    await asyncio.wait_for(stuck.cancel(), 1)
    assert task.cancelled()
    assert stuck.stopping


async def test_wait_raises_what_the_loop_raised() -> None:
    class Strict(Scripted):
        def unexpected(self, exc: Exception) -> None:
            raise exc

    strict = Strict([KeyError("bug")])
    strict.start()
    with pytest.raises(KeyError):
        await asyncio.wait_for(strict.wait(), 1)


async def test_retry_until_retries_transient_errors_then_succeeds() -> None:
    errors: list[BaseException] = [
        ConnectionResetError("gone"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock"),
    ]
    retried: list[Exception] = []

    async def write() -> str:
        if errors:
            raise errors.pop(0)
        return "written"

    deadline = time.monotonic() + 60
    assert await retry_until(lambda: deadline, write, retried.append) == "written"
    assert [type(exc) for exc in retried] == [
        ConnectionResetError,
        asyncpg.exceptions.DeadlockDetectedError,
    ]


@pytest.mark.parametrize(
    ("error", "seconds", "low", "high"),
    [
        # An outage: 50, 100 ms apart, past the deadline by the third or fourth try.
        (ConnectionRefusedError("down"), 0.12, 2, 4),
        # A bug, not an outage: raised at once, however far the deadline.
        (ValueError("a bug, not an outage"), 60.0, 1, 1),
    ],
)
async def test_retry_until_stops_past_the_deadline_or_at_a_bug(
    error: Exception, seconds: float, low: int, high: int
) -> None:
    attempts = 0

    async def write() -> None:
        nonlocal attempts
        attempts += 1
        raise error

    give_up = time.monotonic() + seconds
    with pytest.raises(type(error)):
        await retry_until(lambda: give_up, write, lambda _exc: None)
    assert low <= attempts <= high
