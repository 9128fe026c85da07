"""Migrations: every step can be undone and redone, the result is exactly schema.py, replicas
may migrate at once, and `paceline migrate` does it from the command line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from paceline.db import migrate
from paceline.db.migrate import MIGRATION_LOCK_KEY, alembic_config
from paceline.db.schema import metadata
from tests.support import ROOT, eventually

T = TypeVar("T")

# What a replica does at startup (`paceline serve` runs this before anything else).
REPLICA = "import sys; from paceline.db.migrate import upgrade; upgrade(sys.argv[1])"

Snapshot = dict[str, list[tuple[Any, ...]]]


def script_directory(dsn: str) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(dsn))


def revisions_oldest_first(dsn: str) -> list[Script]:
    return list(reversed(list(script_directory(dsn).walk_revisions("base", "heads"))))


def head(dsn: str) -> str:
    current = script_directory(dsn).get_current_head()
    assert current is not None
    return current


def down_revisions(revision: Script) -> set[str]:
    down = revision.down_revision
    if down is None:
        return set()
    return {down} if isinstance(down, str) else set(down)


async def versions(dsn: str) -> set[str]:
    """The revisions the database says it is at (empty: at base, or never migrated)."""
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass('alembic_version')") is None:
            return set()
        rows = await conn.fetch("SELECT version_num FROM alembic_version")
        return {row["version_num"] for row in rows}
    finally:
        await conn.close()


async def schema_snapshot(dsn: str) -> Snapshot:
    """The public schema as the catalog describes it, without Alembic's own table."""
    conn = await asyncpg.connect(dsn)
    try:
        queries = {
            "relations": """
                SELECT c.relname, c.relkind FROM pg_class AS c
                WHERE c.relnamespace = 'public'::regnamespace
                  AND c.relname NOT LIKE 'alembic_version%'
                ORDER BY 1""",
            "columns": """
                SELECT table_name, column_name, data_type, is_nullable, column_default,
                       is_identity, identity_generation
                FROM information_schema.columns
                WHERE table_schema = 'public' AND table_name <> 'alembic_version'
                ORDER BY 1, 2""",
            "indexes": """
                SELECT indexname, indexdef FROM pg_indexes
                WHERE schemaname = 'public' AND tablename <> 'alembic_version'
                ORDER BY 1""",
            "constraints": """
                SELECT c.relname, k.conname, pg_get_constraintdef(k.oid)
                FROM pg_constraint AS k JOIN pg_class AS c ON c.oid = k.conrelid
                WHERE k.connamespace = 'public'::regnamespace AND c.relname <> 'alembic_version'
                ORDER BY 1, 2""",
        }
        return {key: [tuple(row) for row in await conn.fetch(sql)] for key, sql in queries.items()}
    finally:
        await conn.close()


async def run_sync(dsn: str, function: Callable[[Connection], T]) -> T:
    """Run `function` on a synchronous SQLAlchemy connection to `dsn`, then commit."""

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(dsn)

    engine = create_async_engine("postgresql+asyncpg://", async_creator=connect, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(function)
    finally:
        await engine.dispose()


async def test_every_migration_downgrades_and_upgrades_again(empty_database_url: str) -> None:
    """Each downgrade undoes exactly its upgrade, so a release can be rolled back and redone."""
    dsn = empty_database_url
    for revision in revisions_oldest_first(dsn):
        before = await schema_snapshot(dsn)
        await asyncio.to_thread(migrate.upgrade, dsn, revision.revision)
        after = await schema_snapshot(dsn)
        assert await versions(dsn) == {revision.revision}

        await asyncio.to_thread(migrate.downgrade, dsn, "-1")
        assert await versions(dsn) == down_revisions(revision)
        assert await schema_snapshot(dsn) == before, f"{revision.revision} downgrade left changes"

        await asyncio.to_thread(migrate.upgrade, dsn, revision.revision)
        assert await versions(dsn) == {revision.revision}
        assert await schema_snapshot(dsn) == after, f"{revision.revision} differs once redone"
    assert await versions(dsn) == {head(dsn)}
    at_head = await schema_snapshot(dsn)

    await asyncio.to_thread(migrate.downgrade, dsn, "base")
    assert await versions(dsn) == set()
    emptied = await schema_snapshot(dsn)
    assert not {name for name, _ in emptied["relations"]} & set(metadata.tables)
    assert emptied == {key: [] for key in at_head}, "downgrade to base left objects behind"

    await asyncio.to_thread(migrate.upgrade, dsn, "head")
    assert await versions(dsn) == {head(dsn)}
    assert await schema_snapshot(dsn) == at_head


async def test_metadata_matches_the_migrations(database_url: str, empty_database_url: str) -> None:
    """schema.py is the real schema: autogenerate proposes nothing; no index or check differs."""
    diff = await run_sync(
        database_url,
        lambda conn: compare_metadata(
            MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            ),
            metadata,
        ),
    )
    assert diff == []

    # Alembic compares neither the WHERE of partial indexes nor CHECK constraints: compare the
    # catalog of a database built from schema.py with that of the migrated one as well.
    await run_sync(empty_database_url, metadata.create_all)
    from_metadata = await schema_snapshot(empty_database_url)
    assert from_metadata["indexes"], "create_all made no indexes"
    assert from_metadata == await schema_snapshot(database_url)


def replica_env() -> dict[str, str]:
    """This environment, without settings of the developer's own paceline."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PACELINE_") and key != "DATABASE_URL"
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


async def start_python(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        env=replica_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def finish(process: asyncio.subprocess.Process, timeout: float = 60.0) -> tuple[int, str]:
    """Wait for a child; returns its exit status and everything it wrote."""
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def test_replicas_migrating_at_once_all_succeed(empty_database_url: str) -> None:
    """Replicas started together all come up: they take turns at the migration lock, not race.

    Separate processes, as replicas are: Alembic keeps its migration context in module globals,
    so two upgrades in threads of one process would corrupt each other whatever the database does.
    """
    dsn = empty_database_url
    gate = await asyncpg.connect(dsn)
    replicas: list[asyncio.subprocess.Process] = []
    try:
        # Hold the migration lock until all four wait for it, so they really start together.
        await gate.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        replicas = [await start_python("-c", REPLICA, dsn) for _ in range(4)]

        async def all_waiting() -> bool:
            for replica in replicas:
                if replica.returncode is not None:
                    code, output = await finish(replica)
                    raise AssertionError(f"a replica finished without the lock ({code}):\n{output}")
            waiting = await gate.fetchval(
                """
                SELECT count(*) FROM pg_locks
                WHERE locktype = 'advisory' AND NOT granted
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND classid = $1 AND objid = $2 AND objsubid = 1
                """,
                MIGRATION_LOCK_KEY >> 32,
                MIGRATION_LOCK_KEY & 0xFFFF_FFFF,
            )
            return bool(waiting == len(replicas))

        await eventually(all_waiting, timeout=60, interval=0.05)
        await gate.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        results = await asyncio.gather(*(finish(replica) for replica in replicas))
    finally:
        await gate.close()
        for replica in replicas:
            if replica.returncode is None:
                replica.kill()
                await replica.wait()
    for code, output in results:
        assert code == 0, output
    assert await versions(dsn) == {head(dsn)}


async def test_migrate_command_brings_the_database_to_head(empty_database_url: str) -> None:
    """`paceline migrate`, a deploy's migration step, exits 0 at head, and again on a rerun."""
    dsn = empty_database_url
    for _ in range(2):
        code, output = await finish(
            await start_python("-m", "paceline", "migrate", "--database-url", dsn)
        )
        assert code == 0, output
        assert await versions(dsn) == {head(dsn)}
