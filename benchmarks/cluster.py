"""The run's own PostgreSQL: an embedded server, a migrated template, a fresh clone per measurement.

Server settings are PostgreSQL's defaults (fsync and synchronous_commit on) except those in
SERVER_SETTINGS, each raised modestly for a reason given there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from benchmarks import procs
from paceline.db.embedded import EmbeddedPostgres

SERVER_SETTINGS = {
    # Two replicas' pools and listeners, pgbench at 64 clients, the harness.
    "max_connections": "200",
    # The scale scenario's 6M-row table and its indexes stay mostly in memory (default 128MB).
    "shared_buffers": "256MB",
    # Per-statement counts and times, to report the statements each job costs (~1% overhead).
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track_planning": "off",
}
TEMPLATE = "bench_template"


class Cluster:
    """One embedded PostgreSQL server for the whole run."""

    def __init__(self, workdir: Path) -> None:
        self.server = EmbeddedPostgres(workdir / "postgres", server_settings=SERVER_SETTINGS)
        self.workdir = workdir

    @property
    def port(self) -> int:
        """The server's TCP port on 127.0.0.1."""
        assert self.server.port is not None
        return self.server.port

    @property
    def postmaster_pid(self) -> int:
        """The postmaster's pid; its children are the backends."""
        pid = self.server.pid
        assert pid is not None, "the benchmark's PostgreSQL is not running"
        return pid

    def url(self, database: str = "postgres") -> str:
        """Superuser URL of one database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def start(self) -> None:
        """Start the server and migrate the template the scenarios clone."""
        await asyncio.to_thread(self.server.start)
        await self.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"', f'CREATE DATABASE "{TEMPLATE}"')
        await migrate(self.url(TEMPLATE))
        await self.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", database=TEMPLATE)
        await self.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    async def stop(self) -> None:
        """Stop the server (fast shutdown)."""
        await asyncio.to_thread(self.server.stop)

    async def execute(self, *statements: str, database: str = "postgres") -> None:
        """Run statements one by one, each in its own transaction."""
        conn = await asyncpg.connect(self.url(database))
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def database(self, name: str) -> AsyncIterator[str]:
        """A fresh clone of the migrated template, dropped afterwards; yields its URL."""
        await self.execute(
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"',
        )
        try:
            yield self.url(name)
        finally:
            await self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def backend_cpu(self) -> dict[int, float]:
        """CPU seconds so far of every server process, by pid."""
        pids = [self.postmaster_pid, *procs.children_of(self.postmaster_pid)]
        return {pid: procs.cpu_seconds(pid) for pid in pids}


async def migrate(url: str) -> None:
    """`python -m paceline migrate`, as an operator would run it."""
    env = {**os.environ, "DATABASE_URL": url}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "paceline",
        "migrate",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"paceline migrate failed:\n{output.decode(errors='replace')}")
