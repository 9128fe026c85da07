"""Real `paceline serve` processes, as users and orchestrators run them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.integration.test_rate_window import assert_window_holds
from tests.support import (
    ROOT,
    ServeProcess,
    all_jobs,
    eventually,
    post_job,
    wait_until_finished,
)

pytestmark = pytest.mark.processes


async def test_two_replicas_run_every_job_exactly_once_with_spacing(
    empty_database_url: str, tmp_path: Path
) -> None:
    window = 0.5
    run_log = tmp_path / "runs.log"
    env = {
        "DATABASE_URL": empty_database_url,
        "PACELINE_RATE_WINDOW": str(window),
        "PACELINE_HANDLER": "tests.handlers:record",
        "PACELINE_TEST_RUN_LOG": str(run_log),
        "PACELINE_TEST_RUN_SECONDS": "0.02",
        "PACELINE_CONCURRENCY": "4",
    }
    # Both start on an empty database at once: they migrate one after the other.
    replicas = [ServeProcess(env, log_path=tmp_path / f"replica{n}.log") for n in (1, 2)]
    try:
        await asyncio.gather(*(replica.wait_ready() for replica in replicas))
        objects, per_object = 20, 15
        async with aiohttp.ClientSession() as session:
            created = await asyncio.gather(
                *(
                    post_job(session, replicas[n % 2].url, object_id=n % objects)
                    for n in range(objects * per_object)
                )
            )
        assert len({job["id"] for job in created}) == objects * per_object
        rows = await wait_until_finished(empty_database_url, objects * per_object, timeout=60)
    finally:
        codes = [replica.terminate() for replica in replicas]
    assert codes == [0, 0], [replica.log()[-2000:] for replica in replicas]

    assert all(row["status"] == "SUCCESS" and row["attempts"] == 1 for row in rows)
    runs = [line.split() for line in run_log.read_text().splitlines()]
    per_job = Counter(int(job_id) for job_id, _attempt, _pid in runs)
    assert set(per_job) == {row["id"] for row in rows}
    assert set(per_job.values()) == {1}, "a job ran more than once"
    assert len({pid for _job, _attempt, pid in runs}) == 2, "both replicas should have worked"
    assert_window_holds(rows, window)


async def test_embedded_database_keeps_jobs_across_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {"PACELINE_DATA_DIR": str(data_dir), "PACELINE_CONCURRENCY": "0"}
    first = ServeProcess(env, log_path=tmp_path / "first.log")
    try:
        await first.wait_ready()
        async with aiohttp.ClientSession() as session:
            job = await post_job(session, first.url, object_id=3)
    finally:
        assert first.terminate() == 0, first.log()
    # The embedded server stopped with the process that started it.
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()

    second = ServeProcess(env, log_path=tmp_path / "second.log")
    try:
        await second.wait_ready()
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{second.url}/jobs/{job['id']}") as response,
        ):
            assert response.status == 200
            assert await response.json() == job
    finally:
        assert second.terminate() == 0, second.log()


async def test_sigterm_lets_the_running_job_finish_and_exits_0(
    database_url: str, tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "PACELINE_HANDLER": "sleep",
        "PACELINE_SLEEP_SECONDS": "1",
    }
    replica = ServeProcess(env, log_path=tmp_path / "serve.log")
    try:
        await replica.wait_ready()
        async with aiohttp.ClientSession() as session:
            await post_job(session, replica.url, object_id=1)

        async def processing() -> bool:
            return [row["status"] for row in await all_jobs(database_url)] == ["PROCESSING"]

        await eventually(processing, timeout=10)
    finally:
        code = await asyncio.to_thread(replica.terminate)
    assert code == 0, replica.log()
    assert [row["status"] for row in await all_jobs(database_url)] == ["SUCCESS"]


def test_cli_help_names_the_commands_and_flags() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "paceline", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    for flag in ("--database-url", "--host", "--port", "--concurrency"):
        assert flag in result.stdout


def test_bad_configuration_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "paceline", "serve"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PACELINE_RATE_WINDOW": "soon"},
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert "PACELINE_RATE_WINDOW='soon' is not a valid float" in result.stderr
    assert "Traceback" not in result.stderr
