"""The jobs a worker holds: each one's state, and the capacity they take.

A claimed job is WAITING until one of the PACELINE_CONCURRENCY handler slots is free (the
worker claims a little ahead of its free slots when handlers are short: `queue/ahead.py`),
RUNNING while its handler runs, then RECORDING while its outcome is written, or LOST once its
lease is gone (the handler is stopped, or never started, and nothing is written for that
attempt). The worker owns the `RunningJobs`; the lease keeper reads it and asks it to abandon
a job whose lease was lost. Only this class changes a state or the counts that bound claims.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from collections.abc import Iterator

from paceline.queue.jobs import Job


class JobState(enum.Enum):
    """Where a held job is: WAITING, RUNNING, then RECORDING or LOST."""

    WAITING = "WAITING"  # claimed; waits for a free handler slot
    RUNNING = "RUNNING"  # the handler runs
    RECORDING = "RECORDING"  # the handler is done; its outcome is being written
    LOST = "LOST"  # the lease is gone: the handler was stopped, nothing is written

    @property
    def leased(self) -> bool:
        """The job is this worker's to start or finish: its lease must be kept, and given up
        (the task stopped) when it is lost."""
        return self in (JobState.WAITING, JobState.RUNNING)


@dataclasses.dataclass(slots=True)
class RunningJob:
    """A job this worker holds, and what the lease keeper needs to know about it."""

    job: Job
    task: asyncio.Task[None]
    lease_deadline: float  # monotonic; past it, with no renewal, the job may be taken back
    state: JobState = JobState.WAITING


class RunningJobs:
    """The held jobs by id, and how many more may be claimed."""

    def __init__(self, *, concurrency: int, max_unwritten: int) -> None:
        self._concurrency = concurrency
        self._max_unwritten = max_unwritten
        self._jobs: dict[int, RunningJob] = {}
        # Jobs whose handler has not returned (waiting or running; not those whose outcome is
        # being written): what a claim's capacity is counted against.
        self._handlers = 0
        self._waiting = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[RunningJob]:
        """The entries as they are now (a copy: the caller may await while iterating)."""
        return iter(list(self._jobs.values()))

    @property
    def waiting(self) -> int:
        """Claimed jobs whose handler has not started yet."""
        return self._waiting

    def free(self, ahead: int = 0) -> int:
        """How many jobs may be claimed now: the free handler slots, plus `ahead` more that
        wait for one.

        Capacity is for handlers: a job whose outcome is being written no longer runs, so the
        next claim can go out while that write is in flight, as long as the writes keep up
        (`max_unwritten` outcomes at most wait to be written; past that, nothing).
        """
        if len(self._jobs) - self._handlers >= self._max_unwritten:
            return 0
        return self._concurrency + ahead - self._handlers

    def add(self, job: Job, task: asyncio.Task[None], lease_deadline: float) -> None:
        """A job was claimed; its task waits for a handler slot."""
        self._jobs[job.id] = RunningJob(job, task, lease_deadline)
        self._handlers += 1
        self._waiting += 1

    def started(self, job_id: int) -> None:
        """The job's handler starts."""
        entry = self._jobs[job_id]
        if entry.state is JobState.WAITING:
            entry.state = JobState.RUNNING
            self._waiting -= 1

    def get(self, job_id: int) -> RunningJob | None:
        """The entry of a job still held, if it is."""
        return self._jobs.get(job_id)

    def recording(self, job_id: int) -> bool:
        """The handler returned: its outcome is written next. False if not running."""
        entry = self._jobs.get(job_id)
        if entry is None or entry.state is not JobState.RUNNING:
            return False
        entry.state = JobState.RECORDING
        self._handlers -= 1
        return True

    def abandon(self, entry: RunningJob) -> None:
        """The lease is lost: stop the handler (or never start it); nothing is written for
        this attempt."""
        if entry.state is JobState.WAITING:
            self._waiting -= 1
        entry.state = JobState.LOST
        entry.task.cancel()

    def done(self, job_id: int) -> None:
        """The job's task ended (recorded, stopped, lost, or failed before recording)."""
        entry = self._jobs.pop(job_id, None)
        if entry is None:
            return
        if entry.state is JobState.WAITING:
            self._waiting -= 1
        if entry.state is not JobState.RECORDING:
            self._handlers -= 1
