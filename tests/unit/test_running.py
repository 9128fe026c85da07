"""A worker's running jobs: one state each, and the capacity they take."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from paceline.queue.jobs import Job, Status
from paceline.queue.running import JobState, RunningJobs


def job(job_id: int) -> Job:
    now = datetime.now(UTC)
    return Job(
        id=job_id,
        object_id=job_id,
        status=Status.PROCESSING,
        created_at=now,
        run_at=now,
        started_at=now,
        finished_at=None,
        duration=None,
        attempts=1,
        error=None,
    )


async def block() -> None:
    await asyncio.Event().wait()


def blocked() -> asyncio.Task[None]:
    return asyncio.ensure_future(block())


async def test_capacity_counts_handlers_not_outcomes_being_written() -> None:
    running = RunningJobs(concurrency=2, max_unwritten=3)
    tasks = [blocked() for _ in range(2)]
    assert running.free() == 2
    running.add(job(1), tasks[0], 0.0)
    running.add(job(2), tasks[1], 0.0)
    assert running.free() == 0
    running.started(1)
    running.started(2)
    assert running.recording(1)
    entry = running.get(1)
    assert entry is not None
    assert entry.state is JobState.RECORDING
    assert running.free() == 1  # written in the background: the next claim may go out
    running.done(1)
    assert running.free() == 1
    running.done(2)  # ended without recording (stopped, lost, or failed)
    assert running.free() == 2
    assert len(running) == 0
    for task in tasks:
        task.cancel()


async def test_too_many_unwritten_outcomes_stop_the_claims() -> None:
    running = RunningJobs(concurrency=10, max_unwritten=2)
    tasks = [blocked() for _ in range(3)]
    for n, task in enumerate(tasks):
        running.add(job(n), task, 0.0)
        running.started(n)
    running.recording(0)
    assert running.free() == 8
    running.recording(1)
    assert running.free() == 0  # two outcomes wait to be written: no more claims
    for task in tasks:
        task.cancel()


async def test_abandoning_a_job_marks_it_lost_and_stops_its_handler() -> None:
    running = RunningJobs(concurrency=1, max_unwritten=1)
    task = blocked()
    running.add(job(7), task, 0.0)
    [entry] = list(running)
    running.abandon(entry)
    assert entry.state is JobState.LOST
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert running.free() == 0  # until its task has ended
    running.done(7)
    assert running.free() == 1
    assert not running.recording(7)  # gone


async def test_claimed_ahead_jobs_wait_take_capacity_and_can_be_abandoned() -> None:
    running = RunningJobs(concurrency=2, max_unwritten=10)
    tasks = [blocked() for _ in range(4)]
    for n, task in enumerate(tasks):
        running.add(job(n), task, 0.0)
    # Two handler slots and two claimed ahead: nothing more may be claimed with ahead 2.
    assert running.waiting == 4
    assert running.free(ahead=2) == 0
    running.started(0)
    running.started(1)
    assert running.waiting == 2
    waiting = running.get(2)
    assert waiting is not None
    assert waiting.state.leased
    running.abandon(waiting)  # its lease was lost before a handler took it
    assert waiting.state is JobState.LOST
    assert running.waiting == 1
    running.done(2)
    assert running.free(ahead=2) == 1
    assert running.recording(0)
    assert not running.recording(3)  # never started: nothing to record
    running.done(0)
    running.done(3)
    assert running.waiting == 0
    assert running.free(ahead=2) == 3
    for task in tasks:
        task.cancel()
