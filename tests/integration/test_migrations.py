"""Migrations: every step can be undone and redone, the result is exactly schema.py, replicas
may migrate at once, and `paceline migrate` does it from the command line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from paceline.db import jobs as jobs_store
from paceline.db import migrate
from paceline.db.migrate import MIGRATION_LOCK_KEY, alembic_config
from paceline.db.queries import QUERIES
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


@pytest.mark.one_server(
    "a cluster's schema differs from the metadata by design: the bucket in every key of the "
    "per-key tables, its own listing indexes (citus.sql); test_citus.py checks it"
)
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


@pytest.mark.one_server(
    "it upgrades a plain database beside the cluster's with one server's statements; "
    "test_citus.py upgrades a single-server database into a cluster"
)
async def test_a_database_with_jobs_in_every_status_upgrades_to_kinds_in_place(
    empty_database_url: str,
) -> None:
    """0008 (kinds, payloads, results) on a database in use: every job, window row and attempt
    becomes kind `default`, keeps its state and slot, and the claim still finds the due job;
    rolled back, the jobs are as they were, and a downgrade that would strand other kinds is
    refused."""
    dsn = empty_database_url
    await asyncio.to_thread(migrate.upgrade, dsn, "0007")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            INSERT INTO jobs (object_id, status, run_at, started_at, finished_at, attempts,
                              error, lease_expires_at)
            VALUES (1, 'PENDING', now() - interval '1 second', NULL, NULL, 0, NULL, NULL),
                   (2, 'PROCESSING', now(), now(), NULL, 1, NULL, now() + interval '1 minute'),
                   (3, 'SUCCESS', now(), now(), now(), 1, NULL, NULL),
                   (4, 'FAILED', now(), now(), now(), 3, 'boom', NULL),
                   (5, 'CANCELLED', now() + interval '1 hour', NULL, now(), 0, NULL, NULL);
            INSERT INTO job_attempts (job_id, attempt, object_id, started_at)
            SELECT id, attempts, object_id, started_at FROM jobs WHERE started_at IS NOT NULL;
            INSERT INTO object_slots (object_id, next_slot) VALUES (1, now() + interval '5 min');
            INSERT INTO object_starts (object_id, last_started_at) VALUES (2, now());
            """
        )
        before = await conn.fetch("SELECT id, object_id, status, run_at, attempts FROM jobs")

        await asyncio.to_thread(migrate.upgrade, dsn, "0008")
        after = await conn.fetch(
            "SELECT id, object_id, status, run_at, attempts, kind, payload, result FROM jobs"
        )
        assert sorted(tuple(row)[:5] for row in after) == sorted(tuple(row) for row in before)
        assert {(row["kind"], row["payload"], row["result"]) for row in after} == {
            ("default", None, None)
        }
        assert [tuple(r) for r in await conn.fetch("SELECT kind, object_id FROM object_slots")] == [
            ("default", 1)
        ]
        assert [
            tuple(r) for r in await conn.fetch("SELECT kind, object_id FROM object_starts")
        ] == [("default", 2)]
        assert {row["kind"] for row in await conn.fetch("SELECT kind FROM job_attempts")} == {
            "default"
        }
        # The claim of today's code (it needs the limits of 0009) still finds the due job.
        await asyncio.to_thread(migrate.upgrade, dsn, "head")
        claimed = await conn.fetch(QUERIES["claim_due_jobs"], 10, 30.0, uuid.uuid4(), ["default"])
        assert [(row["object_id"], row["kind"]) for row in claimed] == [(1, "default")]

        await asyncio.to_thread(migrate.downgrade, dsn, "0007")
        assert await conn.fetchval("SELECT count(*) FROM jobs") == len(before)

        await asyncio.to_thread(migrate.upgrade, dsn, "0008")
        await conn.execute("INSERT INTO jobs (kind, object_id, run_at) VALUES ('notify', 1, now())")
    finally:
        await conn.close()
    with pytest.raises(Exception, match="kinds other than default"):
        await asyncio.to_thread(migrate.downgrade, dsn, "0007")
    assert await versions(dsn) == {"0008"}


@pytest.mark.one_server(
    "it upgrades a plain database beside the cluster's with one server's statements; "
    "test_citus.py upgrades a single-server database into a cluster"
)
async def test_a_database_in_use_upgrades_to_limits_keeping_its_window_and_slots(
    empty_database_url: str,
) -> None:
    """0009 (limits in the database) on a database whose replicas planned with a 7.5 s window:
    that window becomes the default kind's limit, the waiting jobs keep their slots, and the
    next plain submit goes a window after the last; a downgrade is refused while limits,
    overrides or scheduled jobs exist that the older code would ignore, and otherwise gives
    the window back to service_state."""
    dsn = empty_database_url
    await asyncio.to_thread(migrate.upgrade, dsn, "0008")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            INSERT INTO service_state (name, value) VALUES ('rate_window', '7.5');
            INSERT INTO jobs (object_id, run_at)
            SELECT 1, now() + n * interval '7.5 seconds' FROM generate_series(0, 2) AS n;
            INSERT INTO object_slots (object_id, next_slot)
            SELECT 1, max(run_at) + interval '7.5 seconds' FROM jobs;
            """
        )
        before = await conn.fetch("SELECT id, run_at FROM jobs ORDER BY id")

        await asyncio.to_thread(migrate.upgrade, dsn, "0009")
        limit = await conn.fetchrow("SELECT * FROM kind_limits WHERE kind = 'default'")
        assert limit is not None, "the stored window became no limit"
        assert (limit["window_seconds"], limit["per_window"], limit["max_running"]) == (7.5, 1, 1)
        assert not limit["paused"]
        assert await conn.fetchval("SELECT count(*) FROM service_state") == 0
        assert await conn.fetch("SELECT id, run_at FROM jobs ORDER BY id") == before
        await asyncio.to_thread(migrate.upgrade, dsn, "head")
        job = await jobs_store.enqueue(conn, kind="default", object_id=1)
        assert job is not None
        assert job["run_at"] == before[-1]["run_at"] + timedelta(seconds=7.5)

        refused = [
            "INSERT INTO key_limits (kind, object_id, per_window) VALUES ('default', 1, 3)",
            "UPDATE kind_limits SET per_window = 2 WHERE kind = 'default'",
            "INSERT INTO kind_limits (kind, max_running) VALUES ('notify', 4)",
            "INSERT INTO jobs (object_id, run_at, not_before) VALUES (2, now(), now())",
        ]
        for change in refused:
            async with conn.transaction():
                await conn.execute(change)
            with pytest.raises(Exception, match="limits, overrides or scheduled jobs exist"):
                await asyncio.to_thread(migrate.downgrade, dsn, "0008")
            assert await versions(dsn) == {head(dsn)}, change
            await conn.execute(
                """
                DELETE FROM key_limits; DELETE FROM kind_limits WHERE kind <> 'default';
                UPDATE kind_limits SET per_window = 1 WHERE kind = 'default';
                DELETE FROM jobs WHERE not_before IS NOT NULL;
                """
            )
        await asyncio.to_thread(migrate.downgrade, dsn, "0008")
        assert await conn.fetchval(
            "SELECT value FROM service_state WHERE name = 'rate_window'"
        ) == str(7.5)
        assert await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'PENDING'") == 4
    finally:
        await conn.close()


async def test_a_database_in_use_upgrades_to_retries_and_payload_search(
    empty_database_url: str,
) -> None:
    """0010 on a database with jobs in every status: every job keeps its state and counts
    none of its attempts as before a retry, the payload index is built (valid), and one a
    failed concurrent build left INVALID is built again; a downgrade is refused while a job
    retried by hand waits or runs (the older code would count its earlier attempts), and
    otherwise removes both."""
    dsn = empty_database_url
    await asyncio.to_thread(migrate.upgrade, dsn, "0009")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            INSERT INTO jobs (object_id, status, run_at, started_at, finished_at, attempts,
                              error, lease_expires_at, payload)
            VALUES (1, 'PENDING', now(), NULL, NULL, 0, NULL, NULL, '{"customer": 42}'),
                   (2, 'PROCESSING', now(), now(), NULL, 1, NULL, now() + interval '1 min',
                    NULL),
                   (3, 'SUCCESS', now(), now(), now(), 1, NULL, NULL, '{"customer": 42}'),
                   (4, 'FAILED', now(), now(), now(), 3, 'boom', NULL, '[1, 2]'),
                   (5, 'CANCELLED', now(), NULL, now(), 0, NULL, NULL, '"text"');
            -- What an operator's CREATE INDEX CONCURRENTLY leaves when it fails: INVALID.
            CREATE INDEX ix_jobs_payload ON jobs USING gin (payload jsonb_path_ops)
                WHERE payload IS NOT NULL;
            UPDATE pg_index SET indisvalid = false
            WHERE indexrelid = 'ix_jobs_payload'::regclass;
            """
        )
        before = await conn.fetch("SELECT * FROM jobs ORDER BY id")

        await asyncio.to_thread(migrate.upgrade, dsn, "0010")
        after = await conn.fetch("SELECT * FROM jobs ORDER BY id")
        assert [dict(row) for row in after] == [
            {**dict(row), "attempts_at_retry": 0} for row in before
        ]
        assert await conn.fetchval(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_jobs_payload'::regclass"
        )
        found = await conn.fetch(
            "SELECT object_id FROM jobs WHERE payload @> '{\"customer\": 42}' ORDER BY 1"
        )
        assert [row["object_id"] for row in found] == [1, 3]

        await conn.execute(
            "UPDATE jobs SET attempts_at_retry = 3, status = 'PENDING', "
            "finished_at = NULL WHERE object_id = 4"
        )
        with pytest.raises(Exception, match="retried by hand are pending or running"):
            await asyncio.to_thread(migrate.downgrade, dsn, "0009")
        assert await versions(dsn) == {"0010"}
        await conn.execute("UPDATE jobs SET status = 'FAILED' WHERE object_id = 4")
        await asyncio.to_thread(migrate.downgrade, dsn, "0009")
        assert await conn.fetchval("SELECT to_regclass('ix_jobs_payload')") is None
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs'"
        )
        assert "attempts_at_retry" not in {row["column_name"] for row in columns}
        assert await conn.fetchval("SELECT count(*) FROM jobs") == len(before)
    finally:
        await conn.close()


async def test_sessions_and_their_key_come_and_go_with_0011(empty_database_url: str) -> None:
    """0011 makes the sessions table and one random fingerprint key, which a second run (every
    replica migrates at start) keeps; a downgrade ends every session and drops the key, and
    upgrading again makes another key."""
    dsn = empty_database_url
    key_of = "SELECT value FROM service_state WHERE name = 'session_key'"
    await asyncio.to_thread(migrate.upgrade, dsn, "0011")
    conn = await asyncpg.connect(dsn)
    try:
        first = await conn.fetchval(key_of)
        assert len(bytes.fromhex(first)) == 32
        await asyncio.to_thread(migrate.upgrade, dsn, "head")
        assert await conn.fetchval(key_of) == first
        await conn.execute(
            "INSERT INTO sessions (id, scope, token_fingerprint, expires_at) "
            "VALUES ('\\x01', 'read', '\\x02', now() + interval '1 hour')"
        )
        await asyncio.to_thread(migrate.downgrade, dsn, "0010")
        assert await conn.fetchval("SELECT to_regclass('sessions')") is None
        assert await conn.fetchval(key_of) is None
        await asyncio.to_thread(migrate.upgrade, dsn, "0011")
        second = await conn.fetchval(key_of)
        assert second != first
    finally:
        await conn.close()
