"""What a job does: an async callable that receives the job, chosen by PACELINE_HANDLER."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Awaitable, Callable

from paceline.config import ConfigError, Settings
from paceline.queue.jobs import Job

Handler = Callable[[Job], Awaitable[object]]


class RetryLater(Exception):
    """Raise from a handler to run this job again no sooner than `delay` seconds from now.

    For an upstream that said "not now" (HTTP 429/503 with Retry-After): the attempt ends, the
    job goes back to PENDING at now + delay (and its object's window), and the object's later
    jobs move back with it. Counts as an attempt against PACELINE_MAX_ATTEMPTS.
    """

    def __init__(self, delay: float, reason: str = "") -> None:
        super().__init__(reason or f"retry in {delay:g}s")
        self.delay = max(0.0, delay)
        self.reason = reason


class PermanentFailure(Exception):
    """Raise from a handler when retrying cannot help (e.g. HTTP 400): FAILED at once."""


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
        # Imported here: the webhook module raises this module's RetryLater/PermanentFailure.
        from paceline.queue.webhook import webhook_handler  # noqa: PLC0415

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
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"PACELINE_HANDLER={path!r}: cannot import {module_name}: {exc}") from exc
    target = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(
                f"PACELINE_HANDLER={path!r}: {module_name} has no {attribute}"
            ) from None
    if not inspect.iscoroutinefunction(target):
        raise ConfigError(f"PACELINE_HANDLER={path!r} must be an async function taking the job")
    handler: Handler = target
    return handler
