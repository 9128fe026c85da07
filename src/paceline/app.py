"""The application factory: routes, middleware, and the resources in start-up order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp_jinja2
import asyncpg
import jinja2
from aiohttp import web

from paceline.config import Settings
from paceline.db import citus
from paceline.db.pool import create_pool, is_unavailable
from paceline.queue.events import JobEvents
from paceline.queue.grouping import EnqueueGrouper
from paceline.queue.handlers import Handler, resolve_handlers
from paceline.queue.kinds import KnownKinds
from paceline.queue.limits import seed_default_limit
from paceline.queue.maintenance import Janitor
from paceline.queue.pressure import SubmitPressure
from paceline.queue.reaper import Reaper
from paceline.queue.service import Service
from paceline.queue.wakeup import DueListener, DueNotifier
from paceline.queue.worker import Worker
from paceline.resources import templates_dir
from paceline.web import actions, api, auth, dashboard, health, limits, metrics, openapi, pages
from paceline.web.auth import auth_middleware
from paceline.web.credentials import Credentials
from paceline.web.forms import forms_middleware
from paceline.web.headers import add_security_headers
from paceline.web.keys import (
    CREDENTIALS,
    EVENTS,
    GROUPER,
    KINDS,
    NOTIFIER,
    POOL,
    PRESSURE,
    SETTINGS,
    THROTTLE,
    WORKER,
)
from paceline.web.problems import MAX_BODY_BYTES, problem_middleware
from paceline.web.throttle import SignInThrottle

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, events: JobEvents | None = None) -> web.Application:
    """A paceline application for `settings`, whose `database_url` must be set.

    `events` observes job transitions in this process (metrics hook in here).
    """
    if settings.database_url is None:
        raise ValueError("create_app needs settings.database_url (the CLI starts an embedded one)")
    handlers = resolve_handlers(settings)  # fail at start-up, not at the first job
    # The problem middleware is outermost, so refusals by the auth middleware are problems too.
    # The forms middleware is innermost: it adds the pages' headers and cookies to what the
    # handlers answer.
    app = web.Application(
        middlewares=[problem_middleware, auth_middleware, forms_middleware],
        client_max_size=MAX_BODY_BYTES,
    )
    app[SETTINGS] = settings
    app[CREDENTIALS] = Credentials(
        settings.scoped_tokens(), session_seconds=settings.session_seconds
    )
    app[THROTTLE] = SignInThrottle()
    # Every response, whoever made it (a handler, a middleware's refusal, a static file, a
    # stream), gets the security headers.
    app.on_response_prepare.append(add_security_headers)
    # Prometheus counters and the enqueue log line see every transition, then `events`.
    app[EVENTS] = metrics.observe(app, events)
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(templates_dir()),
        autoescape=jinja2.select_autoescape(default=True),
    )
    pages.setup(env)
    # The pages' scripts and style sheet: no inline script or style, so a strict CSP holds.
    app.router.add_static("/static", templates_dir() / "static", name="static", append_version=True)
    app.add_routes(pages.routes)
    app.add_routes(actions.routes)
    app.add_routes(api.routes)
    app.add_routes(limits.routes)
    app.add_routes(health.routes)
    app.add_routes(dashboard.routes)
    app.add_routes(metrics.routes)
    health.setup(app)
    app.add_routes(auth.routes)
    app.add_routes(openapi.routes)

    # Cleanup runs in reverse: workers stop (and finish their jobs) before the pool closes.
    app.cleanup_ctx.append(_pool_ctx)
    app.cleanup_ctx.append(_notifier_ctx)
    # The page's overview reader and the limit auditor use the pool.
    dashboard.setup(app)
    metrics.setup(app)
    if settings.concurrency > 0:

        async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
            async with _run_worker(app, handlers):
                yield

        app.cleanup_ctx.append(workers_ctx)
    return app


async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    assert settings.database_url is not None
    app[POOL] = await create_pool(settings.database_url, settings.pool_size)
    # A Citus cluster runs its own form of some statements (paceline.db.queries). The app
    # starts with the database down too: then it finds out once the database answers.
    detecting = (
        None
        if await _detected_citus(app[POOL])
        else asyncio.create_task(_detect_citus_later(app[POOL]))
    )
    await seed_default_limit(app[POOL], settings.rate_window)
    yield
    if detecting is not None:
        detecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await detecting
    try:
        await asyncio.wait_for(app[POOL].close(), 10)
    except TimeoutError:
        app[POOL].terminate()


async def _detected_citus(pool: asyncpg.Pool) -> bool:
    """Whether the database answered (and so the right statements are chosen)."""
    try:
        await citus.detect(pool)
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        log.warning("could not tell whether the database is a Citus cluster yet (%s)", exc)
        return False
    return True


async def _detect_citus_later(pool: asyncpg.Pool) -> None:
    while True:
        await asyncio.sleep(1.0)
        if await _detected_citus(pool):
            return


async def _notifier_ctx(app: web.Application) -> AsyncIterator[None]:
    # What POST /jobs writes through: group commit, then a NOTIFY per burst.
    notifier = DueNotifier(app[POOL])
    grouper = EnqueueGrouper(app[POOL])
    app[NOTIFIER] = notifier
    app[GROUPER] = grouper
    app[PRESSURE] = SubmitPressure()
    app[KINDS] = KnownKinds(app[POOL], app[SETTINGS].handler_names())
    notifier.start()
    grouper.start()
    yield
    grouper.stop()
    notifier.stop()
    await asyncio.gather(notifier.wait(), grouper.wait(), app[PRESSURE].close())


@contextlib.asynccontextmanager
async def _run_worker(app: web.Application, handlers: dict[str, Handler]) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    assert settings.database_url is not None
    worker = Worker(
        app[POOL],
        handlers,
        events=app[EVENTS],
        concurrency=settings.concurrency,
        lease=settings.lease,
        max_attempts=settings.max_attempts,
        retry_backoff=settings.retry_backoff,
        job_timeout=settings.job_timeout,
        idle_poll=settings.idle_poll,
        shutdown_grace=settings.shutdown_grace,
        pressure=app[PRESSURE],
    )
    # Expired leases are looked for this often; a failed round of either is tried again then.
    housekeeping = min(settings.lease / 3, settings.idle_poll)
    reaper = Reaper(
        app[POOL],
        max_attempts=settings.max_attempts,
        interval=housekeeping,
    )
    janitor = Janitor(app[POOL], retention=settings.retention, interval=housekeeping)
    listener = DueListener(
        settings.database_url,
        on_due=worker.alarm.fire_in,
        on_connect=worker.alarm.fire,
        keepalive=settings.idle_poll,
    )
    app[WORKER] = worker
    # Jobs this replica accepts wake its own worker at once, before any NOTIFY round trip.
    app[NOTIFIER].local = worker.alarm.fire_in
    services: list[Service] = [listener, worker, reaper, janitor]
    tasks = [service.start() for service in services]
    log.info(
        "worker running %d job(s) at once with handlers %s",
        settings.concurrency,
        ", ".join(f"{kind}={name}" for kind, name in settings.handler_names().items()),
    )
    try:
        yield
    finally:
        for service in services:
            service.stop()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for task, outcome in zip(tasks, outcomes, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, asyncio.CancelledError
            ):
                log.error("%s ended with an error", task.get_name(), exc_info=outcome)
        # What the handlers hold (the webhook's HTTP session) goes once no job can use it.
        for handler in {id(handler): handler for handler in handlers.values()}.values():
            aclose = getattr(handler, "aclose", None)
            if aclose is not None:
                await aclose()
