"""Faults, with real `paceline serve` replicas: kill -9, SIGTERM, a database that stops and
restarts or is not there yet, a replica frozen past its lease.

What a user would notice is asserted: every accepted job ends SUCCESS, none runs twice as the
same attempt, the rate window holds across the fault, processes exit 0 or stay up. Each test
prints its figures (jobs submitted / completed / lost / duplicated, the longest recovery) and
appends them as one line to the file named by $PACELINE_FAULT_REPORT, when that is set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from paceline.db import jobs as store
from paceline.db import migrate
from paceline.db.embedded import EmbeddedPostgres, free_port
from paceline.queue.requeue import requeue
from tests.support import (
    ServeProcess,
    assert_starts_apart,
    claim_due,
    eventually,
    post_job,
    stop_all,
)

pytestmark = pytest.mark.processes

FINAL = ("SUCCESS", "FAILED", "CANCELLED")
# How long the database restart tests keep the server down.
OUTAGE = 3.0


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stopped PostgreSQL data directory, initialised and migrated once; tests copy it."""
    base = tmp_path_factory.mktemp("pg-template")
    server = EmbeddedPostgres(base, port=free_port())
    server.start()
    try:
        migrate.upgrade(server.dsn)
    finally:
        server.stop()
    return base


def own_server(template: Path, data_dir: Path) -> EmbeddedPostgres:
    """A PostgreSQL server of this test's own (not started), on a port nobody uses yet."""
    # cp -a keeps the owner: as root, the server runs as another user.
    subprocess.run(["cp", "-a", str(template), str(data_dir)], check=True)
    return EmbeddedPostgres(data_dir, port=free_port())


def report(test: str, **figures: object) -> None:
    """Print the figures and append them as one line to $PACELINE_FAULT_REPORT, if set."""
    line = f"{test}: " + " ".join(f"{key}={_show(value)}" for key, value in figures.items())
    print(line)
    target = os.environ.get("PACELINE_FAULT_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(line + "\n")


def _show(value: object) -> str:
    return f"{value:.3f}s" if isinstance(value, float) else str(value)


def replica_env(dsn: str, run_log: Path, **settings: object) -> dict[str, str]:
    """Environment of a replica running tests.handlers:record; `settings` are PACELINE_*."""
    env = {
        "DATABASE_URL": dsn,
        "PACELINE_HANDLER": "tests.handlers:record",
        "PACELINE_TEST_RUN_LOG": str(run_log),
    }
    env.update({f"PACELINE_{key.upper()}": str(value) for key, value in settings.items()})
    return env


@pytest.fixture
async def own_pg(pg_template: Path, tmp_path: Path) -> AsyncIterator[EmbeddedPostgres]:
    """This test's own PostgreSQL, migrated, not started yet; stopped when the test ends.

    Request it before `start_replicas`: fixtures end in reverse order, replicas first."""
    server = own_server(pg_template, tmp_path / "pg")
    yield server
    await asyncio.to_thread(server.stop)


StartReplicas = Callable[..., Awaitable[list[ServeProcess]]]


@pytest.fixture
async def start_replicas(tmp_path: Path) -> AsyncIterator[StartReplicas]:
    """`await start_replicas(env, count)`: `count` replicas with the same settings, started
    together; waits until all serve (with `ready=False`, does not wait). A test stops them
    with `stop_all` where it wants their exit statuses; any still running at its end, when it
    failed say, are stopped then."""
    started: list[ServeProcess] = []

    async def start(
        env: dict[str, str], count: int = 1, *, ready: bool = True
    ) -> list[ServeProcess]:
        replicas = [
            ServeProcess(env, log_path=tmp_path / f"replica{len(started) + n}.log")
            for n in range(count)
        ]
        started.extend(replicas)
        if ready:
            await asyncio.gather(*(replica.wait_ready() for replica in replicas))
        return replicas

    yield start
    await stop_all(started)


def read_runs(run_log: Path) -> list[tuple[int, int, int]]:
    """(job id, attempt, pid) of every handler start, from the record handler's log."""
    if not run_log.exists():
        return []
    runs = []
    for line in run_log.read_text().splitlines():
        job_id, attempt, pid = line.split()
        runs.append((int(job_id), int(attempt), int(pid)))
    return runs


def duplicated(runs: Sequence[tuple[int, int, int]]) -> dict[tuple[int, int], int]:
    """(job, attempt) pairs whose handler started more than once, with how often."""
    counts = Counter((job_id, attempt) for job_id, attempt, _pid in runs)
    return {pair: n for pair, n in counts.items() if n > 1}


def run_again(runs: Sequence[tuple[int, int, int]]) -> list[int]:
    """Jobs whose handler started for more than one attempt (an attempt that never reached
    its handler, as when the answer to a claim was lost, does not count)."""
    ran: dict[int, set[int]] = defaultdict(set)
    for job_id, attempt, _pid in runs:
        ran[job_id].add(attempt)
    return sorted(job_id for job_id, attempts in ran.items() if len(attempts) > 1)


async def query(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def attempts_by_job(dsn: str) -> dict[int, list[asyncpg.Record]]:
    """Every row of job_attempts, per job, in attempt order."""
    rows = await query(dsn, "SELECT * FROM job_attempts ORDER BY job_id, attempt")
    grouped: dict[int, list[asyncpg.Record]] = defaultdict(list)
    for row in rows:
        grouped[row["job_id"]].append(row)
    return grouped


async def worker_id_of(dsn: str, replica: ServeProcess) -> uuid.UUID:
    """The worker id a replica registered under (its heartbeat row)."""

    async def probe() -> uuid.UUID | None:
        rows = await query(dsn, "SELECT id FROM workers WHERE pid = $1", replica.process.pid)
        return rows[0]["id"] if rows else None

    return await eventually(probe, timeout=10)


async def wait_all_final(dsn: str, timeout: float) -> list[asyncpg.Record]:
    """Wait until no job is PENDING or PROCESSING; every job row, in id order."""

    async def probe() -> list[asyncpg.Record] | None:
        rows = await query(dsn, "SELECT * FROM jobs ORDER BY id")
        return rows if rows and all(row["status"] in FINAL for row in rows) else None

    return await eventually(probe, timeout=timeout, interval=0.1)


async def first_start(run_log: Path, job_id: int) -> tuple[int, int, int]:
    """The run-log entry of the first attempt of `job_id`, once its handler started."""

    async def probe() -> tuple[int, int, int] | None:
        return next((run for run in read_runs(run_log) if run[:2] == (job_id, 1)), None)

    return await eventually(probe, timeout=15, interval=0.01)


async def until(condition: Callable[[], bool], timeout: float) -> None:
    """`eventually` for a plain condition."""

    async def probe() -> bool:
        return condition()

    await eventually(probe, timeout=timeout)


def by_pid(replicas: Sequence[ServeProcess], pid: int) -> ServeProcess:
    return next(replica for replica in replicas if replica.process.pid == pid)


def assert_spacing(attempts: dict[int, list[asyncpg.Record]], window: float) -> None:
    """I1 over every attempt (lost and released ones too): per object, starts >= W apart."""
    starts: dict[int, list[Any]] = defaultdict(list)
    for rows in attempts.values():
        for row in rows:
            starts[row["object_id"]].append(row["started_at"])
    for object_id, moments in starts.items():
        assert_starts_apart(object_id, moments, window)


# --- 1. kill -9 ------------------------------------------------------------------------------


async def test_kill_9_a_replica_its_running_jobs_run_again_once_elsewhere(
    database_url: str, start_replicas: StartReplicas, tmp_path: Path
) -> None:
    window, lease, objects, per_object = 0.5, 1.5, 6, 4
    run_log = tmp_path / "runs.log"
    env = replica_env(
        database_url,
        run_log,
        rate_window=window,
        lease=lease,
        concurrency=6,
        test_run_seconds=1.5,
    )
    replicas = await start_replicas(env, 2)
    async with aiohttp.ClientSession() as session:
        for n in range(objects * per_object):
            await post_job(session, replicas[n % 2].url, object_id=n % objects)
    worker_ids = {r.process.pid: await worker_id_of(database_url, r) for r in replicas}

    async def busy() -> int | None:
        # A replica in the middle of at least two jobs.
        rows = await query(
            database_url,
            "SELECT worker_id, count(*) AS n FROM jobs WHERE status = 'PROCESSING' "
            "GROUP BY worker_id ORDER BY n DESC",
        )
        pids = {wid: pid for pid, wid in worker_ids.items()}
        return next((pids[r["worker_id"]] for r in rows if r["n"] >= 2), None)

    victim = by_pid(replicas, await eventually(busy, timeout=15))
    survivor = next(r for r in replicas if r is not victim)
    await asyncio.to_thread(victim.kill)
    killed_at = time.time()
    victim_id = worker_ids[victim.process.pid]

    async def victim_sessions_ended() -> bool:
        # A statement the victim sent just before it died still runs to its end (on a Citus
        # cluster a claim is one statement outside a transaction, and commits): what it ran
        # is known once its sessions are gone.
        rows = await query(
            database_url,
            "SELECT 1 FROM pg_stat_activity WHERE application_name = $1",
            f"paceline/{victim.process.pid}",
        )
        return not rows

    await eventually(victim_sessions_ended, timeout=lease / 3)
    # Its leases have ≥ lease·2/3 left: nothing was reaped yet.
    running_at_kill = {
        row["id"]
        for row in await query(
            database_url,
            "SELECT id FROM jobs WHERE status = 'PROCESSING' AND worker_id = $1",
            victim_id,
        )
    }
    rows = await wait_all_final(database_url, timeout=40)
    assert survivor.process.poll() is None, "the survivor died"
    codes = await stop_all(replicas)
    assert codes[replicas.index(survivor)] == 0, survivor.log()[-3000:]

    attempts = await attempts_by_job(database_url)
    runs = read_runs(run_log)
    survivor_id = worker_ids[survivor.process.pid]
    lost = {job_id for job_id, rows_ in attempts.items() if rows_[0]["outcome"] == "LOST"}
    recoveries = []
    assert running_at_kill, "the victim ran nothing when it was killed; the test proved nothing"
    assert lost == running_at_kill, (lost, running_at_kill)
    for job_id in lost:
        first, *rest = attempts[job_id]
        assert first["worker_id"] == victim_id
        assert [(r["attempt"], r["outcome"], r["worker_id"]) for r in rest] == [
            (2, "SUCCESS", survivor_id)
        ], f"job {job_id}: {attempts[job_id]}"
        assert (job_id, 2, survivor.process.pid) in runs
        recoveries.append(rest[0]["started_at"].timestamp() - killed_at)
    for row in rows:
        assert row["status"] == "SUCCESS", dict(row)
        expected = 2 if row["id"] in lost else 1
        assert row["attempts"] == expected, dict(row)
        assert len(attempts[row["id"]]) == expected
    dupes = duplicated(runs)
    assert not dupes, f"(job, attempt) pairs that ran twice: {dupes}"
    assert_spacing(attempts, window)
    report(
        "kill-9",
        submitted=objects * per_object,
        completed=sum(row["status"] == "SUCCESS" for row in rows),
        lost=objects * per_object - sum(row["status"] == "SUCCESS" for row in rows),
        duplicated=len(dupes),
        rerun_after_kill=len(lost),
        longest_recovery=max(recoveries),
    )


# --- 2. SIGTERM ------------------------------------------------------------------------------


async def test_sigterm_with_grace_longer_than_the_job_finishes_it_and_exits_0(
    database_url: str, start_replicas: StartReplicas, tmp_path: Path
) -> None:
    grace, job_seconds = 5.0, 1.5
    run_log = tmp_path / "runs.log"
    env = replica_env(
        database_url,
        run_log,
        rate_window=0.5,
        shutdown_grace=grace,
        test_run_seconds=job_seconds,
    )
    (replica,) = await start_replicas(env)
    async with aiohttp.ClientSession() as session:
        job = await post_job(session, replica.url, object_id=1)
    await first_start(run_log, job["id"])
    sent = time.monotonic()
    code = await asyncio.to_thread(replica.terminate, grace + 10)
    took = time.monotonic() - sent
    assert code == 0, replica.log()[-3000:]
    assert took < grace, f"exit took {took:.2f}s, more than the grace {grace}s"
    assert took > job_seconds / 2, "it exited without waiting for the running job"
    (row,) = await query(database_url, "SELECT * FROM jobs")
    assert (row["status"], row["attempts"]) == ("SUCCESS", 1)
    history = await attempts_by_job(database_url)
    assert [r["outcome"] for r in history[job["id"]]] == ["SUCCESS"]
    report(
        "sigterm-grace",
        submitted=1,
        completed=1,
        lost=0,
        duplicated=len(duplicated(read_runs(run_log))),
        exit_after_sigterm=took,
    )


async def test_sigterm_with_short_grace_releases_the_job_to_another_replica(
    database_url: str, start_replicas: StartReplicas, tmp_path: Path
) -> None:
    grace, window = 0.5, 2.0
    run_log = tmp_path / "runs.log"
    env = replica_env(
        database_url,
        run_log,
        rate_window=window,
        shutdown_grace=grace,
        lease=3,
        test_first_run_seconds=60,
        test_run_seconds=0.2,
    )
    replicas = await start_replicas(env, 2)
    async with aiohttp.ClientSession() as session:
        job = await post_job(session, replicas[0].url, object_id=1)
    _job, _attempt, pid = await first_start(run_log, job["id"])
    stopped = by_pid(replicas, pid)
    other = next(r for r in replicas if r is not stopped)
    other_id = await worker_id_of(database_url, other)
    sent = time.monotonic()
    code = await asyncio.to_thread(stopped.terminate, 20)
    took = time.monotonic() - sent
    (after_exit,) = await query(
        database_url,
        "SELECT status, attempts, run_at, now() < run_at AS early FROM jobs",
    )
    rows = await wait_all_final(database_url, timeout=20)
    assert other.process.poll() is None
    await stop_all(replicas)
    assert code == 0, stopped.log()[-3000:]
    assert took < grace + 3, f"exit took {took:.2f}s after SIGTERM with a {grace}s grace"
    assert "released at shutdown" in stopped.log()
    if after_exit["early"]:  # its new slot had not come yet: nobody may have taken it
        assert (after_exit["status"], after_exit["attempts"]) == ("PENDING", 1), dict(after_exit)
    (row,) = rows
    assert (row["status"], row["attempts"]) == ("SUCCESS", 2), dict(row)
    first, second = (await attempts_by_job(database_url))[job["id"]]
    assert first["outcome"] == "RELEASED"
    assert second["outcome"] == "SUCCESS"
    assert second["worker_id"] == other_id
    gap = (second["started_at"] - first["started_at"]).total_seconds()
    assert gap >= window, f"attempt 2 started {gap:.3f}s after attempt 1, window {window}s"
    runs = read_runs(run_log)
    assert runs == [(job["id"], 1, stopped.process.pid), (job["id"], 2, other.process.pid)]
    assert not await query(database_url, "SELECT id FROM jobs WHERE status = 'PROCESSING'")
    # I5 for a released job: the other replica starts it when its new slot comes.
    late = (second["started_at"] - after_exit["run_at"]).total_seconds()
    report(
        "sigterm-release",
        submitted=1,
        completed=1,
        lost=0,
        duplicated=len(duplicated(runs)),
        exit_after_sigterm=took,
        attempt2_after_attempt1=gap,
        attempt2_late_after_run_at=late,
    )
    assert late < 0.5, f"the released job started {late:.2f}s after its run_at"


# --- 3. the database stops and comes back ----------------------------------------------------


@dataclasses.dataclass
class Load:
    """Clients POSTing jobs in a loop, round robin over the replicas, and what they saw."""

    session: aiohttp.ClientSession
    urls: Sequence[str]
    objects: int
    accepted: list[int] = dataclasses.field(default_factory=list)
    unavailable: int = 0  # 503 problem+json answers
    hung: int = 0  # no answer within the client's timeout
    unexpected: list[str] = dataclasses.field(default_factory=list)  # anything else
    restarted_at: float | None = None  # monotonic: the server accepts connections again
    first_201_after_restart: float | None = None  # seconds after restarted_at
    accepted_after_restart: int = 0
    stopping: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def post_until_stopped(self, client: int, clients: int) -> None:
        n = client
        while not self.stopping.is_set():
            await self._post(n)
            n += clients
            await asyncio.sleep(0.03)

    async def _post(self, n: int) -> None:
        try:
            async with self.session.post(
                f"{self.urls[n % len(self.urls)]}/jobs",
                json={"object_id": n % self.objects},
                timeout=aiohttp.ClientTimeout(total=3),
            ) as response:
                text = await response.text()
                body = json.loads(text) if response.content_type.endswith("json") else {}
                if response.status == 201:
                    self._accepted(body["id"])
                elif (
                    response.status == 503
                    and response.content_type == "application/problem+json"
                    and body.get("status") == 503
                ):
                    self.unavailable += 1
                else:
                    self.unexpected.append(f"{response.status} {response.content_type} {text}")
        except TimeoutError:
            self.hung += 1
        except aiohttp.ClientError as exc:
            self.unexpected.append(repr(exc))

    def assert_answered(self) -> None:
        """Every request got 201, or 503 problem+json (at least one), within the timeout."""
        assert self.unavailable > 0, "no 503 was seen while the database was down"
        assert self.hung == 0, f"{self.hung} request(s) got no answer within 3 s"
        assert not self.unexpected, self.unexpected[:10]

    def _accepted(self, job_id: int) -> None:
        self.accepted.append(job_id)
        if self.restarted_at is not None:
            self.accepted_after_restart += 1
            if self.first_201_after_restart is None:
                self.first_201_after_restart = time.monotonic() - self.restarted_at


@pytest.mark.parametrize(
    ("mode", "lease"),
    [
        # The lease outlasts the ~3 s outage: nothing may be taken back, no handler runs twice.
        ("fast", 12.0),
        ("immediate", 12.0),
        # It does not: running jobs are given up and run again, each time as a new attempt.
        ("immediate", 2.0),
    ],
    ids=["fast", "immediate", "immediate-outlasting-the-lease"],
)
async def test_database_restart_under_load_loses_no_accepted_job(
    mode: str,
    lease: float,
    own_pg: EmbeddedPostgres,
    start_replicas: StartReplicas,
    tmp_path: Path,
) -> None:
    window = 0.2
    run_log = tmp_path / "runs.log"
    await asyncio.to_thread(own_pg.start)  # migrated
    dsn = own_pg.dsn
    env = replica_env(
        dsn, run_log, rate_window=window, lease=lease, concurrency=4, test_run_seconds=0.1
    )
    replicas = await start_replicas(env, 2)
    async with aiohttp.ClientSession() as session:
        load = Load(session, [r.url for r in replicas], objects=20)
        clients = [asyncio.create_task(load.post_until_stopped(n, 2)) for n in range(2)]
        try:
            await until(lambda: len(load.accepted) >= 20 and bool(read_runs(run_log)), 15)
            await asyncio.to_thread(own_pg.stop, mode)
            await asyncio.sleep(OUTAGE)  # the scenario: the database is down for ~3 s
            restart_called = time.time()
            await asyncio.to_thread(own_pg.start)
            restarted = time.time()
            load.restarted_at = time.monotonic()
            await until(lambda: load.accepted_after_restart >= 20, timeout=20)
        finally:
            load.stopping.set()
            await asyncio.gather(*clients)
    rows = await wait_all_final(dsn, timeout=30)
    alive = [r.process.poll() is None for r in replicas]
    attempts = await attempts_by_job(dsn)
    codes = await stop_all(replicas)

    assert (alive, codes) == ([True, True], [0, 0]), [r.log()[-3000:] for r in replicas]
    load.assert_answered()

    status = {row["id"]: row["status"] for row in rows}
    lost = {i: status.get(i, "MISSING") for i in load.accepted if status.get(i) != "SUCCESS"}
    runs = read_runs(run_log)
    dupes = duplicated(runs)
    ran_again = run_again(runs)
    taken_back = sorted(job_id for job_id, rows_ in attempts.items() if len(rows_) > 1)
    starts = [row["started_at"].timestamp() for rows_ in attempts.values() for row in rows_]
    # pg_ctl notices the server is up a moment after it is: a claim may come first (then 0).
    first_start = max(0.0, min(t for t in starts if t > restart_called) - restarted)
    report(
        f"db-restart-{mode}-lease-{lease:g}s",
        submitted=len(load.accepted),
        completed=len(load.accepted) - len(lost),
        lost=len(lost),
        duplicated=len(dupes),
        answered_503=load.unavailable,
        committed_but_unacknowledged=len(set(status) - set(load.accepted)),
        jobs_taken_back=len(taken_back),
        handlers_run_again=len(ran_again),
        recovery_first_201=load.first_201_after_restart,
        recovery_first_job_start=first_start,
        longest_recovery=max(load.first_201_after_restart or 0.0, first_start),
    )
    assert not lost, f"accepted jobs that did not end SUCCESS: {lost}"
    assert not dupes, f"(job, attempt) pairs that ran twice: {dupes}"
    # A lease was last renewed at most lease/3 before the outage and is renewed again at most
    # lease/3 after it: when that fits in the lease, none expires, nothing is taken back, and
    # no handler runs twice (a result that could not be written waits for the database).
    if lease > OUTAGE + 2 * lease / 3:
        assert not ran_again, (
            f"jobs run again although the {lease:g}s lease outlasted the outage: {ran_again}; "
            f"their attempts: {[attempts[job_id] for job_id in ran_again[:3]]}"
        )
        # A fast shutdown lets the answer to every committed claim reach its worker (an
        # immediate one may not): no job may sit PROCESSING, unrun, until its lease ends.
        assert mode != "fast" or not taken_back, (
            f"jobs taken back although the {lease:g}s lease outlasted the outage: "
            f"{[attempts[job_id] for job_id in taken_back[:3]]}"
        )
    assert_spacing(attempts, window)


# --- 4. starting while the database is down --------------------------------------------------


async def test_serve_waits_for_a_database_that_is_not_up_yet(
    own_pg: EmbeddedPostgres, start_replicas: StartReplicas, tmp_path: Path
) -> None:
    run_log = tmp_path / "runs.log"
    dsn = f"postgresql://postgres@127.0.0.1:{own_pg.port}/postgres"
    (replica,) = await start_replicas(replica_env(dsn, run_log, rate_window=0.2), ready=False)

    async def waiting() -> bool:
        assert replica.process.poll() is None, replica.log()
        return "waiting for the database" in replica.log()

    await eventually(waiting, timeout=20)
    pid = replica.process.pid
    await asyncio.to_thread(own_pg.start)
    up = time.monotonic()
    await replica.wait_ready(timeout=30)
    ready_after = time.monotonic() - up
    assert replica.process.pid == pid, "it was restarted"
    assert replica.process.poll() is None
    async with aiohttp.ClientSession() as session:
        job = await post_job(session, replica.url, object_id=1)
    (row,) = await wait_all_final(dsn, timeout=10)
    assert (row["id"], row["status"]) == (job["id"], "SUCCESS")
    codes = await stop_all([replica])
    assert codes == [0], replica.log()[-3000:]
    report(
        "start-without-database",
        submitted=1,
        completed=1,
        lost=0,
        duplicated=len(duplicated(read_runs(run_log))),
        longest_recovery=ready_after,
    )


# --- 5. fencing: a frozen replica's late result --------------------------------------------


@pytest.mark.parametrize(
    ("case", "first_run", "dropped_by"),
    [
        # The handler's sleep ends while the replica is frozen: its result arrives late and
        # the attempt-fenced finish_jobs refuses it.
        pytest.param("late-result", 1.5, "was taken back; result dropped", id="late-result"),
        # Still blocked when it wakes: the lease keeper learns the job is gone and stops it.
        pytest.param(
            "still-running", 60.0, "stopping the handler, it was taken back", id="still-running"
        ),
    ],
)
async def test_a_frozen_replicas_late_result_changes_nothing(  # noqa: PLR0917 - pytest passes them by name
    case: str,
    first_run: float,
    dropped_by: str,
    database_url: str,
    start_replicas: StartReplicas,
    tmp_path: Path,
) -> None:
    lease, window = 1.0, 0.5
    run_log = tmp_path / "runs.log"
    env = replica_env(
        database_url,
        run_log,
        rate_window=window,
        lease=lease,
        test_first_run_seconds=first_run,
        test_run_seconds=0.2,
    )
    replicas = await start_replicas(env, 2)
    async with aiohttp.ClientSession() as session:
        job = await post_job(session, replicas[0].url, object_id=1)
    _job, _attempt, pid = await first_start(run_log, job["id"])
    os.kill(pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    frozen = by_pid(replicas, pid)
    other = next(r for r in replicas if r is not frozen)

    async def done() -> asyncpg.Record | None:
        (row,) = await query(database_url, "SELECT * FROM jobs")
        return row if row["status"] in FINAL else None

    before = await eventually(done, timeout=15)
    history_before = await attempts_by_job(database_url)
    if case == "late-result":
        # Frozen until its handler's sleep is surely over: that is the case's point.
        await asyncio.sleep(max(0.0, first_run + 0.3 - (time.monotonic() - frozen_at)))
    os.kill(pid, signal.SIGCONT)
    frozen_for = time.monotonic() - frozen_at

    async def heard_back() -> bool:
        return dropped_by in frozen.log()

    await eventually(heard_back, timeout=10)
    (after,) = await query(database_url, "SELECT * FROM jobs")
    history_after = await attempts_by_job(database_url)
    frozen_id = await worker_id_of(database_url, frozen)
    other_id = await worker_id_of(database_url, other)
    codes = await stop_all(replicas)
    assert codes == [0, 0], [r.log()[-3000:] for r in replicas]

    assert (before["status"], before["attempts"]) == ("SUCCESS", 2), dict(before)
    assert dict(after) == dict(before), "the frozen replica's late write changed the job"
    assert history_after == history_before
    first, second = history_after[job["id"]]
    assert (first["outcome"], first["worker_id"]) == ("LOST", frozen_id)
    assert (second["outcome"], second["worker_id"]) == ("SUCCESS", other_id)
    assert after["worker_id"] == other_id
    assert after["duration"] < first_run, "the job shows the frozen attempt's result"
    runs = read_runs(run_log)
    assert runs == [(job["id"], 1, frozen.process.pid), (job["id"], 2, other.process.pid)]
    report(
        f"fencing-{case}",
        submitted=1,
        completed=1,
        lost=0,
        duplicated=len(duplicated(runs)),
        frozen_for=frozen_for,
        longest_recovery=(second["started_at"] - first["started_at"]).total_seconds(),
    )


async def test_finish_job_with_an_old_attempt_is_refused_and_changes_nothing(
    db: asyncpg.Connection,
) -> None:
    lease = 30.0
    # W = 1 ms: the re-claim needs no wait.
    await db.execute(
        "INSERT INTO kind_limits (kind, window_seconds, per_window, max_running, paused)"
        " VALUES ('default', 0.001, 1, 1, false)"
    )
    job = await store.enqueue(db, kind="default", object_id=42)
    assert job is not None
    (claimed,) = await claim_due(db, uuid.uuid4(), limit=1, lease=lease)
    assert claimed["attempts"] == 1
    # Attempt 1's replica went silent; the reaper takes the job back, another worker claims it.
    async with db.transaction():
        await requeue(db, job["id"], 1, delay=0.0, error="lost", outcome="LOST")
    await asyncio.sleep(0.01)
    (reclaimed,) = await claim_due(db, uuid.uuid4(), limit=1, lease=lease)
    assert (reclaimed["id"], reclaimed["attempts"]) == (job["id"], 2)

    async def snapshot() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        row = await db.fetchrow("SELECT * FROM jobs WHERE id = $1", job["id"])
        assert row is not None
        history = await db.fetch(
            "SELECT * FROM job_attempts WHERE job_id = $1 ORDER BY attempt", job["id"]
        )
        return dict(row), [dict(r) for r in history]

    async def finish(attempt: int, status: str, seconds: float, error: str | None) -> set[int]:
        return await store.finish_jobs(
            db,
            job_ids=[job["id"]],
            attempts=[attempt],
            statuses=[status],
            durations=[seconds],
            errors=[error],
            results=[None],
        )

    before = await snapshot()
    assert await finish(1, "SUCCESS", 9.0, None) == set()
    assert await snapshot() == before
    # Nor can the stale attempt renew its lease or requeue the job.
    renewed = await store.renew_leases(
        db, job_ids=[job["id"]], attempts=[1], lease=lease, worker_id=before[0]["worker_id"]
    )
    assert renewed == set()
    async with db.transaction():
        assert await requeue(db, job["id"], 1, delay=0, error="x", outcome="RETRY") is None
    assert await snapshot() == before

    # The current attempt finishes; the stale one still cannot overwrite the result.
    assert await finish(2, "SUCCESS", 0.5, None) == {job["id"]}
    done = await snapshot()
    assert await finish(1, "FAILED", 9.0, "late") == set()
    assert await snapshot() == done
    assert (done[0]["status"], done[0]["duration"]) == ("SUCCESS", 0.5)
    assert [(a["attempt"], a["outcome"]) for a in done[1]] == [(1, "LOST"), (2, "SUCCESS")]


async def test_a_migration_whose_session_is_terminated_retries_and_finishes(
    empty_database_url: str,
) -> None:
    """`paceline migrate` (and so a replica starting) whose sessions the server terminates
    mid-migration (pg_terminate_backend, a failover) waits, migrates again and exits 0 with
    the database at the head, instead of exiting 1: the chaos soak saw a replica restarted
    during a connection-killing spell die at its migration."""
    env = {**os.environ, "DATABASE_URL": empty_database_url, "PACELINE_LOG_LEVEL": "WARNING"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "paceline",
        "migrate",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    admin = await asyncpg.connect(empty_database_url)
    terminated = 0
    try:
        # Every session of the migration the moment it appears, a few times over; then let it be.
        while process.returncode is None and terminated < 4:
            terminated += await admin.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await asyncio.sleep(0.02)
        output = (await asyncio.wait_for(process.communicate(), timeout=120))[0].decode()
        version = await admin.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await admin.close()
    assert terminated >= 1
    assert process.returncode == 0, output
    assert "retrying" in output  # it said why it started again
    assert version == migrate.known_revisions()[-1]
