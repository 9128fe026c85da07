"""BatchWriter: what is submitted while a write is in flight goes out with the next one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from paceline.queue.batching import BatchWriter


class Doubler(BatchWriter[int, int]):
    """Writes by doubling; each write waits until the test lets it finish."""

    def __init__(self, *, max_batch: int = 100, writers: int = 1) -> None:
        super().__init__(max_batch=max_batch, writers=writers)
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_with: Exception | None = None

    async def _write(self, items: list[int]) -> Sequence[int | Exception]:
        self.batches.append(list(items))
        await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        # A negative item is refused alone, as the group commit refuses one request.
        return [ValueError(f"{item} refused") if item < 0 else item * 2 for item in items]


async def test_with_no_backlog_each_item_is_written_at_once() -> None:
    writer = Doubler()
    writer.start()
    assert await writer.submit(1) == 2
    assert await writer.submit(2) == 4
    assert writer.batches == [[1], [2]]
    writer.stop()
    await writer.wait()


async def test_items_submitted_during_a_write_share_the_next_one() -> None:
    writer = Doubler()
    writer.gate.clear()
    writer.start()
    first = asyncio.ensure_future(writer.submit(1))
    await asyncio.sleep(0.01)  # the first write is in flight
    rest = [asyncio.ensure_future(writer.submit(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0.01)
    writer.gate.set()
    assert await first == 2
    assert await asyncio.gather(*rest) == [4, 6, 8]
    assert writer.batches == [[1], [2, 3, 4]]
    writer.stop()
    await writer.wait()


async def test_batches_are_at_most_max_batch_and_writers_share_the_backlog() -> None:
    writer = Doubler(max_batch=2, writers=2)
    waiting = [asyncio.ensure_future(writer.submit(n)) for n in range(5)]
    await asyncio.sleep(0)
    writer.start()
    assert await asyncio.gather(*waiting) == [0, 2, 4, 6, 8]
    assert sorted(map(len, writer.batches)) == [1, 2, 2]
    assert sorted(n for batch in writer.batches for n in batch) == list(range(5))
    writer.stop()
    await writer.wait()


async def test_a_failed_write_fails_its_submitters_and_the_writer_goes_on() -> None:
    writer = Doubler()
    writer.start()
    writer.fail_with = ValueError("no")
    with pytest.raises(ValueError, match="no"):
        await writer.submit(1)
    writer.fail_with = None
    assert await writer.submit(2) == 4
    writer.stop()
    await writer.wait()


async def test_stop_returns_once_everything_queued_is_written() -> None:
    writer = Doubler()
    writer.gate.clear()
    writer.start()
    waiting = [asyncio.ensure_future(writer.submit(n)) for n in range(3)]
    await asyncio.sleep(0.01)
    writer.stop()
    await asyncio.sleep(0.01)
    assert not any(future.done() for future in waiting)
    writer.gate.set()
    await asyncio.wait_for(writer.wait(), 1)
    assert [future.result() for future in waiting] == [0, 2, 4]


async def test_an_item_refused_alone_fails_only_its_own_submitter() -> None:
    writer = Doubler()
    writer.gate.clear()
    writer.start()
    waiting = [asyncio.ensure_future(writer.submit(n)) for n in (1, -2, 3)]
    await asyncio.sleep(0.01)
    writer.gate.set()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert outcomes[0] == 2
    assert outcomes[2] == 6
    assert isinstance(outcomes[1], ValueError)
    assert str(outcomes[1]) == "-2 refused"
    writer.stop()
    await writer.wait()
