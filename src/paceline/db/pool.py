"""The one asyncpg pool of a process, and how to tell "database unavailable" from a bug."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection of our own or one borrowed from the pool; queries take either.
Connection = asyncpg.Connection | PoolConnectionProxy
# What a query function runs on: the pool (a connection of its own) or the caller's connection.
Executor = asyncpg.Pool | Connection

# How long a request waits for a connection or for PostgreSQL to answer a connect before
# it is told the database is unavailable; short, so the API answers 503 instead of hanging.
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 30.0


async def create_pool(dsn: str, size: int) -> asyncpg.Pool:
    """Open the pool. Connections are opened lazily, so this succeeds with the database down."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=size,
        timeout=CONNECT_TIMEOUT,
        command_timeout=COMMAND_TIMEOUT,
        # Recycle idle connections so a restarted server does not leave stale ones around.
        max_inactive_connection_lifetime=60.0,
        reset=_rollback_if_needed,
    )
    assert pool is not None
    return pool


async def _rollback_if_needed(conn: asyncpg.Connection) -> None:
    # asyncpg's default reset (UNLISTEN, RESET ALL, CLOSE ALL, advisory unlock) costs a round
    # trip on every release, a large share of a short job's database time. Pooled connections carry
    # no session state here (no SET, no LISTEN, no session advisory lock; the listener has a
    # connection of its own), so only an unfinished transaction needs undoing.
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def is_transient(exc: BaseException) -> bool:
    """True when trying the same write again may succeed: unavailable, or a lock conflict."""
    return is_unavailable(exc) or isinstance(
        exc,
        asyncpg.exceptions.DeadlockDetectedError | asyncpg.exceptions.SerializationError,
    )


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` means PostgreSQL cannot be reached or is restarting, not a query bug."""
    return isinstance(
        exc,
        OSError
        | asyncio.TimeoutError
        | asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.CannotConnectNowError
        | asyncpg.exceptions.AdminShutdownError
        | asyncpg.exceptions.CrashShutdownError
        | asyncpg.exceptions.TooManyConnectionsError
        | asyncpg.exceptions.ConnectionFailureError
        | asyncpg.exceptions.InterfaceError
        # What asyncpg raises when the server's "terminating connection" message lands
        # mid-statement (MagicStack/asyncpg#784): the session is gone, not a bug of ours.
        | asyncpg.exceptions.InternalClientError,
    )


@contextlib.asynccontextmanager
async def committed_connection(pool: asyncpg.Pool) -> AsyncIterator[Connection]:
    """A pooled connection for a statement that changes something, robust to the server going
    away around it.

    When PostgreSQL ends a session (a shutdown's FATAL message) right around a statement,
    asyncpg can raise InternalClientError ("cannot switch to state ...; another operation (2)
    is in progress", MagicStack/asyncpg#784) rather than a connection error:
    - from the statement itself, which was then never sent: raised here as the outage it is;
    - from handing the connection back, after the statement's answer came (so it committed):
      ignored, like any error of that hand-back (the pool drops the connection itself), so the
      caller learns what was done (a created job, claimed jobs, a finish) instead of losing it.
    """
    conn = await pool.acquire()
    try:
        yield conn
    except asyncpg.InternalClientError as exc:
        raise asyncpg.ConnectionDoesNotExistError(f"the server ended the session ({exc})") from exc
    finally:
        with contextlib.suppress(Exception):
            await pool.release(conn)


async def fetch_committed(db: Executor, query: str, *args: Any) -> list[asyncpg.Record]:
    """`db.fetch` for a statement that changes something; through the pool, on a
    `committed_connection` (a connection given is the caller's, with its transaction)."""
    if not isinstance(db, asyncpg.Pool):
        return await db.fetch(query, *args)
    async with committed_connection(db) as conn:
        return await conn.fetch(query, *args)
