"""Prometheus metrics: what this process did to jobs, and how the whole queue looks.

Counters and histograms count this process's transitions (an observer of `JobEvents`), so sum
them across replicas. Those about a job carry its `kind`: a configured name (submit refuses a
kind no replica runs), so the label takes a few values. The gauges describe the whole database
(every replica reports the same values), so take their maximum, not their sum.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from paceline.contract import DEFAULT_KIND
from paceline.observability.audit import Violation, WindowViolation
from paceline.observability.overview import LIMITS_COUNT_CAP, Overview
from paceline.queue.events import JobEvents
from paceline.queue.jobs import Job, Status

# From "on time" (the claim starts a due job within milliseconds) to "workers are far behind".
LATENESS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900,
)  # fmt: skip
# A claim takes a few milliseconds; seconds mean a plan that reads the whole table
# (docs/design.md, "Plans that do not depend on statistics").
CLAIM_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
)  # fmt: skip
# A claimed job's wait for a handler slot: a few milliseconds at most, by design (queue/ahead.py).
WAIT_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30,
)  # fmt: skip
# The label of every metric about a job.
KIND = ("kind",)
PROCESSING_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
)  # fmt: skip


_Metric = TypeVar("_Metric", Counter, Histogram)


class _ByKind(Generic[_Metric]):
    """A per-job metric's series of each kind. `labels()` costs microseconds (a lock, label
    checks); it ran three times for every job a replica accepted and ran, so each kind's series
    is looked up once and kept (a kind is a configured name: a few entries)."""

    def __init__(self, metric: _Metric) -> None:
        self._metric: _Metric = metric
        self._series: dict[str, _Metric] = {}

    def __getitem__(self, kind: str) -> _Metric:
        series = self._series.get(kind)
        if series is None:
            series = self._series[kind] = self._metric.labels(kind)
        return series


class JobMetrics(JobEvents):
    """The metrics of one application, in a registry of its own (tests run several apps)."""

    def __init__(self, kinds: Iterable[str] = (DEFAULT_KIND,)) -> None:
        """`kinds`: this replica's kinds, shown at 0 from the start (a rate needs a first 0)."""
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.enqueued_total = Counter(
            "paceline_jobs_enqueued",
            "Jobs accepted by this process's API.",
            labelnames=KIND,
            registry=r,
        )
        self.started_total = Counter(
            "paceline_jobs_started",
            "Attempts started by this process's workers (a retry is another start).",
            labelnames=KIND,
            registry=r,
        )
        self.succeeded_total = Counter(
            "paceline_jobs_succeeded",
            "Jobs this process ran to SUCCESS.",
            labelnames=KIND,
            registry=r,
        )
        self.failed_total = Counter(
            "paceline_jobs_failed",
            "Jobs that ended FAILED here (no retry left, or the handler refused retries).",
            labelnames=KIND,
            registry=r,
        )
        self.retried_total = Counter(
            "paceline_jobs_retried",
            "Failed attempts here whose job went back to the queue for another try.",
            labelnames=KIND,
            registry=r,
        )
        self.released_total = Counter(
            "paceline_jobs_released",
            "Running jobs this process gave back unfinished at shutdown.",
            labelnames=KIND,
            registry=r,
        )
        self.lateness = Histogram(
            "paceline_job_lateness_seconds",
            "How long after its reserved slot (run_at) an attempt started.",
            buckets=LATENESS_BUCKETS,
            labelnames=KIND,
            registry=r,
        )
        self.processing = Histogram(
            "paceline_job_processing_seconds",
            "How long the handler worked on a job that finished here.",
            buckets=PROCESSING_BUCKETS,
            labelnames=KIND,
            registry=r,
        )
        self.handler_wait = Histogram(
            "paceline_job_handler_wait_seconds",
            "How long a job claimed by this process waited for a free handler slot (claims run "
            "a few milliseconds ahead of the free slots when handlers are short).",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.claim = Histogram(
            "paceline_claim_seconds",
            "How long each claim statement of this process's workers took (claimed or not).",
            buckets=CLAIM_BUCKETS,
            registry=r,
        )
        self.window_violations = Counter(
            "paceline_window_violations",
            "Starts of one key more than its limit N in less than its window W, found by the "
            "auditor. Must stay 0.",
            registry=r,
        )
        self.running_violations = Counter(
            "paceline_running_violations",
            "Starts of one key made while its max_running attempts ran, found by the auditor. "
            "Must stay 0.",
            registry=r,
        )
        self.queue_depth = Gauge(
            "paceline_queue_depth",
            "Jobs waiting (PENDING) or running (PROCESSING), all replicas.",
            ["status"],
            registry=r,
        )
        self.due = Gauge(
            "paceline_jobs_due",
            "Pending jobs past their slot that have not started (near 0 unless workers lag).",
            registry=r,
        )
        self.oldest_due = Gauge(
            "paceline_oldest_due_seconds",
            "How long the most overdue pending job has been past its slot (0: none is).",
            registry=r,
        )
        self.replicas = Gauge(
            "paceline_replicas",
            "Replicas with workers by heartbeat: alive, or dead (silent for 15 s).",
            ["state"],
            registry=r,
        )
        self.limit_window = Gauge(
            "paceline_limit_window_seconds",
            "The window W of each kind's limit (its keys without an override).",
            KIND,
            registry=r,
        )
        self.limit_per_window = Gauge(
            "paceline_limit_per_window",
            "How many starts N of one key each kind's limit allows in its window.",
            KIND,
            registry=r,
        )
        self.limit_max_running = Gauge(
            "paceline_limit_max_running",
            "How many jobs M of one key each kind's limit lets run at once.",
            KIND,
            registry=r,
        )
        self.limit_paused = Gauge(
            "paceline_limit_paused",
            "1 while the kind is paused (none of its jobs start), else 0.",
            KIND,
            registry=r,
        )
        self.limit_overrides = Gauge(
            "paceline_limit_overrides",
            f"Keys of the kind with a limit of their own (counted up to {LIMITS_COUNT_CAP:,}).",
            KIND,
            registry=r,
        )
        self.paused_keys = Gauge(
            "paceline_paused_keys",
            f"Keys of the kind paused by an override (among its first {LIMITS_COUNT_CAP:,}).",
            KIND,
            registry=r,
        )
        self.database_up = Gauge(
            "paceline_database_up",
            "1 when the last scrape could read the queue from the database.",
            registry=r,
        )
        per_job = (
            self.enqueued_total,
            self.started_total,
            self.succeeded_total,
            self.failed_total,
            self.retried_total,
            self.released_total,
            self.lateness,
            self.processing,
        )
        for kind in kinds:
            for metric in per_job:
                metric.labels(kind)
        self._enqueued = _ByKind(self.enqueued_total)
        self._started = _ByKind(self.started_total)
        self._succeeded = _ByKind(self.succeeded_total)
        self._failed = _ByKind(self.failed_total)
        self._lateness = _ByKind(self.lateness)
        self._processing = _ByKind(self.processing)

    # JobEvents: called by the API and the workers of this process at each transition.

    def enqueued(self, job: Job) -> None:
        self._enqueued[job.kind].inc()

    def enqueued_batch(self, jobs: Sequence[Job]) -> None:
        for kind, accepted in Tally(job.kind for job in jobs).items():
            self._enqueued[kind].inc(accepted)

    def started(self, job: Job) -> None:
        self._started[job.kind].inc()
        if job.started_at is not None and job.run_at is not None:
            # Both times are the database's clock, so replicas' clock skew cannot show here.
            late = (job.started_at - job.run_at).total_seconds()
            self._lateness[job.kind].observe(max(0.0, late))

    def waited(self, job: Job, seconds: float) -> None:
        self.handler_wait.observe(seconds)

    def finished(self, job: Job, status: Status, duration: float, error: str | None) -> None:
        ended = self._succeeded if status is Status.SUCCESS else self._failed
        ended[job.kind].inc()
        self._processing[job.kind].observe(duration)

    def retried(self, job: Job, error: str, delay: float) -> None:
        self.retried_total.labels(job.kind).inc()

    def released(self, job: Job) -> None:
        self.released_total.labels(job.kind).inc()

    def claimed(self, jobs: int, seconds: float) -> None:
        self.claim.observe(seconds)

    def violation(self, violation: Violation) -> None:
        """The auditor found a start that broke its key's window or max_running."""
        if isinstance(violation, WindowViolation):
            self.window_violations.inc()
        else:
            self.running_violations.inc()

    def observe_queue(self, overview: Overview | None) -> None:
        """Set the gauges from a fresh overview; None: the database could not be read."""
        per_kind = (
            self.limit_window,
            self.limit_per_window,
            self.limit_max_running,
            self.limit_paused,
            self.limit_overrides,
            self.paused_keys,
        )
        # Only the kinds the database has now: a dropped kind leaves no stale series.
        for gauge in per_kind:
            gauge.clear()
        if overview is None:
            self.database_up.set(0)
            for gauge in (self.due, self.oldest_due):
                gauge.set(float("nan"))
            for status in ("PENDING", "PROCESSING"):
                self.queue_depth.labels(status).set(float("nan"))
            return
        self.database_up.set(1)
        self.queue_depth.labels("PENDING").set(overview.pending)
        self.queue_depth.labels("PROCESSING").set(overview.processing)
        self.due.set(overview.due)
        first = overview.first_due
        overdue = (
            0.0
            if first is None or first.run_at is None
            else (overview.now - first.run_at).total_seconds()
        )
        self.oldest_due.set(max(0.0, overdue))
        alive = sum(replica.alive for replica in overview.replicas)
        self.replicas.labels("alive").set(alive)
        self.replicas.labels("dead").set(len(overview.replicas) - alive)
        for limit in overview.limits:
            self.limit_window.labels(limit.kind).set(limit.window_seconds)
            self.limit_per_window.labels(limit.kind).set(limit.per_window)
            self.limit_max_running.labels(limit.kind).set(limit.max_running)
            self.limit_paused.labels(limit.kind).set(int(limit.paused))
            self.limit_overrides.labels(limit.kind).set(limit.overrides)
            self.paused_keys.labels(limit.kind).set(limit.paused_keys)

    def render(self) -> bytes:
        """Everything in the Prometheus text format."""
        return generate_latest(self.registry)
