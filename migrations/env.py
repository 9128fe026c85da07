"""Alembic environment: async (asyncpg, the driver paceline already uses), one transaction
per run, serialized across replicas by an advisory lock taken before anything is read."""

from __future__ import annotations

import asyncio
import os

import asyncpg
from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from paceline.db.migrate import MIGRATION_LOCK_KEY
from paceline.db.schema import metadata

config = context.config


def _dsn() -> str:
    dsn = config.attributes.get("dsn") or os.environ.get("DATABASE_URL")
    if not dsn:
        raise SystemExit("set DATABASE_URL (or use `paceline migrate --database-url ...`)")
    return str(dsn)


def _run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        # Released at commit. A second replica waits here, then finds the schema at head.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


async def _run_online() -> None:
    dsn = _dsn()

    # Connect with asyncpg's own DSN parsing, so every URL the service accepts works here too.
    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(dsn)

    engine = create_async_engine("postgresql+asyncpg://", async_creator=connect, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url="postgresql://", target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
