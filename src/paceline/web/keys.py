"""Typed keys for what the application shares between its parts."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from paceline.config import Settings
from paceline.queue.events import JobEvents
from paceline.queue.worker import Worker

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
WORKER = web.AppKey("worker", Worker)
EVENTS = web.AppKey("events", JobEvents)
