"""What happens to jobs, as calls an observer receives (metrics, logs); the queue does not care.

The queue calls these synchronously at each transition; an implementation must be quick and
must not raise. `JobEvents` itself ignores everything.
"""

from __future__ import annotations

from collections.abc import Sequence

from paceline.queue.jobs import Job, Status


class JobEvents:
    """Transitions of jobs in this process. Subclass and override what you need."""

    def enqueued(self, job: Job) -> None:
        """The API accepted `job` (PENDING, with its slot in `run_at`)."""

    def enqueued_batch(self, jobs: Sequence[Job]) -> None:
        """The API accepted `jobs` in one request (a JSON array); by default, each in turn."""
        for job in jobs:
            self.enqueued(job)

    def started(self, job: Job) -> None:
        """A worker of this process claimed `job`; `started_at - run_at` is its lateness."""

    def waited(self, job: Job, seconds: float) -> None:
        """`job`, claimed ahead of a free handler slot, waited `seconds` for one."""

    def finished(self, job: Job, status: Status, duration: float, error: str | None) -> None:
        """An attempt of `job` ended for good: SUCCESS or FAILED (no retry left or wanted)."""

    def retried(self, job: Job, error: str, delay: float) -> None:
        """An attempt of `job` failed and it goes back to PENDING, `delay` seconds from now."""

    def released(self, job: Job) -> None:
        """Shutdown gave `job` back unfinished; another worker will run it."""

    def claimed(self, jobs: int, seconds: float) -> None:
        """A worker's claim statement started `jobs` jobs (maybe 0) and took `seconds`."""


class EventFanout(JobEvents):
    """Passes every event on to several observers."""

    def __init__(self, *observers: JobEvents) -> None:
        self.observers = list(observers)

    def enqueued(self, job: Job) -> None:
        for observer in self.observers:
            observer.enqueued(job)

    def enqueued_batch(self, jobs: Sequence[Job]) -> None:
        for observer in self.observers:
            observer.enqueued_batch(jobs)

    def started(self, job: Job) -> None:
        for observer in self.observers:
            observer.started(job)

    def waited(self, job: Job, seconds: float) -> None:
        for observer in self.observers:
            observer.waited(job, seconds)

    def finished(self, job: Job, status: Status, duration: float, error: str | None) -> None:
        for observer in self.observers:
            observer.finished(job, status, duration, error)

    def retried(self, job: Job, error: str, delay: float) -> None:
        for observer in self.observers:
            observer.retried(job, error, delay)

    def released(self, job: Job) -> None:
        for observer in self.observers:
            observer.released(job)

    def claimed(self, jobs: int, seconds: float) -> None:
        for observer in self.observers:
            observer.claimed(jobs, seconds)
