"""The worker: claims due jobs and runs them, up to PACELINE_CONCURRENCY at once.

One claim loop per process claims, in one statement (`claim_due_jobs`), as many jobs as it has
free handler slots plus the few that short handlers will have started within milliseconds
(`ahead.ClaimAhead`), and runs each in its own task, which waits for a handler slot. When
nothing more is claimable it asks the database when the next job may start, and sleeps on an
alarm that fires at that moment, when a NOTIFY says a job is due sooner, or when a running job
finishes and frees a slot.

Each claim is a lease the worker renews while the handler runs. Every write about a running
job is fenced by its attempt number, so a worker that lost its lease (it was cut off, the job
was taken back) cannot overwrite what another attempt did; it stops the handler instead
(`leases.LeaseKeeper`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg

from paceline.db import jobs as store
from paceline.db.jobs import MAX_IDS_PER_STATEMENT
from paceline.db.pool import is_unavailable
from paceline.queue.ahead import ClaimAhead
from paceline.queue.completions import CompletionWriter
from paceline.queue.events import JobEvents
from paceline.queue.handlers import Handler
from paceline.queue.jobs import Job, Status, log_extra
from paceline.queue.leases import LeaseKeeper
from paceline.queue.planning import shift_later_slots
from paceline.queue.pressure import SubmitPressure
from paceline.queue.requeue import requeue
from paceline.queue.results import encode_result
from paceline.queue.retry import Action, RetryPolicy
from paceline.queue.running import JobState, RunningJobs
from paceline.queue.service import Backoff, Service, retry_until

log = logging.getLogger(__name__)

# Woken a hair before a slot (the clocks are compared across a round trip), the claim would
# find nothing and cost a round trip more; this much past it, it does not. Small: a backlogged
# key's starts follow one another, so each start's delay carries into the next.
_ALARM_SLACK = 0.0001
# The last part of a timed wait that a thread sleeps instead of the event loop's timer, whose
# wake-ups are up to a millisecond late (Alarm._sleep).
_PRECISE_TAIL = 0.002
# Something is due but was not claimable twice in a row (another replica holds it locked right
# now): look again after this, doubling while it persists, rather than spinning.
_RECHECK = 0.002
# After the shutdown grace, a job whose outcome is being written gets this much more.
_RECORDING_GRACE = 5.0
# Finished jobs whose outcomes wait to be written: one statement's worth in flight and one
# more queued. Past that the writes are not keeping up (a slow or busy database), and claims
# wait for them rather than pile up finished jobs that are still leased, renewed, and run
# again if this replica dies (without a bound, a fast drain ended with tens of thousands). A
# tighter bound costs the default concurrency much of its drain rate: the claims need to run
# ahead so that each commit carries many outcomes (docs/performance-notes.md).
MAX_UNWRITTEN = 2 * MAX_IDS_PER_STATEMENT
# A job that starts this much after its slot (workers were down or behind) pushes its
# object's later slots back, so each waiting job's run_at stays an honest prediction.
_LATE_START = 0.05


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
            elif seconds > 0:
                await self._sleep(seconds)
        finally:
            self._armed = False

    async def _sleep(self, seconds: float) -> None:
        # asyncio's timers wake up to a millisecond late (epoll takes its timeout in whole
        # milliseconds, rounded up). For a backlogged key that delay carries from each start
        # into the next (a start may come no sooner than W after the one before), about a
        # millisecond a step. So the loop's timer covers all but the last _PRECISE_TAIL, and a
        # thread sleeps the rest with the kernel's precision, then wakes the loop through its
        # self-pipe (no timeout, no rounding); a fire() ends the wait as before.
        until = time.monotonic() + seconds
        if seconds > _PRECISE_TAIL:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), seconds - _PRECISE_TAIL)
            if self._event.is_set():
                return
        remaining = until - time.monotonic()
        if remaining <= 0:
            return
        timer: asyncio.Future[Any] = asyncio.get_running_loop().run_in_executor(
            None, time.sleep, remaining
        )
        fired: asyncio.Future[Any] = asyncio.ensure_future(self._event.wait())
        try:
            await asyncio.wait({timer, fired}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            fired.cancel()


class Worker(Service):
    """Runs jobs from the shared queue; `start()` (or `run()`), then `stop()` and `wait()`."""

    name = "paceline-worker"

    def __init__(
        self,
        pool: asyncpg.Pool,
        handlers: Mapping[str, Handler],
        *,
        events: JobEvents | None = None,
        concurrency: int,
        lease: float = 30.0,
        max_attempts: int = 3,
        retry_backoff: float = 2.0,
        job_timeout: float | None = None,
        idle_poll: float = 5.0,
        shutdown_grace: float = 30.0,
        pressure: SubmitPressure | None = None,
    ) -> None:
        # Claims that fail wait out the database: 50 ms, doubling up to 5 s.
        super().__init__(logger=log, retry=Backoff(0.05, 5.0))
        self.id = uuid.uuid4()
        self._pool = pool
        # One handler per kind; the worker claims only jobs of these kinds.
        self._handlers = dict(handlers)
        self._kinds = sorted(self._handlers)
        self._events = events if events is not None else JobEvents()
        self._lease = lease
        self._retry_policy = RetryPolicy(max_attempts=max_attempts, backoff=retry_backoff)
        self._job_timeout = job_timeout
        self._idle_poll = idle_poll
        self._grace = shutdown_grace
        self._running = RunningJobs(concurrency=concurrency, max_unwritten=MAX_UNWRITTEN)
        # What PACELINE_CONCURRENCY bounds: handlers running at once. Waiters take a slot in
        # the order they were claimed (asyncio's semaphore is first come, first served), which
        # is slot order.
        self._handler_slots = asyncio.Semaphore(max(concurrency, 1))
        self._ahead = ClaimAhead()
        # The API's submits on this process's loop: while they wait on it, no claiming ahead.
        self._pressure = pressure
        self._background: set[asyncio.Task[None]] = set()
        row_lock = asyncio.Lock()
        self._completions = CompletionWriter(pool, lease=lease, row_lock=row_lock)
        self._leases = LeaseKeeper(
            pool,
            self._running,
            worker_id=self.id,
            concurrency=concurrency,
            kinds=self._kinds,
            lease=lease,
            row_lock=row_lock,
        )
        self.alarm = Alarm()

    @property
    def running(self) -> int:
        """How many jobs this worker is running now."""
        return len(self._running)

    def _wake(self) -> None:
        # `stop()`: stop claiming; `run()` then waits for running jobs (up to the grace).
        self.alarm.fire()

    async def run(self) -> None:
        """Claim and run jobs until `stop()`; then drain or release what is running."""
        self._leases.start()
        self._completions.start()
        try:
            await self._claim_loop()
        finally:
            await self._drain()
            self._completions.stop()
            await self._completions.wait()
            await self._leases.cancel()
            await self._unregister()

    async def _claim_loop(self) -> None:
        backoff = self._backoff
        recheck = _RECHECK
        missed = False
        while not self.stopping:
            self.alarm.reset()
            ahead = 0 if self._pressure is not None and self._pressure.high else self._ahead.jobs()
            free = self._running.free(ahead)
            if free <= 0 or self._running.waiting > ahead // 2:
                # Full, or enough claimed jobs still wait for a handler that the next claim
                # can be a larger one: only a finishing job or a written outcome (or stop)
                # changes anything.
                await self.alarm.wait(math.inf, heed_due=False)
                continue
            try:
                claimed = await self._claim(free)
                # Start them before anything else can fail: the claim has committed, and a job
                # not started now would sit PROCESSING, unrun, until its lease ran out.
                for job in claimed:
                    self._start(job)
                self._shift_later_slots(claimed)
                sleep = 0.0 if len(claimed) == free else await self._seconds_until_due()
            except Exception as exc:
                delay = backoff.next()
                if not is_unavailable(exc):
                    log.exception("claiming jobs failed")
                else:
                    log.warning("database unavailable (%s); retrying in %.2fs", exc, delay)
                await self.alarm.wait(delay)
                continue
            backoff.reset()
            if claimed or sleep > 0:
                recheck, missed = _RECHECK, False
            elif not missed:
                # Nothing claimed, yet the next start has come: it came while the claim was in
                # flight, or the claim reached the database a hair before it. Claim again at
                # once (waiting out the recheck made such starts 2 ms later). A second miss in
                # a row means a due job is held by another claim (another replica's): then the
                # recheck, doubling, so that nothing spins.
                missed = True
            else:
                sleep, recheck = recheck, min(recheck * 2, self._idle_poll)
            if sleep > 0:
                await self.alarm.wait(sleep)

    async def _claim(self, limit: int) -> list[Job]:
        began = time.monotonic()
        records = await store.claim_due_jobs(
            self._pool,
            limit=limit,
            lease=self._lease,
            worker_id=self.id,
            kinds=self._kinds,
        )
        took = time.monotonic() - began
        self._ahead.claimed(took)
        self._events.claimed(len(records), took)
        return [Job.from_record(record) for record in records]

    async def _seconds_until_due(self) -> float:
        # The database clock decides. It read its clock about halfway through the statement's
        # round trip (`read_at` here), so the next start is `next_start - now` after that
        # moment; and the claim reads its clock (the statement's start) half a round trip after
        # it goes out, so the wake-up comes that much earlier. The claim goes out after its
        # BEGIN's round trip, which leaves it a little late rather than early: an early claim
        # finds nothing, and the second one makes the start 3-4 ms late. (Timed around the
        # whole planned read, with its BEGIN, COMMIT and the pool's hand-back, the estimate woke
        # the worker two round trips early: the claim found nothing and the start came a
        # recheck later, 4-5 ms late at idle.)
        due = await store.seconds_until_next_due(self._pool, kinds=self._kinds)
        if due.next_start is None:
            return self._idle_poll
        wake_at = due.read_at + (due.next_start - due.now) - due.trip / 2
        return min(wake_at - time.monotonic() + _ALARM_SLACK, self._idle_poll)

    def _shift_later_slots(self, claimed: list[Job]) -> None:
        late = [
            job
            for job in claimed
            if job.started_at is not None
            and job.run_at is not None
            and (job.started_at - job.run_at).total_seconds() > _LATE_START
        ]
        if late:
            task = asyncio.create_task(self._shift_later_slots_of(late))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _shift_later_slots_of(self, late: list[Job]) -> None:
        try:
            await shift_later_slots(self._pool, late)
        except Exception as exc:
            # Only the predictions of later jobs stay stale; the claim still enforces I1.
            if not is_unavailable(exc):
                log.exception("re-planning objects after late starts failed")

    def _start(self, job: Job) -> None:
        # The lease counts from the claim; the monotonic deadline errs early by the round trip.
        deadline = time.monotonic() + self._lease
        task = asyncio.create_task(self._execute(job), name=f"paceline-job-{job.id}")
        self._running.add(job, task, deadline)

        def done(finished: asyncio.Task[None]) -> None:
            self._running.done(job.id)
            self.alarm.fire()
            if not finished.cancelled() and (exc := finished.exception()) is not None:
                log.error("job %d: recording its outcome failed", job.id, exc_info=exc)

        task.add_done_callback(done)

    async def _execute(self, job: Job) -> None:
        claimed = time.monotonic()
        try:
            async with self._handler_slots:
                self._running.started(job.id)
                self._ahead.started()
                started = time.monotonic()
                if started - claimed > 0.0001:
                    self._events.waited(job, started - claimed)
                log.info(
                    "job %d (object %d) started, attempt %d",
                    job.id,
                    job.object_id,
                    job.attempts,
                    extra=log_extra(job),
                )
                self._events.started(job)
                outcome, returned = await self._call_handler(job)
                duration = time.monotonic() - started
                # The slot is free for the next waiting job while this outcome is written.
                if self._running.recording(job.id):
                    self.alarm.fire()
        except asyncio.CancelledError:
            entry = self._running.get(job.id)
            if entry is not None and entry.state is JobState.LOST:
                log.warning(
                    "job %d attempt %d stopped: its lease was lost",
                    job.id,
                    job.attempts,
                    extra=log_extra(job),
                )
                return
            # Shutdown ran out of grace: give the job back so another replica can run it.
            await asyncio.shield(self._release(job))
            raise
        await self._record(job, outcome, returned, duration)

    async def _call_handler(self, job: Job) -> tuple[BaseException | None, Any]:
        """Run the kind's handler: (the exception it ended with, a timeout as TimeoutError, or
        None; what it returned)."""
        handler = self._handlers[job.kind]  # claimed only for the kinds it has
        try:
            async with asyncio.timeout(self._job_timeout) as deadline:
                return None, await handler(job)
        except TimeoutError as exc:
            if deadline.expired():
                return TimeoutError(
                    f"the handler ran longer than PACELINE_JOB_TIMEOUT={self._job_timeout:g}s"
                ), None
            return exc, None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return exc, None

    async def _record(
        self, job: Job, outcome: BaseException | None, returned: Any, duration: float
    ) -> None:
        if outcome is None:
            result = encode_result(returned, job=job)
            await self._finish(job, Status.SUCCESS, duration, None, result)
            return
        error = f"{type(outcome).__name__}: {outcome}"
        # A job retried by hand has its whole budget again: count the attempts since then.
        decision = self._retry_policy.decide(job.attempts_since_retry, outcome)
        if decision.action is Action.FAIL:
            # The last error, as the handler said it; `attempts` tells how many there were.
            await self._finish(job, Status.FAILED, duration, error, None)
            return
        await self._retry(job, decision.delay, error, duration)

    async def _finish(
        self, job: Job, status: Status, duration: float, error: str | None, result: str | None
    ) -> None:
        updated = await self._completions.finish(job, status, duration, error, result)
        extra = log_extra(job)
        if not updated:
            log.warning(
                "job %d attempt %d was taken back; result dropped",
                job.id,
                job.attempts,
                extra=extra,
            )
            return
        self._events.finished(job, status, duration, error)
        if status is Status.FAILED:
            log.warning(
                "job %d (object %d) failed after %.3fs: %s",
                job.id,
                job.object_id,
                duration,
                error,
                extra=extra,
            )
        else:
            log.info(
                "job %d (object %d) succeeded in %.3fs",
                job.id,
                job.object_id,
                duration,
                extra=extra,
            )

    async def _retry(self, job: Job, delay: float, error: str, duration: float) -> None:
        async def write() -> datetime | None:
            async with self._pool.acquire() as conn, conn.transaction():
                return await requeue(
                    conn,
                    job.id,
                    job.attempts,
                    delay=delay,
                    error=error,
                    outcome="RETRY",
                )

        give_up_at = time.monotonic() + self._lease
        run_at = await retry_until(lambda: give_up_at, write, _retrying_the_write)
        if run_at is None:
            log.warning("job %d attempt %d was taken back", job.id, job.attempts)
            return
        self._events.retried(job, error, delay)
        log.warning(
            "job %d (object %d) attempt %d failed after %.3fs: %s; retry at %s",
            job.id,
            job.object_id,
            job.attempts,
            duration,
            error,
            run_at.isoformat(),
            extra=log_extra(job),
        )

    async def _release(self, job: Job) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                run_at = await requeue(
                    conn,
                    job.id,
                    job.attempts,
                    delay=0.0,
                    error="released unfinished at shutdown",
                    outcome="RELEASED",
                )
        except Exception:
            log.exception("could not release job %d at shutdown; its lease will expire", job.id)
            return
        if run_at is not None:
            log.info("job %d (object %d) released at shutdown", job.id, job.object_id)
            self._events.released(job)

    async def _drain(self) -> None:
        if not self._running:
            return
        entries = list(self._running)
        log.info("waiting up to %gs for %d running job(s)", self._grace, len(entries))
        _done, pending = await asyncio.wait([e.task for e in entries], timeout=self._grace)
        if not pending:
            return
        # Handlers still running are stopped and released; outcomes being written get a
        # little longer, since stopping them could leave the job PROCESSING until its lease ends.
        for entry in entries:
            if entry.task in pending and entry.state is not JobState.RECORDING:
                entry.task.cancel()
        _done, still = await asyncio.wait(pending, timeout=_RECORDING_GRACE)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still)

    async def _unregister(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(store.unregister_worker(self._pool, worker_id=self.id), 2)


def _retrying_the_write(exc: Exception) -> None:
    # Until the lease has surely expired; then the job is someone else's (the reaper's).
    log.warning("database unavailable (%s); retrying the write", exc)
