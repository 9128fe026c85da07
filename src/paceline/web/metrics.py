"""`GET /metrics` for Prometheus, and the observers and auditor that feed it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from paceline.db.pool import is_unavailable
from paceline.observability.audit import LimitAuditor
from paceline.observability.overview import Overview
from paceline.observability.prometheus import JobMetrics
from paceline.observability.transitions import EnqueueLog
from paceline.queue.events import EventFanout, JobEvents
from paceline.web.keys import METRICS, OVERVIEW, POOL, SETTINGS

routes = web.RouteTableDef()

# How often the limit auditor looks at new starts.
AUDIT_INTERVAL = 10.0


def observe(app: web.Application, events: JobEvents | None) -> JobEvents:
    """The observer of this app's job transitions: metrics and logs, then `events` if given."""
    app[METRICS] = JobMetrics(app[SETTINGS].handler_names())
    observers: list[JobEvents] = [app[METRICS], EnqueueLog()]
    if events is not None:
        observers.append(events)
    return EventFanout(*observers)


def setup(app: web.Application) -> None:
    """Run the limit auditor while the app runs (after the pool opens, before it closes)."""

    async def auditor_ctx(app: web.Application) -> AsyncIterator[None]:
        auditor = LimitAuditor(
            app[POOL],
            on_violation=app[METRICS].violation,
            interval=AUDIT_INTERVAL,
        )
        auditor.start()
        yield
        auditor.stop()
        await auditor.wait()

    app.cleanup_ctx.append(auditor_ctx)


@routes.get("/metrics", name="metrics")
async def metrics(request: web.Request) -> web.Response:
    """Counters of this process and gauges of the whole queue, in the Prometheus text format.

    Answers 200 with the counters even when the database is down (then
    `paceline_database_up` is 0 and the queue gauges are NaN).
    """
    snapshot: Overview | None
    try:
        snapshot = await request.app[OVERVIEW].get()
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        snapshot = None
    registry = request.app[METRICS]
    registry.observe_queue(snapshot)
    return web.Response(body=registry.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
