"""What a job does: an async callable that receives the job, chosen by PACELINE_HANDLER."""

from __future__ import annotations

import asyncio
import inspect
import pkgutil
from collections.abc import Awaitable, Callable

from paceline.config import ConfigError, Settings
from paceline.queue.errors import PermanentFailure, RetryLater
from paceline.queue.jobs import Job
from paceline.queue.webhook import webhook_handler

__all__ = [
    "Handler",
    "PermanentFailure",
    "RetryLater",
    "noop",
    "resolve_handler",
    "sleeper",
]

Handler = Callable[[Job], Awaitable[object]]


async def noop(job: Job) -> None:
    """Does nothing; for measuring the queue itself."""


def sleeper(seconds: float) -> Handler:
    """A handler that works for `seconds` (PACELINE_SLEEP_SECONDS), like the original task."""

    async def sleep(job: Job) -> None:
        await asyncio.sleep(seconds)

    return sleep


def resolve_handler(settings: Settings) -> Handler:
    """The handler PACELINE_HANDLER names: `noop`, `sleep`, `webhook`, or
    `package.module:function`."""
    name = settings.handler
    if name == "noop":
        return noop
    if name == "sleep":
        return sleeper(settings.sleep_seconds)
    if name == "webhook":
        return webhook_handler(settings)
    if ":" in name:
        return _import_handler(name)
    raise ConfigError(
        f"PACELINE_HANDLER={name!r} is unknown: "
        "use noop, sleep, webhook, or package.module:function"
    )


def _import_handler(path: str) -> Handler:
    module_name, _, attribute = path.partition(":")
    try:
        target = pkgutil.resolve_name(path)
    except ImportError as exc:
        raise ConfigError(f"PACELINE_HANDLER={path!r}: cannot import {module_name}: {exc}") from exc
    except AttributeError:
        raise ConfigError(f"PACELINE_HANDLER={path!r}: {module_name} has no {attribute}") from None
    if not inspect.iscoroutinefunction(target):
        raise ConfigError(f"PACELINE_HANDLER={path!r} must be an async function taking the job")
    handler: Handler = target
    return handler
