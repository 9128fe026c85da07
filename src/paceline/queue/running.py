"""The jobs a worker is running: each one's state, and the capacity they take.

A running job is RUNNING while its handler runs, then RECORDING while its outcome is written,
or LOST once its lease is gone (the handler is stopped and nothing is written for that
attempt). The worker owns the `RunningJobs`; the lease keeper reads it and asks it to
abandon a job whose lease was lost. Only this class changes a state or the count of running
handlers, which is what PACELINE_CONCURRENCY bounds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from collections.abc import Iterator

from paceline.queue.jobs import Job


class JobState(enum.Enum):
    """Where a running job is: RUNNING, then RECORDING or LOST."""

    RUNNING = "RUNNING"  # the handler runs
    RECORDING = "RECORDING"  # the handler is done; its outcome is being written
    LOST = "LOST"  # the lease is gone: the handler was stopped, nothing is written


@dataclasses.dataclass(slots=True)
class RunningJob:
    """A job this worker runs, and what the lease keeper needs to know about it."""

    job: Job
    task: asyncio.Task[None]
    lease_deadline: float  # monotonic; past it, with no renewal, the job may be taken back
    state: JobState = JobState.RUNNING


class RunningJobs:
    """The running jobs by id, and how many more may be claimed."""

    def __init__(self, *, concurrency: int, max_unwritten: int) -> None:
        self._concurrency = concurrency
        self._max_unwritten = max_unwritten
        self._jobs: dict[int, RunningJob] = {}
        # Jobs whose handler still runs (not those whose outcome is being written): what
        # PACELINE_CONCURRENCY bounds.
        self._handlers = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[RunningJob]:
        """The entries as they are now (a copy: the caller may await while iterating)."""
        return iter(list(self._jobs.values()))

    def free(self) -> int:
        """How many jobs may be claimed now.

        Capacity is for handlers: a job whose outcome is being written no longer runs, so the
        next claim can go out while that write is in flight, as long as the writes keep up
        (`max_unwritten` outcomes at most wait to be written; past that, nothing).
        """
        if len(self._jobs) - self._handlers >= self._max_unwritten:
            return 0
        return self._concurrency - self._handlers

    def add(self, job: Job, task: asyncio.Task[None], lease_deadline: float) -> None:
        """A claimed job's handler started."""
        self._jobs[job.id] = RunningJob(job, task, lease_deadline)
        self._handlers += 1

    def get(self, job_id: int) -> RunningJob | None:
        """The entry of a job still running, if it is."""
        return self._jobs.get(job_id)

    def recording(self, job_id: int) -> bool:
        """The handler returned: its outcome is written next. False if not running."""
        entry = self._jobs.get(job_id)
        if entry is None:
            return False
        entry.state = JobState.RECORDING
        self._handlers -= 1
        return True

    def abandon(self, entry: RunningJob) -> None:
        """The lease is lost: stop the handler; nothing is written for this attempt."""
        entry.state = JobState.LOST
        entry.task.cancel()

    def done(self, job_id: int) -> None:
        """The job's task ended (recorded, stopped, lost, or failed before recording)."""
        entry = self._jobs.pop(job_id, None)
        if entry is not None and entry.state is not JobState.RECORDING:
            self._handlers -= 1
