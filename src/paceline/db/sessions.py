"""The page's sign-ins and the key of their token fingerprints: the queries of `sessions.sql`.

Typed, keyword-argument functions, one per named query, each its own statement.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from paceline.db.pool import Executor
from paceline.db.queries import QUERIES


async def session_key(db: Executor) -> str | None:
    """The shared random key (hex), if the database has one."""
    key: str | None = await db.fetchval(QUERIES["session_key"])
    return key


async def seed_session_key(db: Executor, *, key: str) -> None:
    """Store `key` unless the database has a key already."""
    await db.execute(QUERIES["seed_session_key"], key)


async def create_session(
    db: Executor, *, session_id: bytes, scope: str, fingerprint: bytes, lifetime: float
) -> datetime:
    """A new session for `lifetime` seconds from now (database clock); when it expires."""
    expires_at: datetime = await db.fetchval(
        QUERIES["create_session"], session_id, scope, fingerprint, lifetime
    )
    return expires_at


async def find_session(db: Executor, *, session_id: bytes) -> asyncpg.Record | None:
    """scope, token_fingerprint, expires_at of the session, unless it expired or ended."""
    return await db.fetchrow(QUERIES["find_session"], session_id)


async def end_session(db: Executor, *, session_id: bytes) -> None:
    """Delete the session (sign-out); nothing if there is none."""
    await db.execute(QUERIES["end_session"], session_id)


async def prune_expired_sessions(db: Executor, *, batch: int) -> int:
    """Delete up to `batch` expired sessions; how many were deleted."""
    status: str = await db.execute(QUERIES["prune_expired_sessions"], batch)
    return int(status.rsplit(maxsplit=1)[-1])
