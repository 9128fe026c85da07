"""Limits in the database, across real `paceline serve` replicas: changed with the CLI as an
operator does, obeyed by every replica's workers and API at once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.process.test_kinds_processes import started, stop
from tests.support import (
    ROOT,
    ServeProcess,
    all_jobs,
    assert_starts_apart,
    eventually,
    gaps,
    parse_time,
    post_job,
    wait_until_finished,
)

pytestmark = pytest.mark.processes

# How late a worker on this shared 2-core machine may start a due job, at worst.
JITTER = timedelta(milliseconds=250)
# How far apart two claims' transactions (their start stamps) may begin and commit, at worst.
CLAIM_OVERLAP = timedelta(milliseconds=100)


def limits_cli(dsn: str, *args: str) -> str:
    """`paceline limits ...` as an operator runs it; its output."""
    result = subprocess.run(
        [sys.executable, "-m", "paceline", "limits", *args, "--database-url", dsn],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def recording_env(dsn: str, run_log: Path, window: float, **more: str) -> dict[str, str]:
    return {
        "DATABASE_URL": dsn,
        "PACELINE_RATE_WINDOW": str(window),
        "PACELINE_HANDLER": "tests.handlers:record",
        "PACELINE_TEST_RUN_LOG": str(run_log),
        "PACELINE_TEST_RUN_SECONDS": "0.05",
        "PACELINE_CONCURRENCY": "4",
        **more,
    }


async def get_job(session: aiohttp.ClientSession, base_url: str, job_id: int) -> Any:
    async with session.get(f"{base_url}/jobs/{job_id}") as response:
        assert response.status == 200
        return await response.json()


async def test_three_per_window_across_two_replicas_come_in_triples_and_start_so(
    empty_database_url: str, tmp_path: Path
) -> None:
    dsn, window = empty_database_url, timedelta(seconds=1)
    run_log = tmp_path / "runs.log"
    env = recording_env(dsn, run_log, 1.0)
    replicas = [ServeProcess(env, log_path=tmp_path / f"replica{n}.log") for n in (1, 2)]
    try:
        await started(replicas)
        assert "3 per 1s, 3 running at once" in limits_cli(
            dsn, "set", "default", "--window", "1", "--limit", "3", "--max-running", "3"
        )
        async with aiohttp.ClientSession() as session:
            created = await asyncio.gather(
                *(post_job(session, replicas[n % 2].url, object_id=1) for n in range(30))
            )
        rows = await wait_until_finished(dsn, 30, timeout=60)
    finally:
        stop(replicas)

    # The slots each request got, in slot order: three at once (the burst's first three, each
    # at its own arrival), and every later one a window after the one three before. Not always
    # exactly: the workers start jobs while requests still arrive, and a start a moment after
    # its slot counts from when it happened (the requests after it are planned around it).
    promised = sorted((parse_time(job["run_at"]), job["id"]) for job in created)
    slots = [slot for slot, _ in promised]
    assert slots[2] - slots[0] < window
    for earlier, later in zip(slots, slots[3:], strict=False):
        assert window <= later - earlier < window + JITTER, (earlier, later)
    # What ran: each job once, never more than 3 starts in any second, in slot order, never
    # before its slot.
    assert all(row["status"] == "SUCCESS" and row["attempts"] == 1 for row in rows)
    assert set(Counter(line.split()[0] for line in run_log.read_text().splitlines()).values()) == {
        1
    }
    starts = {row["id"]: row["started_at"] for row in rows}
    assert_starts_apart(1, starts.values(), 1.0, per_window=3)
    # In slot order. A start is stamped with its claim's transaction time, and two replicas'
    # claims may overlap by a round trip: one stamped a moment earlier can commit just after.
    in_slot_order = [starts[job_id] for _, job_id in promised]
    for position, start in enumerate(in_slot_order):
        assert start >= max(in_slot_order[: position + 1]) - CLAIM_OVERLAP, (
            f"job {promised[position][1]} started out of slot order"
        )
    assert all(row["started_at"] >= row["run_at"] for row in rows)


async def test_a_limit_change_moves_waiting_slots_on_every_replica_at_once(
    empty_database_url: str, tmp_path: Path
) -> None:
    dsn = empty_database_url
    run_log = tmp_path / "runs.log"
    # One replica serves the API only, the other runs the jobs; neither makes the change.
    api = ServeProcess(
        recording_env(dsn, run_log, 60.0, PACELINE_CONCURRENCY="0"), log_path=tmp_path / "api.log"
    )
    worker = ServeProcess(recording_env(dsn, run_log, 60.0), log_path=tmp_path / "worker.log")
    try:
        await started([api, worker])
        async with aiohttp.ClientSession() as session:
            jobs = [await post_job(session, api.url, object_id=5) for _ in range(3)]
            waiting = [parse_time(job["run_at"]) for job in jobs[1:]]

            async def first_done() -> bool:
                job = await get_job(session, api.url, jobs[0]["id"])
                return bool(job["status"] == "SUCCESS")

            await eventually(first_done, timeout=10)
            # The dry run moves nothing anywhere.
            assert "would move 2 pending job(s)" in limits_cli(
                dsn, "set", "default", "--window", "1", "--dry-run"
            )
            assert [
                parse_time((await get_job(session, api.url, job["id"]))["run_at"])
                for job in jobs[1:]
            ] == waiting
            assert "moved 2 pending job(s)" in limits_cli(dsn, "set", "default", "--window", "1")

            async def moved_up() -> list[Any] | None:
                shown = [await get_job(session, api.url, job["id"]) for job in jobs[1:]]
                ok = all(parse_time(job["run_at"]) < waiting[0] for job in shown)
                return shown if ok else None

            # The API replica reads the new slots at once.
            await eventually(moved_up, timeout=1.0)
        rows = await wait_until_finished(dsn, 3, timeout=20)
        conn = await asyncpg.connect(dsn)
        try:
            changed = await conn.fetchval(
                "SELECT updated_at FROM kind_limits WHERE kind = 'default'"
            )
        finally:
            await conn.close()
    finally:
        stop([api, worker])
    # The worker replica, asleep until the old slot a minute away, started them on the new
    # ones (the first of them due already when the change was made): woken by the change,
    # not by its next poll (5 s) or the old slot.
    for row in rows[1:]:
        assert row["run_at"] < waiting[0] - timedelta(seconds=50)
        assert row["started_at"] >= row["run_at"]
        due = max(row["run_at"], changed)
        assert row["started_at"] - due < timedelta(seconds=1), (row["started_at"], due)
    assert_starts_apart(5, [row["started_at"] for row in rows], 1.0)


async def test_replicas_with_different_rate_windows_agree_on_the_database_limit(
    empty_database_url: str, tmp_path: Path
) -> None:
    dsn = empty_database_url

    def replica(window: str, name: str) -> ServeProcess:
        env = {"DATABASE_URL": dsn, "PACELINE_RATE_WINDOW": window, "PACELINE_CONCURRENCY": "0"}
        return ServeProcess(env, log_path=tmp_path / f"{name}.log")

    # The first seeds the fresh database's limit; the second, started later, finds it there.
    first = replica("1", "first")
    replicas = [first]
    try:
        await started(replicas)
        second = replica("5", "second")
        replicas.append(second)
        await started(replicas)
        async with aiohttp.ClientSession() as session:
            created = [
                await post_job(session, (first, second)[n % 2].url, object_id=3) for n in range(6)
            ]
    finally:
        stop(replicas)
    slots = [parse_time(job["run_at"]) for job in created]
    assert gaps(slots) == [timedelta(seconds=1)] * 5
    assert "the database's default limit has a window of 1s" in second.log()
    assert "default: 1 per 1s" in limits_cli(dsn, "show", "default")
    assert len(await all_jobs(dsn)) == 6
