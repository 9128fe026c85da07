"""The worker's parts on a real database, each by itself: the completion writer, the lease
keeper, the LISTEN side of wake-ups."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

import asyncpg
import pytest
from yarl import URL

from paceline.db.pool import create_pool
from paceline.db.queries import QUERIES
from paceline.queue.completions import CompletionWriter
from paceline.queue.jobs import Job, NewJob, Status, enqueue_batch
from paceline.queue.leases import LeaseKeeper
from paceline.queue.running import JobState, RunningJobs
from paceline.queue.wakeup import CHANNEL, DueListener
from tests.support import claim_due, eventually


async def claim(
    pool: asyncpg.Pool, worker_id: uuid.UUID, objects: list[int], lease: float
) -> list[Job]:
    await pool.execute(
        QUERIES["heartbeat"], worker_id, socket.gethostname(), os.getpid(), 4, 0, ["default"]
    )
    await enqueue_batch(pool, [NewJob(object_id) for object_id in objects])
    records = await claim_due(pool, worker_id, limit=len(objects), lease=lease)
    assert len(records) == len(objects)
    return [Job.from_record(record) for record in records]


async def unreachable(database_url: str) -> asyncpg.Pool:
    """A pool whose every connection attempt is refused, as in an outage."""
    dead = await asyncpg.create_pool(
        str(URL(database_url).with_port(1)), min_size=0, max_size=1, timeout=0.5
    )
    assert dead is not None
    return dead


async def block() -> None:
    await asyncio.Event().wait()


async def test_the_completion_writer_records_each_attempt_once(pool: asyncpg.Pool) -> None:
    one, two = await claim(pool, uuid.uuid4(), [1, 2], lease=30)
    writer = CompletionWriter(pool, lease=30, row_lock=asyncio.Lock())
    writer.start()
    try:
        written = await asyncio.gather(
            writer.finish(one, Status.SUCCESS, 0.25, None),
            writer.finish(two, Status.FAILED, 0.5, "ValueError: boom"),
        )
        assert list(written) == [True, True]
        # Fenced: the same attempt again (a lost lease, a duplicate) writes nothing.
        assert await writer.finish(one, Status.FAILED, 1.0, "late") is False
    finally:
        writer.stop()
        await asyncio.wait_for(writer.wait(), 5)
    rows = {r["id"]: r for r in await pool.fetch("SELECT id, status, error FROM jobs")}
    assert [(rows[job.id]["status"], rows[job.id]["error"]) for job in (one, two)] == [
        ("SUCCESS", None),
        ("FAILED", "ValueError: boom"),
    ]


async def test_the_completion_writer_gives_up_past_the_lease_on_an_outage(
    pool: asyncpg.Pool, database_url: str
) -> None:
    [job] = await claim(pool, uuid.uuid4(), [1], lease=30)
    # A pool that cannot reach the server: every write fails as an outage.
    dead = await unreachable(database_url)
    writer = CompletionWriter(dead, lease=0.3, row_lock=asyncio.Lock())
    writer.start()
    started = time.monotonic()
    try:
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(writer.finish(job, Status.SUCCESS, 0.1, None), 10)
    finally:
        writer.stop()
        await writer.wait()
        await dead.close()
    assert time.monotonic() - started >= 0.3
    assert await pool.fetchval("SELECT status FROM jobs") == "PROCESSING"


async def test_the_lease_keeper_renews_and_abandons_a_job_taken_back(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    worker_id = uuid.uuid4()
    kept, taken = await claim(pool, worker_id, [1, 2], lease=0.9)
    running = RunningJobs(concurrency=4, max_unwritten=10)
    for job in (kept, taken):
        running.add(job, asyncio.ensure_future(block()), time.monotonic() + 0.9)
        running.started(job.id)
    before = await pool.fetchval("SELECT lease_expires_at FROM jobs WHERE id = $1", kept.id)
    # Another replica's reaper took the second job back.
    await pool.execute("UPDATE jobs SET worker_id = NULL WHERE id = $1", taken.id)
    keeper = LeaseKeeper(
        pool,
        running,
        worker_id=worker_id,
        concurrency=4,
        kinds=["default"],
        lease=0.9,
        row_lock=asyncio.Lock(),
    )
    with caplog.at_level(logging.WARNING, "paceline.queue.leases"):
        keeper.start()

        async def beaten() -> bool:
            # The first round renews, then beats the heart.
            beat = await pool.fetchval("SELECT running FROM workers WHERE id = $1", worker_id)
            return bool(beat == 2)

        await eventually(beaten, timeout=10)
        await keeper.cancel()
    after = await pool.fetchval("SELECT lease_expires_at FROM jobs WHERE id = $1", kept.id)
    assert after > before
    states = {entry.job.id: entry.state for entry in running}
    assert states == {kept.id: JobState.RUNNING, taken.id: JobState.LOST}
    lost = running.get(taken.id)
    assert lost is not None
    await asyncio.gather(lost.task, return_exceptions=True)
    assert lost.task.cancelled()
    assert any("it was taken back" in r.getMessage() for r in caplog.records)
    for entry in running:
        entry.task.cancel()


async def test_the_lease_keeper_abandons_expired_leases_when_the_database_is_gone(
    pool: asyncpg.Pool, database_url: str
) -> None:
    [job] = await claim(pool, uuid.uuid4(), [1], lease=30)
    running = RunningJobs(concurrency=4, max_unwritten=10)
    running.add(job, asyncio.ensure_future(block()), time.monotonic() - 1)  # already past
    dead = await unreachable(database_url)
    keeper = LeaseKeeper(
        dead,
        running,
        worker_id=uuid.uuid4(),
        concurrency=4,
        kinds=["default"],
        lease=0.6,
        row_lock=asyncio.Lock(),
    )
    keeper.start()
    try:
        [entry] = list(running)

        async def lost() -> bool:
            return entry.state is JobState.LOST

        await eventually(lost, timeout=5)
    finally:
        await keeper.cancel()
        await dead.close()
        for entry in running:
            entry.task.cancel()


async def test_the_listener_hands_over_notifications_and_stops_promptly(
    pool: asyncpg.Pool, database_url: str
) -> None:
    due: list[float] = []
    connected = asyncio.Event()
    listener = DueListener(database_url, due.append, connected.set, keepalive=0.2)
    listener.start()
    try:
        await asyncio.wait_for(connected.wait(), 10)
        await pool.execute("SELECT pg_notify($1, $2)", CHANNEL, "1.5")
        await pool.execute("SELECT pg_notify($1, $2)", CHANNEL, "not a number")

        async def both() -> bool:
            return len(due) >= 2

        await eventually(both, timeout=5)
        assert due == [1.5, 0.0]
    finally:
        listener.stop()
        started = time.monotonic()
        await asyncio.wait_for(listener.wait(), 5)
    assert time.monotonic() - started < 1


async def test_the_listener_reconnects_when_its_connection_is_killed(
    pool: asyncpg.Pool, database_url: str
) -> None:
    connects = 0
    reconnected = asyncio.Event()

    def on_connect() -> None:
        nonlocal connects
        connects += 1
        if connects == 2:
            reconnected.set()

    listener = DueListener(database_url, lambda _s: None, on_connect, keepalive=0.2)
    listener.start()
    try:

        async def connected() -> bool:
            return connects >= 1

        await eventually(connected, timeout=10)
        await pool.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        await asyncio.wait_for(reconnected.wait(), 10)
    finally:
        listener.stop()
        await asyncio.wait_for(listener.wait(), 5)


async def test_the_pools_sessions_name_their_replica_and_learn_built_in_types_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator looking at pg_stat_activity sees which replica holds a session; and a new
    connection's first statement with an array does not ask the catalog about it again (on a
    Citus node that query took 0.5-0.9 s, so every new connection's first claim was late)."""
    asked: list[frozenset[int]] = []
    learn = asyncpg.Connection._introspect_types  # type: ignore[attr-defined]

    async def counted(self: asyncpg.Connection, typeoids: list[int], timeout: object) -> object:
        asked.append(frozenset(typeoids))
        return await learn(self, typeoids, timeout)

    monkeypatch.setattr(asyncpg.Connection, "_introspect_types", counted)
    pool = await create_pool(database_url, 2)
    try:
        async with pool.acquire() as first, pool.acquire() as second:
            # Opening them, the process learnt the array types of paceline's statements, at
            # most once (not at all if an earlier test's pool did).
            assert sum(1016 in oids for oids in asked) <= 1  # bigint[]
            learnt = len(asked)
            # macaddr[]: a built-in type asyncpg has no codec of its own for, used nowhere else.
            statement = (
                "SELECT ARRAY['08:00:2b:01:02:03'::macaddr] AS a, application_name "
                "FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            )
            for conn in (first, second):
                row = await conn.fetchrow(statement)
                assert row is not None
                assert row["application_name"] == f"paceline/{os.getpid()}"
    finally:
        await pool.close()
    assert asked[learnt:] == [frozenset({1040})]  # macaddr[]'s OID, by the first connection only
