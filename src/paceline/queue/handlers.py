"""What a job does: an async callable that receives the job, one per kind.

PACELINE_HANDLER names the handler of the `default` kind; PACELINE_HANDLERS adds kinds
(`"reindex=myapp.tasks:reindex,notify=webhook"`). What a handler returns (JSON-encodable) is
kept as the job's `result`.
"""

from __future__ import annotations

import asyncio
import inspect
import pkgutil
from collections.abc import Awaitable, Callable

from paceline.config import ConfigError, Settings
from paceline.contract import DEFAULT_KIND
from paceline.queue.errors import PermanentFailure, RetryLater
from paceline.queue.jobs import Job
from paceline.queue.webhook import webhook_handler

__all__ = [
    "Handler",
    "PermanentFailure",
    "RetryLater",
    "noop",
    "resolve_handler",
    "resolve_handlers",
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


def resolve_handlers(settings: Settings) -> dict[str, Handler]:
    """{kind: handler} for every kind this replica runs. Kinds naming the same built-in share
    one handler (the webhook's HTTP session among them)."""
    resolved: dict[str, Handler] = {}
    built: dict[str, Handler] = {}
    for kind, name in settings.handler_names().items():
        if name not in built:
            built[name] = _resolve(name, settings, _variable(kind))
        resolved[kind] = built[name]
    return resolved


def resolve_handler(settings: Settings) -> Handler:
    """The handler of the `default` kind (PACELINE_HANDLER)."""
    return _resolve(settings.handler, settings, "PACELINE_HANDLER")


def _variable(kind: str) -> str:
    return "PACELINE_HANDLER" if kind == DEFAULT_KIND else f"PACELINE_HANDLERS ({kind})"


def _resolve(name: str, settings: Settings, variable: str) -> Handler:
    """`noop`, `sleep`, `webhook`, or `package.module:function`."""
    if name == "noop":
        return noop
    if name == "sleep":
        return sleeper(settings.sleep_seconds)
    if name == "webhook":
        return webhook_handler(settings)
    if ":" in name:
        return _import_handler(name, variable)
    raise ConfigError(
        f"{variable}={name!r} is unknown: use noop, sleep, webhook, or package.module:function"
    )


def _import_handler(path: str, variable: str) -> Handler:
    module_name, _, attribute = path.partition(":")
    try:
        target = pkgutil.resolve_name(path)
    except ImportError as exc:
        raise ConfigError(f"{variable}={path!r}: cannot import {module_name}: {exc}") from exc
    except AttributeError:
        raise ConfigError(f"{variable}={path!r}: {module_name} has no {attribute}") from None
    if not inspect.iscoroutinefunction(target):
        raise ConfigError(f"{variable}={path!r} must be an async function taking the job")
    handler: Handler = target
    return handler
