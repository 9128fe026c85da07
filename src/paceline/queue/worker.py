"""The worker: claims due jobs and runs them, up to PACELINE_CONCURRENCY at once.

One claim loop per process claims as many jobs as it has free slots, in one statement
(`claim_due_jobs`), and runs each in its own task. When nothing more is claimable it asks the
database how long until something will be, and sleeps on an alarm that fires at that moment,
when a NOTIFY says a job is due sooner, or when a running job finishes and frees a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

import asyncpg

from paceline.db.pool import is_unavailable
from paceline.db.queries import QUERIES
from paceline.queue.events import JobEvents
from paceline.queue.handlers import Handler
from paceline.queue.jobs import Job, Status

log = logging.getLogger(__name__)

# Woken a hair before a slot (timers and clocks are not exact), the claim would find nothing;
# sleeping this much past it costs less than a wasted round trip.
_ALARM_SLACK = 0.0002
# Something is due but was not claimable (another replica holds it locked right now): look
# again after this, doubling while it persists, rather than spinning.
_RECHECK = 0.002


class Alarm:
    """An event that also fires at a set moment: `wait()` returns on `fire()` or at the deadline."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._deadline = math.inf
        # While the claim loop is busy, every signal counts: it has not decided when to sleep.
        self._armed = False

    def fire(self) -> None:
        """Wake the sleeper now."""
        self._event.set()

    def fire_in(self, seconds: float) -> None:
        """Wake the sleeper if `seconds` from now is earlier than it meant to wake."""
        when = time.monotonic() + seconds
        if not self._armed or when < self._deadline:
            self._event.set()

    def reset(self) -> None:
        """Forget past signals; call before looking for work, so none arriving after is lost."""
        self._event.clear()
        self._armed = False

    async def wait(self, seconds: float, *, heed_due: bool = True) -> None:
        """Sleep up to `seconds` (inf: until fired); `heed_due=False` ignores `fire_in`."""
        self._deadline = time.monotonic() + seconds if heed_due else -math.inf
        self._armed = True
        try:
            if math.isinf(seconds):
                await self._event.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._event.wait(), seconds)
        finally:
            self._armed = False


class Worker:
    """Runs jobs from the shared queue; start with `run()`, end with `stop()`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        handler: Handler,
        *,
        events: JobEvents | None = None,
        concurrency: int,
        rate_window: float,
        idle_poll: float = 5.0,
        shutdown_grace: float = 30.0,
    ) -> None:
        self._pool = pool
        self._handler = handler
        self._events = events if events is not None else JobEvents()
        self._concurrency = concurrency
        self._window = rate_window
        self._idle_poll = idle_poll
        self._grace = shutdown_grace
        self._running: dict[int, asyncio.Task[None]] = {}
        self._stopping = False
        self.alarm = Alarm()

    @property
    def running(self) -> int:
        """How many jobs this worker is running now."""
        return len(self._running)

    def stop(self) -> None:
        """Stop claiming; `run()` then waits for running jobs (up to the grace) and returns."""
        self._stopping = True
        self.alarm.fire()

    async def run(self) -> None:
        """Claim and run jobs until `stop()`; then drain or release what is running."""
        backoff = 0.05
        recheck = _RECHECK
        try:
            while not self._stopping:
                self.alarm.reset()
                free = self._concurrency - len(self._running)
                if free <= 0:
                    # Full: only a finishing job (or stop) can change anything.
                    await self.alarm.wait(math.inf, heed_due=False)
                    continue
                try:
                    claimed = await self._claim(free)
                    sleep = 0.0 if len(claimed) == free else await self._seconds_until_due()
                except Exception as exc:
                    if not is_unavailable(exc):
                        log.exception("claiming jobs failed")
                    else:
                        log.warning("database unavailable (%s); retrying in %.2fs", exc, backoff)
                    await self.alarm.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.05
                for job in claimed:
                    self._start(job)
                if claimed or sleep > 0:
                    recheck = _RECHECK
                else:
                    sleep, recheck = recheck, min(recheck * 2, self._idle_poll)
                if sleep > 0:
                    await self.alarm.wait(sleep)
        finally:
            await self._drain()

    async def _claim(self, limit: int) -> list[Job]:
        records = await self._pool.fetch(QUERIES["claim_due_jobs"], limit, self._window)
        return [Job.from_record(record) for record in records]

    async def _seconds_until_due(self) -> float:
        # The database clock decides; read it with the answer and credit half the round
        # trip, so the alarm is not late by the time the answer took to arrive.
        sent = time.monotonic()
        row = await self._pool.fetchrow(QUERIES["seconds_until_next_due"], self._window)
        half_trip = (time.monotonic() - sent) / 2
        assert row is not None
        if row["next_start"] is None:
            return self._idle_poll
        seconds: float = row["next_start"] - row["now"] - half_trip
        return min(seconds + _ALARM_SLACK, self._idle_poll)

    def _start(self, job: Job) -> None:
        task = asyncio.create_task(self._execute(job), name=f"paceline-job-{job.id}")
        self._running[job.id] = task

        def done(finished: asyncio.Task[None]) -> None:
            self._running.pop(job.id, None)
            self.alarm.fire()
            if not finished.cancelled() and (exc := finished.exception()) is not None:
                log.error("job %d: recording its outcome failed", job.id, exc_info=exc)

        task.add_done_callback(done)

    async def _execute(self, job: Job) -> None:
        log.info("job %d (object %d) started, attempt %d", job.id, job.object_id, job.attempts)
        self._events.started(job)
        started = time.monotonic()
        error: str | None = None
        try:
            await self._handler(job)
        except asyncio.CancelledError:
            # Shutdown ran out of grace: give the job back so another replica can run it.
            await asyncio.shield(self._release(job))
            raise
        except Exception as exc:
            status, error = Status.FAILED, f"{type(exc).__name__}: {exc}"
        else:
            status = Status.SUCCESS
        duration = time.monotonic() - started
        await self._finish(job, status, duration, error)

    async def _finish(self, job: Job, status: Status, duration: float, error: str | None) -> None:
        backoff = 0.05
        updated: int | None
        while True:
            try:
                updated = await self._pool.fetchval(
                    QUERIES["finish_job"], job.id, job.attempts, status.value, duration, error
                )
                break
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                log.warning("cannot record job %d as %s yet (%s)", job.id, status, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        if updated is not None:
            self._events.finished(job, status, duration, error)
        if updated is None:
            log.warning(
                "job %d attempt %d was taken back; its result is dropped", job.id, job.attempts
            )
        elif status is Status.FAILED:
            log.warning(
                "job %d (object %d) failed after %.3fs: %s", job.id, job.object_id, duration, error
            )
        else:
            log.info("job %d (object %d) succeeded in %.3fs", job.id, job.object_id, duration)

    async def _release(self, job: Job) -> None:
        try:
            await self._pool.fetchval(QUERIES["release_job"], job.id, job.attempts)
            log.info("job %d (object %d) released at shutdown", job.id, job.object_id)
            self._events.released(job)
        except Exception:
            log.exception("could not release job %d at shutdown", job.id)

    async def _drain(self) -> None:
        if not self._running:
            return
        tasks = list(self._running.values())
        log.info("waiting up to %.0fs for %d running job(s)", self._grace, len(tasks))
        _done, pending = await asyncio.wait(tasks, timeout=self._grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
