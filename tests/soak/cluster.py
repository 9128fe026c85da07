"""The soak's own PostgreSQL and its three `paceline serve` replicas, and the faults done to
them. Nothing here touches any other server: the soak's PostgreSQL is an embedded one in the
soak's directory, on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from pathlib import Path

import aiohttp
import asyncpg

from paceline.db import migrate
from paceline.db.embedded import EmbeddedPostgres
from tests.support import ServeProcess, stop_replica

# The kinds the load submits, each with its limit at the start (window s, N, max_running).
KINDS: dict[str, tuple[float, int, int]] = {
    "default": (0.5, 1, 1),
    "burst": (2.0, 3, 2),
    "slow": (1.0, 2, 2),  # its handlers run up to ~1.8 s: longer than the window
    "flaky": (0.3, 1, 1),
}
HANDLER = "tests.soak.handlers:work"
# The soak's own connections say who they are, so the connection killer spares them.
APPLICATION = "paceline-soak"


def replica_env(dsn: str, run_log: Path) -> dict[str, str]:
    """Settings of every replica: short leases and grace, so faults bite within seconds."""
    return {
        "DATABASE_URL": dsn,
        "PACELINE_HANDLER": HANDLER,
        "PACELINE_HANDLERS": ",".join(f"{kind}={HANDLER}" for kind in KINDS if kind != "default"),
        "PACELINE_RATE_WINDOW": str(KINDS["default"][0]),
        "PACELINE_SOAK_RUN_LOG": str(run_log),
        "PACELINE_LEASE": "3",
        "PACELINE_SHUTDOWN_GRACE": "1",
        "PACELINE_JOB_TIMEOUT": "2.5",
        "PACELINE_MAX_ATTEMPTS": "4",
        "PACELINE_RETRY_BACKOFF": "0.2",
        "PACELINE_CONCURRENCY": "8",
        "PACELINE_IDLE_POLL": "1",
        "PACELINE_LOG_LEVEL": "WARNING",
    }


@dataclasses.dataclass
class Replica:
    """One of the three replica places: the process that serves there now (each restart is a
    new process on a new port) and the /metrics counters of the ones that came before."""

    index: int
    process: ServeProcess
    busy: bool = False  # a fault is being done to it
    frozen: bool = False
    # How many times it was frozen: a request it took before a freeze and answered after the
    # thaw was faulted too (its timers ran out while it was stopped).
    freezes: int = 0
    violations_seen: int = 0  # the auditor counters of its earlier processes, summed

    @property
    def url(self) -> str:
        return self.process.url

    def alive(self) -> bool:
        return self.process.process.poll() is None


class Cluster:
    """PostgreSQL + three replicas under `directory`; `dsn` reaches the soak's database."""

    def __init__(self, directory: Path, replicas: int = 3) -> None:
        self.directory = directory
        self.server = EmbeddedPostgres(directory / "pg")
        self.run_log = directory / "handler-runs.jsonl"
        self.replicas: list[Replica] = []
        self._count = replicas
        self._incarnations = 0
        self.exit_codes: list[tuple[str, int | None]] = []  # (what stopped it, status)
        self.pg_down = False

    @property
    def dsn(self) -> str:
        return self.server.dsn

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)
        await asyncio.to_thread(migrate.upgrade, self.dsn)
        processes = [self._spawn() for _ in range(self._count)]
        await asyncio.gather(*(p.wait_ready() for p in processes))
        self.replicas = [Replica(n, p) for n, p in enumerate(processes)]

    def _spawn(self) -> ServeProcess:
        self._incarnations += 1
        log_path = self.directory / f"replica-{self._incarnations}.log"
        return ServeProcess(replica_env(self.dsn, self.run_log), log_path=log_path)

    def urls(self) -> list[str]:
        """Where requests may go now (replicas being restarted are left out)."""
        return [r.url for r in self.replicas if r.alive() and not r.busy]

    async def restart(self, replica: Replica) -> None:
        """A new process in its place, once the old one is gone; waits until it serves."""
        replica.process = self._spawn()
        await replica.process.wait_ready(timeout=90)

    async def scrape_violations(self, replica: Replica) -> int | None:
        """The replica's auditor counters (window + max_running), or None if it does not
        answer."""
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(
                    f"{replica.url}/metrics", timeout=aiohttp.ClientTimeout(total=5)
                ) as response,
            ):
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        total = 0.0
        for line in text.splitlines():
            if line.startswith(
                ("paceline_window_violations_total", "paceline_running_violations_total")
            ):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    async def remember_violations(self, replica: Replica) -> None:
        """Before a replica's process ends: keep what its auditor counted."""
        seen = await self.scrape_violations(replica)
        replica.violations_seen += seen or 0

    # --- the faults ------------------------------------------------------------------------

    async def kill_9(self, replica: Replica) -> None:
        await asyncio.to_thread(replica.process.kill)  # SIGKILL, then reaps it
        self.exit_codes.append(("kill -9", None))

    async def sigterm(self, replica: Replica) -> int | None:
        code = await asyncio.to_thread(stop_replica, replica.process)
        self.exit_codes.append(("SIGTERM", code))
        return code

    def freeze(self, replica: Replica) -> None:
        os.kill(replica.process.process.pid, signal.SIGSTOP)
        replica.frozen = True
        replica.freezes += 1

    def thaw(self, replica: Replica) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(replica.process.process.pid, signal.SIGCONT)
        replica.frozen = False

    async def stop_pg(self, mode: str) -> None:
        self.pg_down = True
        await asyncio.to_thread(self.server.stop, mode)

    async def start_pg(self) -> None:
        await asyncio.to_thread(self.server.start)
        self.pg_down = False

    async def kill_connections(self, share: float) -> int:
        """pg_terminate_backend of a random `share` of paceline's connections; how many."""
        conn = await self.connect()
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM "
                    "(SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
                    "AND application_name <> $1 AND random() < $2) AS victims",
                    APPLICATION,
                    share,
                )
            )
        finally:
            await conn.close()

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            self.dsn, server_settings={"application_name": APPLICATION}, timeout=5
        )

    async def db_now(self) -> float:
        """The database clock, as UNIX seconds (waits while the server is down)."""
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = await self.connect()
                try:
                    return float(await conn.fetchval("SELECT extract(epoch FROM now())"))
                finally:
                    await conn.close()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def stop(self) -> None:
        """Thaw and SIGTERM every replica (their exit statuses are kept), stop PostgreSQL."""
        for replica in self.replicas:
            self.thaw(replica)
        codes = await asyncio.gather(
            *(asyncio.to_thread(stop_replica, r.process) for r in self.replicas)
        )
        self.exit_codes.extend(("final SIGTERM", code) for code in codes)
        await asyncio.to_thread(self.server.stop)
