"""Claiming ahead of the free handler slots (queue/ahead.py): short handlers get large claims,
PACELINE_CONCURRENCY still bounds the handlers that run at once, and slow handlers get claims
of their free slots only, as before."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg

from paceline.db.queries import QUERIES
from paceline.queue.events import JobEvents
from paceline.queue.jobs import Job, NewJob, enqueue_batch
from paceline.queue.pressure import SubmitPressure
from paceline.queue.worker import Worker
from tests.support import eventually


class Claims(JobEvents):
    """The size of every claim."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def claimed(self, jobs: int, seconds: float) -> None:
        if jobs:
            self.sizes.append(jobs)


class Handler:
    """Works `seconds` per job; counts the handlers running at once and the start order."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.running = 0
        self.most = 0
        self.started: list[int] = []

    async def __call__(self, job: Job) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        self.started.append(job.id)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.running -= 1


async def run_all(
    pool: asyncpg.Pool,
    handler: Handler,
    claims: Claims,
    jobs: int,
    pressure: SubmitPressure | None = None,
) -> list[int]:
    """Submit `jobs` due jobs of distinct objects, run them with concurrency 2; their ids in
    slot order."""
    made = await enqueue_batch(pool, [NewJob(object_id) for object_id in range(1, jobs + 1)])
    ids = [made[position].id for position in range(jobs)]
    worker = Worker(
        pool, {"default": handler}, events=claims, concurrency=2, lease=30, pressure=pressure
    )
    worker.start()
    try:

        async def done() -> bool:
            count = await pool.fetchval("SELECT count(*) FROM jobs WHERE status = 'SUCCESS'")
            return bool(count == jobs)

        await eventually(done, timeout=60)
    finally:
        worker.stop()
        await worker.wait()
    return ids


async def test_short_handlers_get_large_claims_and_still_run_two_at_once(
    pool: asyncpg.Pool,
) -> None:
    handler, claims = Handler(0.0), Claims()
    ids = await run_all(pool, handler, claims, 2_000)
    assert handler.most <= 2, "PACELINE_CONCURRENCY=2 bounds the handlers running at once"
    # Claims ran ahead of the two free slots: far fewer statements than jobs / 2.
    assert max(claims.sizes) > 2
    assert len(claims.sizes) < 2_000 / 4
    if QUERIES.citus:
        # A cluster claims shard by shard: slot order holds per key (I4), which the rate-window
        # tests check there, not across keys.
        assert sorted(handler.started) == sorted(ids)
    else:
        # Jobs claimed ahead start in the order they were claimed: slot order.
        assert handler.started == ids


async def test_slow_handlers_are_claimed_for_their_free_slots_only(pool: asyncpg.Pool) -> None:
    handler, claims = Handler(0.2), Claims()
    await run_all(pool, handler, claims, 8)
    assert handler.most == 2
    # Five starts a second: nothing is claimed ahead, no job waits in memory for a slot.
    assert max(claims.sizes) <= 2


async def until(condition: Callable[[], bool]) -> None:
    async def probe() -> bool:
        return condition()

    await eventually(probe, timeout=5)


async def busy_loop(stop: asyncio.Event) -> None:
    """What a replica's API does under a load of 1000-job batches: holds the event loop for
    milliseconds at a time (parsing, answering), over and over."""
    while not stop.is_set():
        time.sleep(0.008)  # noqa: ASYNC251 - blocking the loop is the point
        await asyncio.sleep(0)


async def test_short_handlers_claim_only_free_slots_while_submits_wait_on_a_busy_loop(
    pool: asyncpg.Pool,
) -> None:
    """Submits first (queue/pressure.py): the loop is behind and a submit is in flight, so the
    worker claims for its free handler slots only; every job still runs."""
    handler, claims, pressure = Handler(0.0), Claims(), SubmitPressure()
    stop = asyncio.Event()
    api = asyncio.create_task(busy_loop(stop))
    try:
        with pressure.submitting():
            await until(lambda: pressure.high)
            await run_all(pool, handler, claims, 200, pressure=pressure)
    finally:
        stop.set()
        await api
        await pressure.close()
    assert max(claims.sizes) <= 2


async def test_submit_pressure_is_high_only_while_submits_wait_on_a_loop_that_is_behind() -> None:
    pressure = SubmitPressure()
    with pressure.submitting():
        await asyncio.sleep(0.1)
        assert not pressure.high, "a loop that keeps up: the worker may claim ahead"
        stop = asyncio.Event()
        api = asyncio.create_task(busy_loop(stop))
        await until(lambda: pressure.high)
        stop.set()
        await api
        await until(lambda: not pressure.high)
    stop = asyncio.Event()
    api = asyncio.create_task(busy_loop(stop))
    await asyncio.sleep(0.1)
    assert not pressure.high, "no submit in flight: the drain keeps its claims"
    stop.set()
    await api
    # With no submit for a while, the sampler stops: an idle replica runs no timer for it.
    await until(lambda: not pressure.sampling)
