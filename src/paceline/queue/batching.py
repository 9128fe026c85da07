"""Writes that share a statement: what is submitted while a write is in flight goes out with
the next one. With no backlog an item is written at once; under load the batch grows by itself,
so the round trip and the commit (a WAL flush) are shared, not paid per item.

Group commit of POST /jobs (grouping.EnqueueGrouper) and the worker's completions
(completions.CompletionWriter) are both this, with their own statement.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Generic, TypeVar

from paceline.queue.service import Backoff, Service

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class BatchWriter(Service, Generic[ItemT, ResultT]):
    """`submit()` an item and wait for its result; `run()` (or `start()`) writes; `stop()`
    ends it once everything queued is written.

    A subclass writes a batch in `_write`, returning one result per item in order, or the
    exception that refused that item alone; what it raises is raised to every submitter of
    that batch (the writer goes on).
    """

    name = "paceline-batch-writer"

    def __init__(self, *, max_batch: int, writers: int = 1) -> None:
        # A failed write is the submitters' to handle, so nothing here is retried.
        super().__init__(logger=log, retry=Backoff(0.0, 0.0))
        self._max_batch = max_batch
        self._writers = writers
        self._queue: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._wakeup = asyncio.Event()

    async def submit(self, item: ItemT) -> ResultT:
        """Queue `item` for the next write; its result, or what the write raised."""
        result: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._queue.append((item, result))
        self._wakeup.set()
        return await result

    def _wake(self) -> None:
        # `stop()`: the writers return once the queue is empty.
        self._wakeup.set()

    async def run(self) -> None:
        """Run the writers (up to `writers` statements in flight) until stopped and empty."""
        await asyncio.gather(*(self._writer() for _ in range(self._writers)))

    async def _writer(self) -> None:
        while True:
            if not self._queue:
                if self.stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._queue[: self._max_batch]
            self._queue = self._queue[self._max_batch :]
            if self._queue:
                self._wakeup.set()  # more for the next free writer
            try:
                results = await self._write([item for item, _ in batch])
            except Exception as exc:
                for _, result in batch:
                    if not result.done():
                        result.set_exception(exc)
                continue
            for (_, result), value in zip(batch, results, strict=True):
                if result.done():
                    continue
                if isinstance(value, Exception):
                    result.set_exception(value)
                else:
                    result.set_result(value)

    async def _write(self, items: list[ItemT]) -> Sequence[ResultT | Exception]:
        raise NotImplementedError
