"""Typed keys for what the application shares between its parts."""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp import web

from paceline.config import Settings
from paceline.observability.overview import OverviewCache
from paceline.observability.prometheus import JobMetrics
from paceline.queue.events import JobEvents
from paceline.queue.grouping import EnqueueGrouper
from paceline.queue.kinds import KnownKinds
from paceline.queue.pressure import SubmitPressure
from paceline.queue.wakeup import DueNotifier
from paceline.queue.worker import Worker
from paceline.web.credentials import Credentials
from paceline.web.throttle import SignInThrottle

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
WORKER = web.AppKey("worker", Worker)
EVENTS = web.AppKey("events", JobEvents)
NOTIFIER = web.AppKey("notifier", DueNotifier)
GROUPER = web.AppKey("grouper", EnqueueGrouper)
KINDS = web.AppKey("kinds", KnownKinds)
# Submits in flight on this loop, which the worker yields to (paceline.queue.pressure).
PRESSURE = web.AppKey("pressure", SubmitPressure)
# Who may do what (paceline.web.auth): the tokens, the page's sessions, the sign-in throttle.
CREDENTIALS = web.AppKey("credentials", Credentials)
THROTTLE = web.AppKey("throttle", SignInThrottle)
# The dashboard and /metrics (paceline.observability).
METRICS = web.AppKey("metrics", JobMetrics)
OVERVIEW = web.AppKey("overview", OverviewCache)
# Set at shutdown: long-lived event streams end, so shutdown does not wait on them.
CLOSING = web.AppKey("closing", asyncio.Event)
# Every migration this code knows, oldest first; /readyz wants the last one in the database.
MIGRATIONS = web.AppKey("migrations", list[str])
