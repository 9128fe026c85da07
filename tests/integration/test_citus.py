"""paceline on a Citus cluster: `paceline migrate` distributes the per-key tables, once, also on a
database that held jobs before it had the extension; and a key's statements reach one shard.

These need a Citus coordinator as TEST_DATABASE_URL (`make test-citus`); elsewhere (CI) they
skip, saying how to run them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from paceline.db import citus, migrate
from paceline.db import jobs as store
from paceline.db.queries import QUERIES, for_citus
from tests.conftest import with_database

HOW_TO_RUN = (
    "needs a Citus cluster: build one from a Citus source tree with "
    "`CITUS_SRC=<tree> scripts/citus build` (once), then run `make test-citus`"
)
PER_KEY_TABLES = {"jobs", "job_attempts", "object_slots", "object_starts"}


def test_cluster_markers_turn_into_sql_only_on_a_cluster() -> None:
    """One text, two statements: a `-- citus:` line adds its SQL on a cluster, a
    `-- citus-instead:` line replaces its own, and one server reads both as comments."""
    text = (
        "SELECT id FROM jobs\n"
        "WHERE kind = $1  -- citus: AND bucket = paceline_bucket($1, $2)\n"
        "  -- citus-instead: AND bucket = ANY ($3)\n"
        "LIMIT 1"
    )
    assert for_citus(text) == (
        "SELECT id FROM jobs\n"
        "WHERE kind = $1 AND bucket = paceline_bucket($1, $2)\n"
        "  AND bucket = ANY ($3)\n"
        "LIMIT 1"
    )


@pytest.fixture
def cluster(citus_cluster: bool) -> None:
    if not citus_cluster:
        pytest.skip(HOW_TO_RUN)


async def _fetchval(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


@pytest.fixture
async def fresh_cluster_database(server_dsn: str, cluster: None) -> AsyncIterator[str]:
    """A new database on every node of the cluster, without the citus extension yet: what a
    single-server paceline database is before it moves to the cluster."""
    name = f"paceline_citus_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_dsn)
    # Citus makes the database on every node (it then needs the extension made in each).
    await admin.execute("SET citus.enable_create_database_propagation = on")
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_dsn, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _join_cluster(dsn: str, coordinator_dsn: str) -> None:
    """Make the database at `dsn` a Citus coordinator with the session cluster's workers."""
    admin = await asyncpg.connect(coordinator_dsn)
    nodes = await admin.fetch("SELECT nodename, nodeport FROM pg_dist_node WHERE groupid <> 0")
    coordinator = await admin.fetchrow(
        "SELECT nodename, nodeport FROM pg_dist_node WHERE groupid = 0"
    )
    assert coordinator is not None
    await admin.close()
    name = dsn.rsplit("/", 1)[1]
    for node in nodes:
        worker = await asyncpg.connect(
            host=node["nodename"], port=node["nodeport"], user="postgres", database=name
        )
        await worker.execute("CREATE EXTENSION IF NOT EXISTS citus")
        await worker.close()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
        await conn.execute(
            "SELECT citus_set_coordinator_host($1, $2)",
            coordinator["nodename"],
            coordinator["nodeport"],
        )
        for node in nodes:
            await conn.execute("SELECT citus_add_node($1, $2)", node["nodename"], node["nodeport"])
    finally:
        await conn.close()


@pytest.mark.usefixtures("cluster")
async def test_migrate_distributes_a_single_server_database_once_keeping_its_jobs(
    fresh_cluster_database: str, server_dsn: str
) -> None:
    """A database migrated and filled as one server, then given the citus extension: the next
    `paceline migrate` distributes its per-key tables co-located on `bucket` (the limits as
    reference tables), every job kept and findable on its key's shard; a second run changes
    nothing."""
    dsn = fresh_cluster_database
    await asyncio.to_thread(migrate.upgrade, dsn)
    conn = await asyncpg.connect(dsn)
    try:
        # Rows as one server leaves them: no bucket.
        await conn.execute(
            "INSERT INTO kind_limits (kind, window_seconds, per_window, max_running)"
            " VALUES ('default', 300, 1, 1)"
        )
        for object_id in (1, 2, 2, 3):
            await conn.execute(
                "INSERT INTO object_slots (kind, object_id, next_slot)"
                " VALUES ('default', $1, now()) ON CONFLICT DO NOTHING",
                object_id,
            )
            await conn.execute(
                "INSERT INTO jobs (kind, object_id, run_at) VALUES ('default', $1, now())",
                object_id,
            )
    finally:
        await conn.close()

    await _join_cluster(dsn, server_dsn)
    await asyncio.to_thread(migrate.upgrade, dsn)
    await asyncio.to_thread(migrate.upgrade, dsn)  # idempotent

    conn = await asyncpg.connect(dsn)
    try:
        tables = {
            row["table_name"]: row
            for row in await conn.fetch(
                "SELECT table_name::text, citus_table_type, distribution_column, colocation_id"
                " FROM citus_tables"
            )
        }
        assert {
            name for name, row in tables.items() if row["citus_table_type"] == "distributed"
        } == (PER_KEY_TABLES)
        assert {tables[name]["distribution_column"] for name in PER_KEY_TABLES} == {"bucket"}
        assert len({tables[name]["colocation_id"] for name in PER_KEY_TABLES}) == 1
        assert tables["kind_limits"]["citus_table_type"] == "reference"
        assert tables["key_limits"]["citus_table_type"] == "reference"
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 4
        assert await conn.fetchval("SELECT count(*) FROM jobs WHERE bucket IS NULL") == 0
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE bucket = paceline_bucket('default', 2)"
                " AND kind = 'default' AND object_id = 2"
            )
            == 2
        )
        plan = "\n".join(
            row[0]
            for row in await conn.fetch(
                "EXPLAIN SELECT id FROM jobs WHERE kind = 'default' AND object_id = 2"
                " AND bucket = paceline_bucket('default', 2)"
            )
        )
        assert "Task Count: 1" in plan
    finally:
        await conn.close()


@pytest.mark.usefixtures("cluster")
async def test_a_cluster_in_use_upgrades_past_0015_keeping_its_keys_on_the_one_statement(
    fresh_cluster_database: str, server_dsn: str
) -> None:
    """A cluster distributed by a release before migration 0015 (here: down to 0014 after its
    distribution, which also runs that downgrade on distributed tables) upgrades in place: a
    key's open slot row, as the old code left it, is marked as worked out under its kind's
    limit, the new SQL function reaches every worker, and the key's next job is the one
    statement's, a window after its last. (Both steps failed at first on a cluster: a function
    command after a parallel multi-shard UPDATE, and a parameterized paceline_limit call.)"""
    dsn = fresh_cluster_database
    await _join_cluster(dsn, server_dsn)
    await asyncio.to_thread(migrate.upgrade, dsn)
    await asyncio.to_thread(migrate.downgrade, dsn, "0014")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO kind_limits (kind, window_seconds, per_window, max_running)"
            " VALUES ('default', 300, 1, 1)"
        )
        last = await conn.fetchval("SELECT date_trunc('second', now()) + interval '1 minute'")
        await conn.execute(
            "INSERT INTO object_slots (bucket, kind, object_id, next_slot)"
            " VALUES (paceline_bucket('default', 7), 'default', 7, $1)",
            last + timedelta(minutes=5),
        )
    finally:
        await conn.close()

    await asyncio.to_thread(migrate.upgrade, dsn)

    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT window_seconds, per_window FROM object_slots WHERE object_id = 7"
        )
        assert row is not None
        assert (row["window_seconds"], row["per_window"]) == (300.0, 1)
        on_workers = await conn.fetch(
            "SELECT result FROM run_command_on_workers("
            "$$SELECT count(*) FROM pg_proc WHERE proname = 'paceline_next_slots'$$)"
        )
        assert [found["result"] for found in on_workers] == ["1"] * len(on_workers)
        assert await citus.detect(conn), "the upgraded database is a cluster"
        job = await store.enqueue(conn, kind="default", object_id=7)
        assert job is not None, "left to the planner"
        assert job["run_at"] == last + timedelta(minutes=5)
    finally:
        await conn.close()


@pytest.mark.usefixtures("cluster")
async def test_a_keys_enqueue_and_claim_each_run_on_one_worker(database_url: str) -> None:
    """The hot path's calls are delegated whole to the worker holding the key's shard: the
    coordinator's plan of each is one task on one node."""
    assert QUERIES.citus
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO kind_limits (kind, window_seconds, per_window, max_running)"
            " VALUES ('default', 0.1, 1, 1)"
        )
        job = await store.enqueue(conn, kind="default", object_id=7)
        assert job is not None
        for sql in (
            "EXPLAIN SELECT * FROM paceline_enqueue(paceline_bucket('default', 8), 'default', 8,"
            " NULL, NULL)",
            "EXPLAIN SELECT * FROM paceline_claim(paceline_bucket('default', 7),"
            " ARRAY[paceline_bucket('default', 7)], 1, 30,"
            " '00000000-0000-0000-0000-000000000000', '{default}')",
        ):
            plan = "\n".join(row[0] for row in await conn.fetch(sql))
            assert "Task Count: 1" in plan, plan
        # A claim visits the shards the last next-due query found due.
        await store.seconds_until_next_due(conn, kinds=["default"])
        claimed = await store.claim_due_jobs(
            conn, limit=5, lease=30, worker_id=uuid.uuid4(), kinds=["default"]
        )
        assert [row["id"] for row in claimed] == [job["id"]]
    finally:
        await conn.close()


@pytest.mark.usefixtures("cluster")
async def test_a_workers_outcomes_and_lease_renewals_each_reach_one_shard(
    database_url: str,
) -> None:
    """The claim tells the worker each job's bucket, and the statements that renew the leases
    and record the outcomes of a shard's jobs run on that shard alone (before, every shard ran
    each of them, in a distributed transaction)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO kind_limits (kind, window_seconds, per_window, max_running)"
            " VALUES ('default', 0.1, 1, 1)"
        )
        made = [await store.enqueue(conn, kind="default", object_id=n) for n in range(1, 21)]
        worker = uuid.uuid4()
        await store.seconds_until_next_due(conn, kinds=["default"])
        claimed = await store.claim_due_jobs(
            conn, limit=50, lease=30, worker_id=worker, kinds=["default"]
        )
        assert sorted(row["id"] for row in claimed) == sorted(job["id"] for job in made if job)
        buckets = await conn.fetch(
            "SELECT id, paceline_bucket(kind, object_id) AS bucket FROM jobs"
        )
        assert {row["id"]: row["bucket"] for row in claimed} == {
            row["id"]: row["bucket"] for row in buckets
        }
        # Each shard's statement is one task on one node.
        (shard, *_) = await conn.fetch(QUERIES["citus_shard_buckets"])
        for name, args in (
            ("renew_leases", ([1], [1], 30.0, worker, shard["buckets"])),
            ("finish_jobs", ([1], [1], ["SUCCESS"], [0.1], [None], [None], shard["buckets"])),
        ):
            plan = await conn.fetch(f"EXPLAIN {QUERIES[name]}", *args)
            assert "Task Count: 1" in "\n".join(row[0] for row in plan), name
        ids = [row["id"] for row in claimed]
        attempts = [row["attempts"] for row in claimed]
        known = [row["bucket"] for row in claimed]
        renewed = await store.renew_leases(
            conn, job_ids=ids, attempts=attempts, lease=30, worker_id=worker, buckets=known
        )
        assert renewed == set(ids)
        recorded = await store.finish_jobs(
            conn,
            job_ids=ids,
            attempts=attempts,
            statuses=["SUCCESS"] * len(ids),
            durations=[0.1] * len(ids),
            errors=[None] * len(ids),
            results=[None] * len(ids),
            buckets=known,
        )
        assert recorded == set(ids)
        outcomes = await conn.fetch("SELECT DISTINCT outcome FROM job_attempts")
        assert [row["outcome"] for row in outcomes] == ["SUCCESS"]
    finally:
        await conn.close()


@pytest.mark.usefixtures("cluster")
async def test_the_group_commit_enqueues_each_shards_jobs_on_its_worker(
    database_url: str,
) -> None:
    """Concurrent POSTs grouped into one batch are separate requests: on a cluster each shard's
    jobs go in one call delegated to that shard's worker (which runs it there), not in one
    distributed transaction run from the coordinator, as a batch request's must be."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert pool is not None
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO kind_limits (kind, window_seconds, per_window, max_running)"
            " VALUES ('default', 60, 1, 1)"
        )
        nodes = [
            f"postgresql://postgres@{row['nodename']}:{row['nodeport']}/postgres"
            for row in await conn.fetch(
                "SELECT nodename, nodeport FROM pg_dist_node WHERE groupid > 0"
            )
        ]

        async def delegated_calls() -> int:
            # The batch function's calls each worker ran itself.
            total = 0
            for node in nodes:
                worker = await asyncpg.connect(node)
                try:
                    total += await worker.fetchval(
                        "SELECT coalesce(sum(calls), 0)::int FROM pg_stat_statements"
                        " WHERE query LIKE '%paceline_enqueue_batch(%'"
                    )
                finally:
                    await worker.close()
            return total

        objects = [*range(1, 21), 3]  # object 3 twice: its second job a window after its first
        shards = {
            row["shard"]
            for row in await conn.fetch(
                "SELECT get_shard_id_for_distribution_column('jobs', paceline_bucket('default', o))"
                " AS shard FROM unnest($1::bigint[]) AS o",
                objects,
            )
        }
        before = await delegated_calls()
        grouped = await store.enqueue_batch(
            pool,
            kinds=["default"] * len(objects),
            object_ids=objects,
            payloads=[None] * len(objects),
            independent=True,
        )
        assert [row["object_id"] for row in grouped] == objects
        assert grouped[-1]["run_at"] - grouped[2]["run_at"] == timedelta(seconds=60)
        assert await delegated_calls() - before == len(shards) > 1
    finally:
        await conn.close()
        await pool.close()
