"""Kinds, payloads and the coalescing that keeps data, across real `paceline serve` replicas."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.test_rate_window import assert_window_holds
from tests.support import ServeProcess, all_jobs, wait_until_finished

pytestmark = pytest.mark.processes


def replicas_env(dsn: str, run_log: Path, window: float, **more: str) -> dict[str, str]:
    return {
        "DATABASE_URL": dsn,
        "PACELINE_RATE_WINDOW": str(window),
        "PACELINE_HANDLER": "tests.handlers:echo",
        "PACELINE_HANDLERS": "notify=tests.handlers:shout",
        "PACELINE_TEST_RUN_LOG": str(run_log),
        "PACELINE_CONCURRENCY": "4",
        **more,
    }


async def submit(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with session.post(f"{url}/jobs", json=body) as response:
        assert response.status in (200, 201), await response.text()
        return await response.json()


def received(run_log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run_log.read_text().splitlines()]


async def started(replicas: list[ServeProcess]) -> None:
    await asyncio.gather(*(replica.wait_ready() for replica in replicas))


def stop(replicas: list[ServeProcess]) -> None:
    codes = [replica.terminate() for replica in replicas]
    assert codes == [0] * len(replicas), [replica.log()[-2000:] for replica in replicas]


async def test_two_kinds_on_two_replicas_run_by_their_handlers_with_their_payloads(
    empty_database_url: str, tmp_path: Path
) -> None:
    window = 0.3
    run_log = tmp_path / "received.jsonl"
    env = replicas_env(empty_database_url, run_log, window)
    replicas = [ServeProcess(env, log_path=tmp_path / f"replica{n}.log") for n in (1, 2)]
    try:
        await started(replicas)
        async with aiohttp.ClientSession() as session:
            bodies = [
                {"object_id": n % 3, "payload": {"n": n}}
                if n % 2
                else {"object_id": n % 3, "kind": "notify", "payload": {"text": f"t{n}"}}
                for n in range(24)
            ]
            created = await asyncio.gather(
                *(submit(session, replicas[n % 2].url, body) for n, body in enumerate(bodies))
            )
            rows = await wait_until_finished(empty_database_url, len(bodies), timeout=60)
            answers = await asyncio.gather(
                *(session.get(f"{replicas[0].url}/jobs/{job['id']}") for job in created)
            )
            shown = {(job := await answer.json())["id"]: job for answer in answers}
    finally:
        stop(replicas)
    assert all(row["status"] == "SUCCESS" for row in rows)
    seen = {entry["id"]: entry for entry in received(run_log)}
    assert set(seen) == set(shown)
    for job_id, job in shown.items():
        handler = "shout" if job["kind"] == "notify" else "echo"
        assert seen[job_id]["handler"] == handler
        assert seen[job_id]["payload"] == job["payload"]
        if handler == "shout":
            assert job["result"] == job["payload"]["text"].upper()
        else:
            assert job["result"]["payload"] == job["payload"]
    # The window is per (kind, object): each kind's starts of an object are a window apart...
    for kind in ("default", "notify"):
        assert_window_holds([row for row in rows if row["kind"] == kind], window)
    # ...and one kind does not hold up the other's object of the same id.
    firsts: dict[tuple[str, int], Any] = {}
    for row in sorted(rows, key=lambda row: row["started_at"]):
        firsts.setdefault((row["kind"], row["object_id"]), row["started_at"])
    for object_id in range(3):
        gap = abs(firsts[("default", object_id)] - firsts[("notify", object_id)])
        assert gap.total_seconds() < window


@pytest.mark.parametrize("on_busy", ["replace", "append"])
async def test_fifty_concurrent_requests_across_two_replicas_give_one_job(
    empty_database_url: str, tmp_path: Path, on_busy: str
) -> None:
    # API-only replicas (the worker of a third would start the job while requests arrive:
    # that race is the next test's).
    env = replicas_env(empty_database_url, tmp_path / "unused.jsonl", 60.0)
    env["PACELINE_CONCURRENCY"] = "0"
    replicas = [ServeProcess(env, log_path=tmp_path / f"replica{n}.log") for n in (1, 2)]
    try:
        await started(replicas)
        async with aiohttp.ClientSession() as session:
            answers = await asyncio.gather(
                *(
                    submit(
                        session,
                        replicas[n % 2].url,
                        {"object_id": 5, "on_busy": on_busy, "payload": {"request": n}},
                    )
                    for n in range(50)
                )
            )
    finally:
        stop(replicas)
    rows = await all_jobs(empty_database_url)
    assert len(rows) == 1
    assert {answer["id"] for answer in answers} == {rows[0]["id"]}
    payload = json.loads(rows[0]["payload"])
    if on_busy == "replace":
        assert payload in [{"request": n} for n in range(50)]
    else:
        assert sorted(item["request"] for item in payload) == list(range(50))


async def test_requests_racing_the_start_never_change_a_started_job(
    empty_database_url: str, tmp_path: Path
) -> None:
    """Appends arrive while workers on both replicas keep starting the object's jobs: every
    payload lands in exactly one job, and what each handler received is what the API shows."""
    run_log = tmp_path / "received.jsonl"
    env = replicas_env(empty_database_url, run_log, 0.05, PACELINE_TEST_RUN_SECONDS="0.01")
    replicas = [ServeProcess(env, log_path=tmp_path / f"replica{n}.log") for n in (1, 2)]
    sent = 400
    try:
        await started(replicas)
        async with aiohttp.ClientSession() as session:
            for start in range(0, sent, 20):
                await asyncio.gather(
                    *(
                        submit(
                            session,
                            replicas[n % 2].url,
                            {"object_id": 1, "on_busy": "append", "payload": n},
                        )
                        for n in range(start, start + 20)
                    )
                )
                await asyncio.sleep(0.01)
            rows = await all_jobs(empty_database_url)
            rows = await wait_until_finished(empty_database_url, len(rows), timeout=60)
    finally:
        stop(replicas)
    assert len(rows) > 1, "the workers should have started jobs while requests arrived"
    shown = {row["id"]: json.loads(row["payload"]) for row in rows}
    landed = Counter(item for payload in shown.values() for item in payload)
    assert landed == Counter(range(sent)), "a payload was lost or landed twice"
    seen = {entry["id"]: entry["payload"] for entry in received(run_log)}
    assert seen == shown, "a job changed after its handler received it"
