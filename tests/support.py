"""Helpers the tests share: a real `paceline serve` process, and waiting on conditions."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient

from paceline.client import PacelineClient
from paceline.db import jobs as store
from paceline.db.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 20.0, interval: float = 0.02
) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


def assert_starts_apart(
    object_id: int, starts: Iterable[datetime], window: float, *, per_window: int = 1
) -> None:
    """I1' for one object: no `window` seconds hold more than `per_window` of its starts (for
    N = 1: its starts, in time order, are at least `window` seconds apart)."""
    ordered = sorted(starts)
    for earlier, later in zip(ordered, ordered[per_window:], strict=False):
        assert later - earlier >= timedelta(seconds=window), (
            f"object {object_id}: starts {earlier} and {later} are {later - earlier} apart, "
            f"{per_window + 1} starts in less than W = {window}s"
        )


def gaps(times: Iterable[datetime]) -> list[timedelta]:
    """The distances between consecutive instants, in the order given."""
    return [later - earlier for earlier, later in itertools.pairwise(times)]


async def all_jobs(dsn: str) -> list[asyncpg.Record]:
    """Every job row, in id order."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("SELECT * FROM jobs ORDER BY id")
    finally:
        await conn.close()


async def wait_until_finished(
    dsn: str,
    count: int,
    timeout: float = 30.0,
    *,
    ended: tuple[str, ...] = ("SUCCESS", "FAILED"),
) -> list[asyncpg.Record]:
    """Wait until `count` jobs exist and each is in one of the `ended` states; return them."""

    async def probe() -> list[asyncpg.Record] | None:
        rows = await all_jobs(dsn)
        done = len(rows) == count and all(r["status"] in ended for r in rows)
        return rows if done else None

    return await eventually(probe, timeout=timeout, interval=0.1)


def parse_time(value: str) -> datetime:
    """A time as the API writes it: ISO 8601 in UTC with a `Z`."""
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value)


async def post(client: TestClient[Any, Any], object_id: int, **fields: Any) -> dict[str, Any]:
    """Create a job through an in-process app's API (`fields`: more of the body, such as
    `not_before`); it must be accepted (201)."""
    response = await client.post("/jobs", json={"object_id": object_id, **fields})
    assert response.status == 201, await response.text()
    job: dict[str, Any] = await response.json()
    return job


async def claim_due(
    db: asyncpg.Connection | asyncpg.Pool, worker_id: uuid.UUID, *, limit: int, lease: float
) -> list[asyncpg.Record]:
    """Claim up to `limit` due jobs of kind `default` as a worker would, on one server or a
    cluster. On a cluster the claim visits the shards the last next-due query found due: ask
    it first, as the worker does when it wakes."""
    await store.seconds_until_next_due(db, kinds=["default"])
    return await store.claim_due_jobs(
        db, limit=limit, lease=lease, worker_id=worker_id, kinds=["default"]
    )


async def attempts_of(db: asyncpg.Connection, job_id: int) -> list[asyncpg.Record]:
    """Every attempt of a job, in order."""
    return await db.fetch("SELECT * FROM job_attempts WHERE job_id = $1 ORDER BY attempt", job_id)


class ServeProcess:
    """`python -m paceline serve` in a child process, as a user (or a replica) runs it."""

    def __init__(self, env: Mapping[str, str], *, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        child_env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("PACELINE_") and key != "DATABASE_URL"
        }
        child_env.update(env)
        child_env["PACELINE_PORT"] = str(self.port)
        child_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), child_env.get("PYTHONPATH", "")])
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "paceline", "serve"],
            env=child_env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until `/healthz` answers (the app is up, migrations are done)."""

        async def probe() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"paceline exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(
                        f"{self.url}/healthz", timeout=aiohttp.ClientTimeout(total=1)
                    ) as response,
                ):
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(probe, timeout=timeout, interval=0.1)

    def terminate(self, timeout: float = 40.0) -> int:
        """SIGTERM, as an orchestrator stops it; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL: the replica dies without a word."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")


def stop_replica(replica: ServeProcess) -> int | None:
    """Resume (if frozen) and SIGTERM; SIGKILL if it does not exit. Its exit status."""
    with contextlib.suppress(ProcessLookupError):
        if replica.process.poll() is None:
            os.kill(replica.process.pid, signal.SIGCONT)
    try:
        return replica.terminate(timeout=20)
    except subprocess.TimeoutExpired:
        replica.kill()
        return None


async def stop_all(replicas: Iterable[ServeProcess]) -> list[int | None]:
    """Stop every replica (for `finally`); their exit statuses."""
    return list(await asyncio.gather(*(asyncio.to_thread(stop_replica, r) for r in replicas)))


async def post_job(session: aiohttp.ClientSession, base_url: str, object_id: int) -> dict[str, Any]:
    """Submit a job through paceline's own client and return it as the API showed it."""
    async with PacelineClient(base_url, session=session) as paceline:
        job = await paceline.submit(object_id)
    return dict(job.raw)
