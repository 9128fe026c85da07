"""The one asyncpg pool of a process, and how to tell "database unavailable" from a bug."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection of our own or one borrowed from the pool; queries take either.
Connection = asyncpg.Connection | PoolConnectionProxy
# What a query function runs on: the pool (a connection of its own) or the caller's connection.
Executor = asyncpg.Pool | Connection

T = TypeVar("T")

# How many times a transaction runs when PostgreSQL breaks it off to end a deadlock.
LOCK_CONFLICT_ATTEMPTS = 5

# How long a request waits for a connection or for PostgreSQL to answer a connect before
# it is told the database is unavailable; short, so the API answers 503 instead of hanging.
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 30.0


def session_settings(dsn: str) -> dict[str, str]:
    """What each session of this process tells the server about itself: its
    `application_name`, "paceline/<pid>", so that pg_stat_activity (and a DBA terminating a
    session, or a test waiting for a killed replica's sessions to end) can tell which replica
    holds which connection. One the URL names is kept."""
    if "application_name=" in dsn:
        return {}
    return {"application_name": f"paceline/{os.getpid()}"}


# Type OIDs below this (FirstNormalObjectId) are PostgreSQL's own types: the same on every server.
_FIRST_USER_OID = 16384
# What asyncpg learnt about each built-in type it has no codec of its own for (the arrays of
# paceline's statements), with the types it depends on: once per process, not per connection.
_KNOWN_TYPES: dict[int, list[Any]] = {}
# One statement that mentions every array type paceline's statements send or read, run by a
# new connection while some are unknown: the process learns them all in one catalog query, when
# its first connection opens, instead of one query per type on its first claim, finish, ...
_EVERY_ARRAY_TYPE = (
    "SELECT $1::bigint[], $2::text[], $3::int[], $4::smallint[], $5::float8[], $6::jsonb[], "
    "$7::timestamptz[], $8::uuid[], $9::bool[]"
)
_EVERY_ARRAY_TYPE_OIDS = frozenset({1016, 1009, 1007, 1005, 1022, 3807, 1185, 2951, 1000})


class _NothingSent:
    # Stands for asyncpg's introspection statement when the answer was known: a named one, so
    # asyncpg does not prepare the caller's statement again (an anonymous introspection
    # statement would have replaced an anonymous statement of the caller's).
    name = "paceline-known-types"


class TypeCachingConnection(asyncpg.Connection):
    """An asyncpg connection that asks the server about a built-in type once per process.

    asyncpg learns the codec of each type it has none for (arrays: bigint[], text[], ...) with
    a catalog query, on every new connection. That query costs 18 ms on one PostgreSQL 18
    server and 0.5-0.9 s on a Citus node (its plan scans pg_class once per composite type, and
    Citus adds hundreds): each new connection's first claim, enqueue or finish was that late,
    and the pool opens new connections after an outage and when idle ones are recycled.
    Built-in types are the same on every server, so the answers are kept; a user type is asked
    about again, as asyncpg does (it could have changed)."""

    async def _introspect_types(self, typeoids: Any, timeout: Any) -> Any:  # noqa: ASYNC109 - asyncpg's signature
        wanted = set(typeoids)
        if wanted and wanted <= _KNOWN_TYPES.keys():
            rows = {row["oid"]: row for oid in wanted for row in _KNOWN_TYPES[oid]}
            return list(rows.values()), _NothingSent()
        types, statement = await super()._introspect_types(typeoids, timeout)  # type: ignore[misc]
        for oid in wanted:
            if oid < _FIRST_USER_OID:
                _KNOWN_TYPES[oid] = list(types)
        return types, statement


async def _learn_types(conn: asyncpg.Connection) -> None:
    # A new connection (the pool's `init`): the process's first ones learn every array type.
    if not _KNOWN_TYPES.keys() >= _EVERY_ARRAY_TYPE_OIDS:
        await conn.fetch(
            f"SELECT * FROM ({_EVERY_ARRAY_TYPE}) AS every_array WHERE false", *([None] * 9)
        )


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
        server_settings=session_settings(dsn),
        connection_class=TypeCachingConnection,
        init=_learn_types,
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


async def in_transaction(
    db: asyncpg.Pool | Connection, work: Callable[[Connection], Awaitable[T]]
) -> T:
    """`work` in a transaction of its own (on a connection of the pool, or on `db`), run again
    if PostgreSQL broke it off to end a deadlock (or a serialization failure): that rolled the
    whole transaction back, so running it again is the same request, and it then finds the
    locks free. An exception of `work`'s own ends the transaction and is raised.

    Writers that lock several keys' slot rows lock them in key order where they can (a batch's
    planner, a limit change's `plan_exactly`), but not all can: a batch locks the keys the
    one-statement enqueue places before the ones the planner places, the reaper takes expired
    jobs' keys in expiry order, and a Citus cluster locks each shard's rows in its own order. Two
    of them can meet the other way round; PostgreSQL then aborts one after deadlock_timeout, and
    the request must not end in a 500 for it (the chaos soak got one from a batch and one from
    a limit change).
    """
    for attempt in range(1, LOCK_CONFLICT_ATTEMPTS + 1):
        try:
            if isinstance(db, asyncpg.Pool):
                async with db.acquire() as conn, conn.transaction():
                    return await work(conn)
            async with db.transaction():
                return await work(db)
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == LOCK_CONFLICT_ATTEMPTS:
                raise
        # Apart by a random moment, so the two that collided do not collide again in step.
        await asyncio.sleep(random.uniform(0.0, 0.05 * attempt))
    raise AssertionError("unreachable")
