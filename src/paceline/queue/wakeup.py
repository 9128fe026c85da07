"""Wake-ups from other replicas: LISTEN on the channel enqueue NOTIFYs.

Each notification carries the seconds until the new job is due; the listener hands them to a
callback (the worker's alarm). A dedicated connection, outside the pool, because LISTEN is tied
to its session. When the connection is lost, it reconnects with backoff and calls `on_connect`,
since notifications sent meanwhile are gone and the worker must look for itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable

import asyncpg

from paceline.db import jobs as store
from paceline.db.pool import (
    CONNECT_TIMEOUT,
    TypeCachingConnection,
    is_unavailable,
    session_settings,
)
from paceline.queue.service import Backoff, Service

log = logging.getLogger(__name__)

CHANNEL = "paceline_jobs"


class DueListener(Service):
    """Keeps a LISTEN connection open until `stop()`; reconnects when it drops."""

    name = "paceline-listener"

    def __init__(
        self,
        dsn: str,
        on_due: Callable[[float], None],
        on_connect: Callable[[], None],
        *,
        keepalive: float = 5.0,
    ) -> None:
        super().__init__(logger=log, retry=Backoff(0.1, 5.0))
        self._dsn = dsn
        self._on_due = on_due
        self._on_connect = on_connect
        self._keepalive = keepalive

    async def step(self) -> float:
        """Listen until stopped or the connection drops (raised)."""
        await self._listen_once()
        return 0.0

    def expected(self, exc: Exception) -> bool:
        """A lost connection or a refusal from the server: reconnect."""
        return is_unavailable(exc) or isinstance(exc, asyncpg.PostgresError)

    def waiting_out(self, exc: Exception, delay: float) -> None:
        """Say so: the workers are deaf to other replicas' enqueues until we are back."""
        log.warning("LISTEN connection lost (%s); reconnecting in %.1fs", exc, delay)

    def unexpected(self, exc: Exception) -> None:
        """A bug: end the task with it (the app logs it)."""
        raise exc

    async def _listen_once(self) -> None:
        conn = await asyncpg.connect(
            self._dsn,
            timeout=CONNECT_TIMEOUT,
            server_settings=session_settings(self._dsn),
            connection_class=TypeCachingConnection,
        )
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            await conn.add_listener(CHANNEL, self._notified)
            self._on_connect()
            while not self.stopping:
                # Wake at once when the server drops us, not at the next keepalive tick:
                # the workers are deaf to NOTIFY until we are back.
                waits = [
                    asyncio.ensure_future(self._stop.wait()),
                    asyncio.ensure_future(lost.wait()),
                ]
                _done, pending = await asyncio.wait(
                    waits, timeout=self._keepalive, return_when=asyncio.FIRST_COMPLETED
                )
                for waiter in pending:
                    waiter.cancel()
                if self.stopping:
                    break
                if lost.is_set() or conn.is_closed():
                    raise ConnectionResetError("the LISTEN connection was closed")
                # A cheap round trip notices a dead server the socket has not told us about.
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await store.ping(conn)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), CONNECT_TIMEOUT)
            if not conn.is_closed():
                conn.terminate()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            seconds = float(str(payload))
        except ValueError:
            seconds = 0.0
        self._on_due(seconds)


class DueNotifier(Service):
    """Tells the workers of every replica that jobs were enqueued, one NOTIFY per burst.

    `due_in()` is cheap and synchronous; a background task sends a NOTIFY carrying the seconds
    until the earliest job reported since the last one, and only one NOTIFY is in flight at a
    time: under load one per round trip, not one per job. The replica's own worker is woken
    directly, without waiting for the round trip.
    """

    name = "paceline-notifier"
    failure = "NOTIFY failed"

    def __init__(self, pool: asyncpg.Pool, local: Callable[[float], None] | None = None) -> None:
        # A NOTIFY that failed is not sent again (the workers' idle poll covers it): the next
        # one goes out with the next enqueue, without waiting.
        super().__init__(logger=log, retry=Backoff(0.0, 0.0))
        self._pool = pool
        self.local = local
        self._earliest = math.inf  # monotonic time the earliest unannounced job is due
        self._pending = asyncio.Event()

    def due_in(self, seconds: float) -> None:
        """Jobs were committed; the earliest is due `seconds` from now."""
        if self.local is not None:
            self.local(seconds)
        self._earliest = min(self._earliest, time.monotonic() + seconds)
        self._pending.set()

    def _wake(self) -> None:
        self._pending.set()

    async def step(self) -> float:
        """Wait for enqueues, then send one NOTIFY for all of them."""
        await self._pending.wait()
        self._pending.clear()
        if self.stopping:
            return 0.0
        earliest, self._earliest = self._earliest, math.inf
        seconds = max(0.0, earliest - time.monotonic())
        await store.notify_due(self._pool, channel=CHANNEL, seconds=seconds)
        return 0.0
