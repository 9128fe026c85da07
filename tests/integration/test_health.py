"""/healthz and /readyz, as a load balancer or a compose health check sees them."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from paceline.db import migrate
from paceline.db.migrate import known_revisions
from tests.conftest import MakeClient

Client = TestClient[Any, Any]


async def problem(client: Client, path: str, status: int) -> dict[str, Any]:
    response = await client.get(path)
    assert response.status == status
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json(content_type=None)
    body["retry_after"] = response.headers.get("Retry-After")
    return body


async def test_alive_and_ready_at_the_newest_migration(client: Client) -> None:
    assert await (await client.get("/healthz")).json() == {"status": "ok"}
    response = await client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {"status": "ready", "migration": known_revisions()[-1]}


@pytest.mark.one_server("it downgrades the schema, and a distributed one cannot go below 0013")
async def test_not_ready_while_a_migration_is_missing(
    make_client: MakeClient, database_url: str
) -> None:
    """A replica of a newer release must not take traffic on a database not yet migrated."""
    await asyncio.to_thread(migrate.downgrade, database_url, "0002")
    client = await make_client(concurrency=0)
    missing = known_revisions()[known_revisions().index("0002") + 1 :]

    body = await problem(client, "/readyz", 503)

    assert body["missing_migrations"] == missing
    assert f"lacks migration {', '.join(missing)} (it is at 0002" in body["detail"]
    assert "paceline migrate" in body["detail"]
    assert body["retry_after"] == "5"
    # Alive all the same: a restart would not help, so the process must not be killed.
    assert (await client.get("/healthz")).status == 200

    await asyncio.to_thread(migrate.upgrade, database_url)
    assert (await client.get("/readyz")).status == 200


async def test_not_ready_on_a_database_never_migrated(
    make_client: MakeClient, empty_database_url: str
) -> None:
    client = await make_client(concurrency=0, database_url=empty_database_url)
    body = await problem(client, "/readyz", 503)
    assert body["missing_migrations"] == known_revisions()
    assert "it is at no migration at all" in body["detail"]


async def test_still_ready_when_a_newer_release_migrated_further(
    client: Client, db: asyncpg.Connection
) -> None:
    """During a rolling deploy the old replicas keep serving: migrations only add."""
    await db.execute("UPDATE alembic_version SET version_num = '9999'")
    response = await client.get("/readyz")
    assert response.status == 200
    assert (await response.json())["migration"] == "9999"


async def test_not_ready_when_the_database_is_unreachable(make_client: MakeClient) -> None:
    client = await make_client(
        concurrency=0, database_url="postgresql://nobody@127.0.0.1:9/paceline", pool_size=2
    )
    body = await problem(client, "/readyz", 503)
    assert "database is unreachable" in body["detail"]
    assert (await client.get("/healthz")).status == 200
