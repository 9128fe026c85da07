"""The dashboard's SQL stays cheap on a large history: no query the page, /metrics or the auditor
runs may scan `jobs` or `job_attempts` whole. Plans are checked on a database of 60,000 jobs
(and as many attempts), analyzed, as a service that has run for two days would have."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import asyncpg
import pytest

from paceline.db.queries import QUERIES
from paceline.observability.audit import RUNNING_LOOKBACK
from paceline.observability.overview import (
    COUNT_CAP,
    FAILURES_SHOWN,
    KINDS_SHOWN,
    LIMITS_COUNT_CAP,
    MINUTES,
    OVERRIDES_SHOWN,
    PAUSED_SHOWN,
)
from paceline.observability.timeline import RUNS_SHOWN, WAITING_CAP, WAITING_SHOWN
from tests.conftest import _admin, with_database
from tests.integration.test_sql import PlanNode, explain, summary

HISTORY = 60_000  # started jobs, one every 3 s over 50 hours, on HISTORY_OBJECTS objects
HISTORY_OBJECTS = 1_000
PENDING = 2_000  # half past their slot
BUSY_OBJECT = 7
WINDOW = 300.0
OVERRIDES = 20_000  # per-object limits, half of each kind
PAUSED_KEYS = 100  # of them paused


async def _seed(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"""
            INSERT INTO jobs (object_id, status, created_at, run_at, started_at, finished_at,
                              duration, attempts, error, lease_expires_at)
            SELECT g % {HISTORY_OBJECTS},
                   CASE WHEN g % 50 = 0 THEN 'FAILED' WHEN g % 500 = 1 THEN 'CANCELLED'
                        WHEN g > {HISTORY} - 20 THEN 'PROCESSING' ELSE 'SUCCESS' END,
                   t, t, t,
                   CASE WHEN g <= {HISTORY} - 20 THEN t + interval '1 second' END,
                   1.0, 1, CASE WHEN g % 50 = 0 THEN 'RuntimeError: boom' END,
                   CASE WHEN g > {HISTORY} - 20 AND g % 50 <> 0 AND g % 500 <> 1
                        THEN now() + interval '30 seconds' END
            FROM generate_series(1, {HISTORY}) AS g,
                 LATERAL (SELECT now() - make_interval(secs => ({HISTORY} - g) * 3) AS t) AS at;
            INSERT INTO job_attempts (job_id, attempt, object_id, started_at, finished_at,
                                      outcome, error)
            SELECT id, 1, object_id, started_at, finished_at,
                   CASE WHEN status = 'PROCESSING' THEN NULL ELSE status END, error
            FROM jobs;
            INSERT INTO jobs (object_id, created_at, run_at)
            SELECT {HISTORY_OBJECTS} + g % 700, now() - interval '1 hour',
                   now() + make_interval(secs => g - {PENDING} / 2)
            FROM generate_series(1, {PENDING}) AS g;
            INSERT INTO object_starts (object_id, last_started_at)
            SELECT object_id, max(started_at) FROM jobs WHERE started_at IS NOT NULL GROUP BY 1;
            INSERT INTO object_slots (object_id, next_slot)
            SELECT object_id, max(run_at) + interval '5 minutes' FROM jobs GROUP BY 1;
            INSERT INTO workers (id, host, pid, concurrency, running, kinds)
            SELECT gen_random_uuid(), 'web-' || g, g, 8, 4, ARRAY['default', 'notify']
            FROM generate_series(1, 3) AS g;
            INSERT INTO kind_limits (kind, window_seconds, per_window, max_running)
            VALUES ('default', {WINDOW}, 1, 1), ('notify', 60, 5, 2);
            INSERT INTO key_limits (kind, object_id, per_window, paused)
            SELECT CASE WHEN g % 2 = 0 THEN 'default' ELSE 'notify' END, g, 2,
                   g <= {PAUSED_KEYS}
            FROM generate_series(1, {OVERRIDES}) AS g;
            ANALYZE;
            """
        )
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def history_url(server_dsn: str, template_database: str, citus_cluster: bool) -> Iterator[str]:
    """A migrated database with a large history, built once for this module."""
    if citus_cluster:
        pytest.skip(
            "not on a Citus cluster: these are one server's plans, and a coordinator cannot "
            "clone a database (test_citus.py checks the cluster's statements and their plans)"
        )
    name = f"paceline_plans_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(server_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
    try:
        url = with_database(server_dsn, name)
        asyncio.run(_seed(url))
        yield url
    finally:
        asyncio.run(_admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def history(history_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(history_url)
    yield conn
    await conn.close()


def assert_no_full_scan(nodes: list[PlanNode]) -> None:
    """Neither big table is read whole."""
    for table in ("jobs", "job_attempts"):
        assert PlanNode("Seq Scan", table, None) not in nodes, nodes


def indexes(nodes: list[PlanNode]) -> set[str]:
    return {node.index_name for node in nodes if node.index_name}


def tables(nodes: list[PlanNode]) -> set[str]:
    return {node.relation_name for node in nodes if node.relation_name}


async def test_live_counts_read_only_pending_and_running_jobs(
    history: asyncpg.Connection,
) -> None:
    plan = await explain(history, "overview_counts", COUNT_CAP)
    nodes = summary(plan)
    assert_no_full_scan(nodes)
    # Partial indexes that hold only pending or running jobs, or the (status, id) index
    # entered at one status: each count reads that status's entries, never the history's.
    pending_only = {"ix_jobs_due", "ix_jobs_pending_id"}
    assert indexes(nodes) & pending_only, nodes
    assert indexes(nodes) <= pending_only | {"ix_jobs_lease", "ix_jobs_status_id"}, nodes
    for node in plan:
        if node.get("Index Name") == "ix_jobs_status_id":
            assert node["Index Cond"].startswith("(status = "), node


async def test_the_first_slot_is_the_first_entry_of_the_due_index(
    history: asyncpg.Connection,
) -> None:
    nodes = summary(await explain(history, "overview_first_due"))
    assert_no_full_scan(nodes)
    assert indexes(nodes) == {"ix_jobs_due"}, nodes


async def test_the_oldest_wait_is_found_by_status_not_by_walking_the_history(
    history: asyncpg.Connection,
) -> None:
    """ORDER BY id LIMIT 1 could walk the primary key through 60,000 finished jobs before
    the first pending one; the partial index of pending ids goes straight to it."""
    nodes = summary(await explain(history, "overview_oldest_pending"))
    assert_no_full_scan(nodes)
    assert indexes(nodes) == {"ix_jobs_pending_id"}, nodes


@pytest.mark.parametrize("name", ["overview_table_estimates", "overview_live_rows"])
async def test_all_time_totals_read_only_the_catalog(
    history: asyncpg.Connection, name: str
) -> None:
    nodes = summary(await explain(history, name))
    assert not tables(nodes) & {"jobs", "job_attempts"}, nodes


async def test_estimates_are_close_to_the_truth(history: asyncpg.Connection) -> None:
    rows = await history.fetch(QUERIES["overview_table_estimates"])
    assert {row["live_rows"] for row in rows} == {HISTORY + PENDING}
    shares = {row["status"]: row["share"] for row in rows}
    assert shares["SUCCESS"] == pytest.approx(0.94, abs=0.03)
    assert shares["FAILED"] == pytest.approx(0.02, abs=0.01)


async def test_the_last_minutes_read_only_recently_finished_jobs(
    history: asyncpg.Connection,
) -> None:
    nodes = summary(await explain(history, "overview_finished_per_minute", MINUTES))
    assert_no_full_scan(nodes)
    assert indexes(nodes) == {"ix_jobs_finished"}, nodes


async def test_recent_failures_skip_the_successes(history: asyncpg.Connection) -> None:
    nodes = summary(await explain(history, "overview_recent_failures", FAILURES_SHOWN))
    assert_no_full_scan(nodes)
    assert indexes(nodes) == {"ix_jobs_status_id"}, nodes


async def test_replicas_read_only_the_workers_table(history: asyncpg.Connection) -> None:
    nodes = summary(await explain(history, "replicas", 15.0))
    assert tables(nodes) == {"workers"}, nodes


async def test_the_limits_read_only_the_first_overrides_and_the_paused_keys(
    history: asyncpg.Connection,
) -> None:
    for name, args, index in (
        ("overview_kind_limits", (LIMITS_COUNT_CAP, KINDS_SHOWN), "pk_key_limits"),
        ("overview_overrides", (OVERRIDES_SHOWN,), "pk_key_limits"),
        ("overview_paused_keys", (PAUSED_SHOWN, LIMITS_COUNT_CAP), "ix_key_limits_paused"),
    ):
        nodes = summary(await explain(history, name, *args))
        assert_no_full_scan(nodes)
        assert PlanNode("Seq Scan", "key_limits", None) not in nodes, (name, nodes)
        assert index in indexes(nodes), (name, nodes)
    rows = await history.fetch(QUERIES["overview_kind_limits"], LIMITS_COUNT_CAP, KINDS_SHOWN)
    assert [(row["kind"], row["overrides"], row["paused_keys"]) for row in rows] == [
        ("default", OVERRIDES // 2, PAUSED_KEYS // 2),
        ("notify", OVERRIDES // 2, PAUSED_KEYS // 2),
    ]


async def test_timeline_reads_are_probes_of_one_object(history: asyncpg.Connection) -> None:
    windows = summary(await explain(history, "timeline_windows", "default", BUSY_OBJECT, 300.0, 1))
    assert indexes(windows) == {"pk_object_starts", "pk_object_slots"}, windows
    for name, args in (
        ("timeline_waiting", ("default", HISTORY_OBJECTS + 1, WAITING_SHOWN)),
        ("timeline_waiting_count", ("default", HISTORY_OBJECTS + 1, WAITING_CAP)),
    ):
        nodes = summary(await explain(history, name, *args))
        assert_no_full_scan(nodes)
        assert indexes(nodes) == {"ix_jobs_pending_kind_object_id_run_at_id"}, (name, nodes)
    history_reads: list[tuple[str, tuple[object, ...]]] = [
        ("timeline_runs", ("default", BUSY_OBJECT, RUNS_SHOWN * 2)),
        ("timeline_window_starts", ("default", BUSY_OBJECT, 300.0, 3)),
    ]
    for read, read_args in history_reads:
        nodes = summary(await explain(history, read, *read_args))
        assert_no_full_scan(nodes)
        assert "ix_job_attempts_kind_object_id_started_at" in indexes(nodes), (read, nodes)
    # The key's limit and its running jobs (the limits' own queries, read by the timeline).
    limit = summary(await explain(history, "key_limit", "default", BUSY_OBJECT))
    assert indexes(limit) <= {"pk_kind_limits", "pk_key_limits"}, limit
    running = summary(await explain(history, "running_jobs_of_key", "default", BUSY_OBJECT))
    assert_no_full_scan(running)
    assert indexes(running) == {"ix_jobs_running_kind_object_id"}, running


async def test_the_audit_reads_only_the_newest_starts(history: asyncpg.Connection) -> None:
    now = await history.fetchval("SELECT now()")
    nodes = summary(
        await explain(history, "audit_starts", now - timedelta(seconds=15), now, RUNNING_LOOKBACK)
    )
    assert_no_full_scan(nodes)
    assert {
        "ix_job_attempts_started_at",
        "ix_job_attempts_kind_object_id_started_at",
    } <= indexes(nodes), nodes


async def test_the_pages_new_reads_stay_small(history: asyncpg.Connection) -> None:
    """The job page (a job's attempts, the job ahead of it), the chart of the last hour and
    the longest backlogs: index ranges, never the history."""
    now = await history.fetchval("SELECT now()")
    pending_key = ("default", HISTORY_OBJECTS + 1)
    reads: list[tuple[str, tuple[object, ...], set[str]]] = [
        ("job_attempts", (HISTORY // 2,), {"pk_job_attempts"}),
        ("job_ahead", (*pending_key, now, 10**9), {"ix_jobs_pending_kind_object_id_run_at_id"}),
        ("finished_per_kind", (60, 5), {"ix_jobs_finished"}),
        # Any index of pending jobs only.
        ("busiest_keys", (10, 100_000), {"ix_jobs_pending_id", "ix_jobs_due"}),
    ]
    for name, args, wanted in reads:
        nodes = summary(await explain(history, name, *args))
        assert_no_full_scan(nodes)
        assert indexes(nodes) & wanted, (name, nodes)
