"""The named SQL: every query prepares on the real schema, the parser refuses ambiguous files,
and the hot queries keep using the indexes made for them once the history is large."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import asyncpg
import msgspec
import pytest

from paceline.db.plans import INDEX_PATHS_ONLY
from paceline.db.queries import JOB_COLUMNS, QUERIES, parse
from paceline.db.schema import jobs
from paceline.queue.jobs import INT64_MAX, Job, Status

# Columns that make a query's rows jobs (Job.from_record reads each of its fields by name).
JOB_MARKERS = frozenset({"id", "status", "run_at"})

WINDOW = 0.5
HISTORY = 20_000  # finished jobs, spread over HISTORY_OBJECTS objects
HISTORY_OBJECTS = 500
PENDING = 300  # pending jobs, 3 per object, half of them due
BUSY_OBJECT = 7  # an object of the history


@pytest.mark.parametrize("name", sorted(QUERIES))
async def test_query_prepares_on_the_migrated_schema(db: asyncpg.Connection, name: str) -> None:
    """A query naming a missing column or an untypable parameter fails here, not in production."""
    statement = await db.prepare(QUERIES[name])
    assert statement.get_query() == QUERIES[name]


@pytest.mark.parametrize("name", sorted(QUERIES))
async def test_job_query_returns_every_field_of_a_job(db: asyncpg.Connection, name: str) -> None:
    """A job query missing a column would make every response built from it a 500. Every query
    of the registry is looked at: one that returns jobs is held to the whole list."""
    statement = await db.prepare(QUERIES[name])
    columns = [attribute.name for attribute in statement.get_attributes()]
    if not set(columns) >= JOB_MARKERS:
        return
    expected = [
        _COLUMN_OF.get(field.name, field.name)
        for field in msgspec.structs.fields(Job)
        if field.name not in _CLUSTER_ONLY
    ]
    assert columns[: len(expected)] == expected
    assert set(columns[len(expected) :]) <= _CLUSTER_ONLY
    assert set(columns) <= set(jobs.c.keys())


# Job keeps these columns as the JSON text the database returns (the API embeds it as it is).
_COLUMN_OF = {"payload_json": "payload", "result_json": "result"}
# Fields only a Citus cluster's claim returns (Job.bucket, the job's shard key).
_CLUSTER_ONLY = {"bucket"}


def test_the_job_queries_are_the_ones_that_name_the_job_columns() -> None:
    # Guards the marker test above: the registry has job queries, found by construction.
    returning_jobs = {name for name, sql in QUERIES.items() if JOB_COLUMNS in sql}
    assert {"enqueue", "get_job", "cancel_pending_job"} <= returning_jobs


@pytest.mark.one_server(
    "a cluster's batch is paceline_enqueue_batch (citus.sql), which returns every job column"
)
async def test_the_batch_enqueue_returns_what_job_created_reads(db: asyncpg.Connection) -> None:
    """A batch's rows carry only what its statement decided; Job.created takes the rest from
    the request and a new job's defaults (the answer equals GET: test_kinds.py)."""
    statement = await db.prepare(QUERIES["enqueue_batch"])
    columns = [attribute.name for attribute in statement.get_attributes()]
    assert columns == ["id", "kind", "object_id", "created_at", "run_at", "payload"]


def test_parse_splits_on_name_lines_and_drops_the_preamble() -> None:
    """The loader finds every query by its name, and only the text that belongs to it."""
    text = "-- preamble\n\n-- name: one\nSELECT 1;\n\n-- name: two\n-- $1 x.\nSELECT $1;\n"
    assert parse(text) == {"one": "SELECT 1;", "two": "-- $1 x.\nSELECT $1;"}


def test_parse_rejects_a_duplicated_name() -> None:
    """Two blocks of one name would silently run whichever came last; loading fails instead."""
    with pytest.raises(ValueError, match="'one' is defined twice"):
        parse("-- name: one\nSELECT 1;\n-- name: one\nSELECT 2;\n")


def test_parse_rejects_an_empty_query() -> None:
    """A name with no SQL under it would fail only when called; loading fails instead."""
    with pytest.raises(ValueError, match="'empty' is empty"):
        parse("-- name: empty\n\n-- name: one\nSELECT 1;\n")


class PlanNode(NamedTuple):
    node_type: str
    relation_name: str | None
    index_name: str | None


def walk_plan(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan tree, depth first."""
    yield node
    for child in node.get("Plans", []):
        yield from walk_plan(child)


async def explain(db: asyncpg.Connection, name: str, *args: object) -> list[Mapping[str, Any]]:
    """The plan nodes of a named query with these parameters (not executed: no ANALYZE)."""
    raw = await db.fetchval("EXPLAIN (FORMAT JSON) " + QUERIES[name], *args)
    document: list[dict[str, Any]] = json.loads(raw)
    return list(walk_plan(document[0]["Plan"]))


def summary(plan: list[Mapping[str, Any]]) -> list[PlanNode]:
    """(Node Type, Relation Name, Index Name) of each node."""
    return [
        PlanNode(node["Node Type"], node.get("Relation Name"), node.get("Index Name"))
        for node in plan
    ]


def assert_no_seq_scan_on_jobs(nodes: list[PlanNode]) -> None:
    assert PlanNode("Seq Scan", "jobs", None) not in nodes, nodes


def assert_uses_index(nodes: list[PlanNode], index: str) -> None:
    assert index in {node.index_name for node in nodes}, nodes


@pytest.fixture
async def history(db: asyncpg.Connection) -> asyncpg.Connection:
    """The database of a service that has run a while: a large history, a small backlog."""
    await db.execute(
        """
        INSERT INTO jobs (object_id, status, created_at, run_at, started_at, finished_at,
                          duration, attempts)
        SELECT g % $2, 'SUCCESS', t, t, t, t + interval '1 second', 1.0, 1
        FROM generate_series(1, $1::int) AS g,
             LATERAL (SELECT now() - make_interval(mins => $1::int - g) AS t) AS at
        """,
        HISTORY,
        HISTORY_OBJECTS,
    )
    # Objects of the backlog come after those of the history; half their slots are due.
    await db.execute(
        """
        INSERT INTO jobs (object_id, run_at)
        SELECT $2::int + g % ($1::int / 3), now() + make_interval(secs => g - $1::int / 2)
        FROM generate_series(1, $1::int) AS g
        """,
        PENDING,
        HISTORY_OBJECTS,
    )
    await db.execute(
        """
        INSERT INTO object_starts (object_id, last_started_at)
        SELECT object_id, max(started_at) FROM jobs WHERE started_at IS NOT NULL GROUP BY 1;
        INSERT INTO object_slots (object_id, next_slot)
        SELECT object_id, max(run_at) + interval '1 second' FROM jobs GROUP BY 1;
        ANALYZE
        """
    )
    rows = await db.fetch("SELECT status, count(*) FROM jobs GROUP BY 1")
    counts = {row["status"]: row["count"] for row in rows}
    assert counts == {Status.SUCCESS.value: HISTORY, Status.PENDING.value: PENDING}
    return db


@pytest.mark.one_server("one server's plans (test_citus.py checks the cluster's)")
async def test_claim_scans_only_due_pending_jobs(history: asyncpg.Connection) -> None:
    """Every worker poll runs the claim: scanning the whole history, it slows as jobs pile up."""
    async with history.transaction():
        await history.execute(INDEX_PATHS_ONLY)  # as the worker runs it
        plan = await explain(history, "claim_due_jobs", 10, 30.0, uuid.UUID(int=1), ["default"])
    nodes = summary(plan)
    assert PlanNode("Index Scan", "jobs", "ix_jobs_due") in nodes, nodes
    assert_no_seq_scan_on_jobs(nodes)


@pytest.mark.one_server("one server's plans (test_citus.py checks the cluster's)")
async def test_claim_of_a_large_backlog_is_not_jit_compiled(db: asyncpg.Connection) -> None:
    """With 100k due jobs the claim's estimated cost passes `jit_above_cost`; on a server with
    LLVM (PostgreSQL 15 from Debian) a claim of 50 then compiled for 1.4 s before its 1 ms of
    work, and every worker poll stalled. As the worker runs it, JIT is off whatever the server
    says."""
    await db.execute(
        "INSERT INTO jobs (object_id, run_at) "
        "SELECT g, now() - interval '1 minute' FROM generate_series(1, 100000) AS g"
    )
    async with db.transaction():
        await db.execute(INDEX_PATHS_ONLY)  # as the worker runs it
        assert await db.fetchval("SHOW jit") == "off"
        raw = await db.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + QUERIES["claim_due_jobs"],
            50,
            30.0,
            uuid.UUID(int=1),
            ["default"],
        )
        document = json.loads(raw)[0]
        claimed = document["Plan"]["Actual Rows"]
    assert claimed == 50
    assert "JIT" not in document, document["JIT"]


@pytest.mark.one_server("one server's plans (test_citus.py checks the cluster's)")
async def test_enqueue_finds_the_object_slot_by_its_primary_key(
    history: asyncpg.Connection,
) -> None:
    """Every POST /jobs runs enqueue: its slot upsert must be one primary-key probe."""
    plan = await explain(history, "enqueue", "default", BUSY_OBJECT, None, None, None)
    upserts = [
        node
        for node in plan
        if node["Node Type"] == "ModifyTable" and node.get("Relation Name") == "object_slots"
    ]
    assert [node.get("Conflict Arbiter Indexes") for node in upserts] == [["pk_object_slots"]]
    assert_no_seq_scan_on_jobs(summary(plan))


@pytest.mark.one_server("one server's plans (test_citus.py checks the cluster's)")
async def test_the_one_statement_enqueue_works_out_recent_reservations_once_per_call(
    db: asyncpg.Connection,
) -> None:
    """Every POST runs the batch enqueue, which calls paceline_next_slots twice (a fresh key's
    row, a conflicting one). Inlined with its subquery pulled up, the function copied the
    subquery's ARRAY(...) into each of four uses: eight subplans (an unnest each) that every
    execution initializes, 15 of the 253 µs a one-job batch took (migration 0016). Now: one
    per call."""
    plan = await explain(db, "enqueue_batch", None, [1], None)
    unnests = [
        node
        for node in plan
        if node["Node Type"] == "Function Scan" and node.get("Function Name") == "unnest"
    ]
    assert len(unnests) == 2, summary(plan)


@pytest.mark.one_server("one server's plans (test_citus.py checks the cluster's)")
async def test_a_batch_pairs_its_jobs_with_their_slots_by_hash(db: asyncpg.Connection) -> None:
    """POST of a 1000-job array: each job meets its key's slot in a hash join. When the
    estimate of the keys the statement places fell to one row (migration 0015's first
    version filtered on the limit's conditions), that join became a nested loop of 1000 x
    1000 rows, and a batch took 116 ms instead of 12 (batch scenario: 0.63 -> 0.24)."""
    object_ids = list(range(1, 1001))
    object_ids[9::10] = object_ids[:100]  # every tenth job repeats a key, as the benchmark's
    raw = await db.fetchval(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + QUERIES["enqueue_batch"], None, object_ids, None
    )
    plan = list(walk_plan(json.loads(raw)[0]["Plan"]))
    assert await db.fetchval("SELECT count(*) FROM jobs") == len(object_ids)
    compared = max(node.get("Rows Removed by Join Filter", 0) for node in plan)
    assert compared < len(object_ids), summary(plan)


@pytest.mark.one_server("one server's plans (test_citus.py checks the cluster's)")
async def test_list_by_object_uses_its_index(history: asyncpg.Connection) -> None:
    """GET /jobs?object_id= reads one object's jobs, not the whole table."""
    nodes = summary(await explain(history, "list_jobs_by_object", BUSY_OBJECT, INT64_MAX, 50))
    assert_uses_index(nodes, "ix_jobs_object_id_id")
    assert_no_seq_scan_on_jobs(nodes)


@pytest.mark.one_server("one server's plans (test_citus.py checks the cluster's)")
async def test_list_by_status_uses_its_index(history: asyncpg.Connection) -> None:
    """GET /jobs?status=PENDING (the backlog) reads the pending jobs, not the whole history.

    For the status nearly every row has, walking the primary key backwards is cheaper and
    PostgreSQL rightly does that, so the rare status is the one that needs the index.
    """
    nodes = summary(
        await explain(history, "list_jobs_by_status", Status.PENDING.value, INT64_MAX, 50)
    )
    # Either index of pending jobs serves it: (status, id DESC), or the partial one of their ids.
    used = {node.index_name for node in nodes}
    assert used & {"ix_jobs_status_id", "ix_jobs_pending_id"}, nodes
    assert_no_seq_scan_on_jobs(nodes)


@pytest.mark.one_server("one server's plans (test_citus.py checks the cluster's)")
async def test_next_due_reads_the_first_pending_jobs_by_slot(history: asyncpg.Connection) -> None:
    """Every idle worker asks when to wake up: that must not read the whole history."""
    async with history.transaction():
        await history.execute(INDEX_PATHS_ONLY)  # as the worker runs it
        nodes = summary(await explain(history, "seconds_until_next_due", ["default"]))
    # Only indexes that hold pending jobs alone (by slot, or (few pending) their ids, sorted),
    # and the running ones of a head's key (is it held back by max_running).
    pending_only = {
        "ix_jobs_due",
        "ix_jobs_pending_id",
        "ix_jobs_pending_kind_object_id_run_at_id",
        "ix_jobs_running_kind_object_id",
    }
    scanned = {node.index_name for node in nodes if node.relation_name == "jobs"}
    assert scanned, nodes
    assert scanned <= pending_only, nodes
    assert_no_seq_scan_on_jobs(nodes)


@pytest.mark.one_server("one server's plans (test_citus.py checks the cluster's)")
@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
async def test_outcomes_and_renewals_find_their_jobs_by_primary_key(
    history: asyncpg.Connection, plan_cache_mode: str
) -> None:
    """Every batch of outcomes runs finish_jobs, every lease tick renew_leases. The statistics
    were taken when nothing ran; now 2,000 jobs run (a drain at a high PACELINE_CONCURRENCY).
    Reading all of them, or the whole table, per batch made a 500-outcome write take 2 s, and
    the outcomes of finished handlers piled up unwritten."""
    running = await history.fetch(
        """
        UPDATE jobs SET status = 'PROCESSING', finished_at = NULL,
                        lease_expires_at = now() + interval '30 seconds'
        WHERE id IN (SELECT id FROM jobs WHERE status = 'SUCCESS' ORDER BY id DESC LIMIT 2000)
        RETURNING id
        """
    )
    ids = [row["id"] for row in running[:200]]
    async with history.transaction():
        await history.execute(f"SET LOCAL plan_cache_mode = {plan_cache_mode}")
        outcomes = (ids, [1] * 200, ["SUCCESS"] * 200, [0.001] * 200, [None] * 200, [None] * 200)
        finish = summary(await explain(history, "finish_jobs", *outcomes))
        renew = summary(
            await explain(history, "renew_leases", ids, [1] * 200, 30.0, uuid.UUID(int=1))
        )
    for plan in (finish, renew):
        scans = [node for node in plan if node.relation_name == "jobs" and "Scan" in node.node_type]
        # Besides the jobs themselves, finish_jobs probes each finished key's pending jobs (is
        # one due and waiting for a running slot: wake the workers), one index probe per key.
        probes = {"ix_jobs_pending_kind_object_id_run_at_id"} if plan is finish else set()
        assert {node.index_name for node in scans} == {"pk_jobs"} | probes, plan


@pytest.mark.one_server("one server's plans (test_citus.py checks the cluster's)")
@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
async def test_outcomes_reach_the_attempt_history_without_a_join(
    history: asyncpg.Connection, plan_cache_mode: str
) -> None:
    """job_attempts was analyzed while empty (a new or pruned database, as `history` leaves it);
    20,000 attempts were written since. Joined with the jobs an UPDATE returns (the planner
    guesses one), job_attempts was read whole once per outcome: 1.3 to 8 s per 500 outcomes,
    and the outcomes of finished handlers piled up unwritten."""
    await history.execute(
        """
        INSERT INTO job_attempts (job_id, attempt, object_id, started_at, finished_at, outcome)
        SELECT id, 1, object_id, started_at, finished_at, 'SUCCESS'
        FROM jobs WHERE started_at IS NOT NULL
        """
    )
    running = await history.fetch(
        """
        WITH running AS (
            UPDATE jobs SET status = 'PROCESSING', finished_at = NULL,
                            lease_expires_at = now() + interval '30 seconds'
            WHERE id IN (SELECT id FROM jobs WHERE status = 'SUCCESS' ORDER BY id DESC LIMIT 500)
            RETURNING id
        )
        UPDATE job_attempts SET outcome = NULL, finished_at = NULL
        WHERE job_id IN (SELECT id FROM running) RETURNING job_id
        """
    )
    ids = [row["job_id"] for row in running]
    async with history.transaction():
        await history.execute(f"SET LOCAL plan_cache_mode = {plan_cache_mode}")
        outcomes = (ids, [1] * 500, ["SUCCESS"] * 500, [0.001] * 500, [None] * 500, [None] * 500)
        plan = summary(await explain(history, "finish_jobs", *outcomes))
    joins = [node for node in plan if "Join" in node.node_type or "Loop" in node.node_type]
    assert joins == [], plan
    # And the statement does what it says: both rows of every attempt get the outcome.
    recorded = await history.fetch(QUERIES["finish_jobs"], *outcomes)
    assert len(recorded) == 500
    open_attempts = await history.fetchval(
        "SELECT count(*) FROM job_attempts WHERE job_id = ANY ($1) AND outcome IS NULL", ids
    )
    assert open_attempts == 0
    same_time = await history.fetchval(
        "SELECT bool_and(a.finished_at = j.finished_at) FROM jobs AS j "
        "JOIN job_attempts AS a ON a.job_id = j.id WHERE j.id = ANY ($1)",
        ids,
    )
    assert same_time
