"""Logs of a served process: a line per job transition carrying the job, its object and the
attempt, and a batch as one line; JSON on request."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from paceline.client import Job, PacelineClient
from tests.support import ServeProcess, post_job, wait_until_finished


@pytest.mark.processes
async def test_a_served_job_can_be_followed_through_json_logs(
    database_url: str, tmp_path: Path
) -> None:
    server = ServeProcess(
        {
            "DATABASE_URL": database_url,
            "PACELINE_LOG_FORMAT": "json",
            "PACELINE_HANDLER": "noop",
            "PACELINE_CONCURRENCY": "1",
        },
        log_path=tmp_path / "serve.log",
    )
    try:
        await server.wait_ready()
        async with aiohttp.ClientSession() as session:
            job = await post_job(session, server.url, object_id=31)
        await wait_until_finished(database_url, 1)
    finally:
        status = server.terminate()
    assert status == 0, server.log()

    lines = [json.loads(line) for line in server.log().splitlines()]  # every line is JSON
    transitions: list[dict[str, Any]] = [line for line in lines if line.get("job_id") == job["id"]]
    messages = [line["message"] for line in transitions]
    assert messages[0] == f"job {job['id']} (object 31) enqueued, slot {job['run_at']}"
    assert messages[1] == f"job {job['id']} (object 31) started, attempt 1"
    assert re.fullmatch(rf"job {job['id']} \(object 31\) succeeded in \d+\.\d{{3}}s", messages[2])
    assert [line["attempt"] for line in transitions] == [0, 1, 1]
    assert {line["object_id"] for line in transitions} == {31}
    assert {line["kind"] for line in transitions} == {"default"}


@pytest.mark.processes
async def test_a_batch_is_one_line_at_info_and_a_line_per_job_at_debug(
    database_url: str, tmp_path: Path
) -> None:
    async def batch_lines(level: str) -> tuple[list[Job], list[dict[str, Any]]]:
        server = ServeProcess(
            {
                "DATABASE_URL": database_url,
                "PACELINE_LOG_FORMAT": "json",
                "PACELINE_LOG_LEVEL": level,
                "PACELINE_CONCURRENCY": "0",
            },
            log_path=tmp_path / f"serve-{level}.log",
        )
        try:
            await server.wait_ready()
            async with PacelineClient(server.url) as paceline:
                created = await paceline.submit_batch([40, 41, 40])
        finally:
            assert server.terminate() == 0, server.log()
        lines = [json.loads(line) for line in server.log().splitlines()]
        return created, [line for line in lines if "job_id" in line or "job_count" in line]

    created, lines = await batch_lines("INFO")
    ids = [job.id for job in created]
    (summary,) = lines  # three jobs, one line
    assert (summary["job_count"], summary["first_job_id"], summary["last_job_id"]) == (
        3,
        ids[0],
        ids[-1],
    )
    assert summary["message"].startswith(f"3 jobs (2 objects) enqueued in one batch, job {ids[0]}")

    created, lines = await batch_lines("DEBUG")
    per_job = [line for line in lines if "job_id" in line]
    assert [line["job_id"] for line in per_job] == [job.id for job in created]
    assert [line["object_id"] for line in per_job] == [40, 41, 40]
