"""Jobs, their attempts, leases and the replicas: the queries of `jobs.sql`.

Typed, keyword-argument functions, one per named query, and the only readers of those entries
of the SQL registry. They return rows (asyncpg records); `paceline.queue.jobs.Job` turns a job
row into the value the rest of the code uses. Writes sent through the pool use
`fetch_committed`, so an answer that arrived is not lost when the server ends the session.

The worker's statements (the claim, next-due, outcomes, lease renewals, the requeue and the
reaper's) are planned per call out of index paths only (`paceline.db.plans`): a plan cached
while the tables were small must not decide how they run once the tables are large. Those that
run inside a caller's transaction say so; the caller starts it with `plan_per_call`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from paceline.contract import DEFAULT_KIND, INT64_MAX
from paceline.db.citus import SHARDS
from paceline.db.plans import fetch_planned, fetch_planned_timed, plan_per_call
from paceline.db.pool import Connection, Executor, fetch_committed
from paceline.db.queries import MAX_IDS_PER_STATEMENT, QUERIES

__all__ = ["MAX_IDS_PER_STATEMENT", "plan_per_call"]

log = logging.getLogger(__name__)


async def enqueue(
    db: Executor,
    *,
    kind: str,
    object_id: int,
    payload: str | None = None,
    absorbed: int | None = None,
    not_before: datetime | None = None,
) -> asyncpg.Record | None:
    """Reserve the (kind, object)'s next free slot and insert the job there; the job's row, or
    None when the key needs the exact planner (it is paused, the slot would crowd a scheduled
    job, its slot row was worked out under another limit, or `not_before` may take a free slot
    before the key's next one). `payload` is JSON text; `absorbed` is 1 for a job
    on_busy=append starts."""
    args: list[object] = [kind, object_id, payload, absorbed]
    if not QUERIES.citus:
        args.append(not_before)
    elif not_before is not None:
        # The cluster's function places plain jobs only; the planner places the others there.
        return None
    records = await fetch_committed(db, QUERIES["enqueue"], *args)
    return records[0] if records else None


async def enqueue_batch(
    db: Executor,
    *,
    kinds: Sequence[str],
    object_ids: Sequence[int],
    payloads: Sequence[str | None],
    independent: bool = False,
) -> list[asyncpg.Record]:
    """One job per (kind, object_id, payload) (parallel sequences), each in its key's next free
    slot, for the keys the one-statement path may plan; their rows in request order (in id
    order, which is the request's). Jobs of other keys are not made.

    `independent`: the jobs are separate requests (the group commit's), not one batch that is
    made all or none. On a Citus cluster each shard's jobs then go in a call of their own, run
    on the worker holding the shard, instead of one distributed transaction over every shard
    they touch (coordinated by the coordinator, two-phase commit on the workers); a shard whose
    call failed makes none of its jobs, which the caller places one by one like any job the
    statement did not make. On one server it changes nothing."""
    several_keys = len(set(zip(kinds, object_ids, strict=True))) > 1
    if QUERIES.citus and independent and several_keys and isinstance(db, asyncpg.Pool):
        return await _enqueue_by_shard(db, kinds, object_ids, payloads)
    if QUERIES.citus:
        return await _enqueue_batch_on_cluster(db, kinds, object_ids, payloads)
    # The plain batch sends its ids alone (the statement reads missing arrays as NULLs).
    sent_kinds = None if all(kind == DEFAULT_KIND for kind in kinds) else list(kinds)
    sent_payloads = None if all(p is None for p in payloads) else list(payloads)
    return await fetch_committed(
        db, QUERIES["enqueue_batch"], sent_kinds, list(object_ids), sent_payloads
    )


async def _enqueue_batch_on_cluster(
    db: Executor,
    kinds: Sequence[str],
    object_ids: Sequence[int],
    payloads: Sequence[str | None],
) -> list[asyncpg.Record]:
    # One key: the call runs on its worker. Several: on the coordinator, in one transaction.
    one_key = len(set(zip(kinds, object_ids, strict=True))) == 1
    route = await db.fetchval(QUERIES["bucket_of"], kinds[0], object_ids[0]) if one_key else None
    records = await fetch_committed(
        db, QUERIES["enqueue_batch"], list(kinds), list(object_ids), list(payloads), route
    )
    return [
        record for _, record in _in_request_order(kinds, object_ids, range(len(kinds)), records)
    ]


def _in_request_order(
    kinds: Sequence[str],
    object_ids: Sequence[int],
    positions: Sequence[int],
    records: Sequence[asyncpg.Record],
) -> list[tuple[int, asyncpg.Record]]:
    """A cluster's rows of a batch (those of the keys it planned, every job of such a key),
    each with its position among `positions` (the request's, in order). By id they are not in
    request order: each node hands out ids from its own range. One key's jobs are on one node,
    so its rows by id are its jobs in request order."""
    by_key: dict[tuple[str, int], list[asyncpg.Record]] = {}
    for record in sorted(records, key=lambda record: record["id"]):
        by_key.setdefault((record["kind"], record["object_id"]), []).append(record)
    placed = []
    for position in positions:
        rows = by_key.get((kinds[position], object_ids[position]))
        if rows:
            placed.append((position, rows.pop(0)))
    return placed


async def _enqueue_by_shard(
    pool: asyncpg.Pool,
    kinds: Sequence[str],
    object_ids: Sequence[int],
    payloads: Sequence[str | None],
) -> list[asyncpg.Record]:
    buckets = [row["bucket"] for row in await pool.fetch(QUERIES["buckets_of"], kinds, object_ids)]
    groups = await SHARDS.group(pool, buckets, len(kinds))

    async def one_shard(at: list[int]) -> list[tuple[int, asyncpg.Record]]:
        # Routed by one of the shard's buckets: the call runs on the worker holding the shard,
        # and every statement in it touches that shard alone.
        records = await fetch_committed(
            pool,
            QUERIES["enqueue_batch"],
            [kinds[i] for i in at],
            [object_ids[i] for i in at],
            [payloads[i] for i in at],
            buckets[at[0]],
        )
        return _in_request_order(kinds, object_ids, at, records)

    # Each call on a connection of its own, all at once.
    outcomes = await asyncio.gather(*(one_shard(at) for _, at in groups), return_exceptions=True)
    made: list[tuple[int, asyncpg.Record]] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, Exception):
                raise outcome
            log.warning("a shard's part of a group of enqueues failed (%s)", outcome)
            continue
        made += outcome
    return [record for _, record in sorted(made, key=lambda pair: pair[0])]


async def get_job(db: Executor, *, job_id: int) -> asyncpg.Record | None:
    """The job's row, or None."""
    return await db.fetchrow(QUERIES["get_job"], job_id)


async def get_jobs(db: Executor, *, job_ids: Sequence[int]) -> list[asyncpg.Record]:
    """The rows of those of `job_ids` that exist, in no particular order."""
    return await db.fetch(QUERIES["get_jobs"], list(job_ids))


async def list_jobs(
    db: Executor,
    *,
    kind: str | None = None,
    object_id: int | None,
    status: str | None,
    payload: str | None = None,
    after: PageEnd | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Jobs newest first after the end of the previous page (`after`; None: from the newest),
    optionally of one kind, object and/or status, and whose payload contains `payload` (a JSON
    object as text)."""
    before = INT64_MAX if after is None else after.id
    # A cluster orders by (created_at, id): the cursor carries the last job's created_at.
    created = (await _page_end_created(db, after),) if QUERIES.citus else ()
    if payload is not None:
        # The payload's index narrows; the other filters are tested on what it finds.
        return await db.fetch(
            QUERIES["list_jobs_by_payload"],
            payload,
            kind,
            object_id,
            status,
            before,
            limit,
            *created,
        )
    # One named query per filter combination, so each gets a plan that uses its index.
    given = {"kind": kind, "object": object_id, "status": status}
    used = [name for name, value in given.items() if value is not None]
    query = QUERIES[_LIST_QUERIES[tuple(used)]]
    filters = [given[name] for name in used]
    return await db.fetch(query, *filters, before, limit, *created)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Later than any job's created_at (Python's datetime ends in 9999; PostgreSQL's in 294276).
_AFTER_EVERY_JOB = datetime(9999, 12, 31, tzinfo=UTC)
_BEFORE_EVERY_JOB = datetime(1, 1, 1, tzinfo=UTC)
_CURSOR = re.compile(r"([1-9][0-9]{0,18})(?:\.(-?[0-9]{1,19}))?")


@dataclasses.dataclass(frozen=True, slots=True)
class PageEnd:
    """The last job of a page of `list_jobs`, which the next page starts after: its id and,
    from a cluster's cursor, its created_at."""

    id: int
    created_at: datetime | None = None


def page_cursor(job_id: int, created_at: datetime) -> str:
    """The `next_cursor` of a page that ends with this job. One server lists jobs by id (ids
    grow with acceptance): the cursor is the id. A cluster lists them by (created_at, id),
    since each of its nodes hands out ids from a range of its own (a job made on the worker
    holding its key's shard takes that worker's next id): the cursor is `<id>.<created_at in
    microseconds since 1970>`."""
    if not QUERIES.citus:
        return str(job_id)
    return f"{job_id}.{(created_at - _EPOCH) // _MICROSECOND}"


def parse_page_cursor(text: str) -> PageEnd | None:
    """A cursor `page_cursor` made (either form, on either kind of database); None if the text
    is not one. Any cursor the API document's pattern admits is taken: an id past the largest
    bigint, or an instant outside the years 1-9999, is clamped to that bound, which lists from
    the newest job (or, for an instant before year 1, nothing) as such a cursor would."""
    found = _CURSOR.fullmatch(text.strip())
    if found is None:
        return None
    job_id = min(int(found[1]), INT64_MAX)
    if found[2] is None:
        return PageEnd(job_id)
    return PageEnd(job_id, _instant_of(int(found[2])))


def _instant_of(microseconds: int) -> datetime:
    """The instant `microseconds` after 1970, clamped to what a Python datetime can hold."""
    try:
        return _EPOCH + microseconds * _MICROSECOND
    except OverflowError:
        return _AFTER_EVERY_JOB if microseconds > 0 else _BEFORE_EVERY_JOB


async def _page_end_created(db: Executor, after: PageEnd | None) -> datetime:
    """On a cluster, the created_at the next page starts before: the cursor's, else (a cursor
    from one server, before the database became a cluster) the job's own, if it still exists."""
    if after is None:
        return _AFTER_EVERY_JOB
    if after.created_at is not None:
        return after.created_at
    created: datetime | None = await db.fetchval(QUERIES["job_created_at"], after.id)
    return _AFTER_EVERY_JOB if created is None else created


_LIST_QUERIES = {
    (): "list_jobs",
    ("object",): "list_jobs_by_object",
    ("status",): "list_jobs_by_status",
    ("object", "status"): "list_jobs_by_object_and_status",
    ("kind",): "list_jobs_by_kind",
    ("kind", "object"): "list_jobs_by_kind_and_object",
    ("kind", "status"): "list_jobs_by_kind_and_status",
    ("kind", "object", "status"): "list_jobs_by_kind_object_and_status",
}


async def claim_due_jobs(
    db: Executor,
    *,
    limit: int,
    lease: float,
    worker_id: uuid.UUID,
    kinds: Sequence[str],
) -> list[asyncpg.Record]:
    """Start up to `limit` due jobs of `kinds` under a lease held by `worker_id`; their rows."""
    if not QUERIES.citus:
        return await fetch_planned(
            db, QUERIES["claim_due_jobs"], limit, lease, worker_id, list(kinds)
        )
    # A cluster claims shard by shard (FOR UPDATE SKIP LOCKED is refused across shards), each
    # claim one call of a function that runs on the worker holding the shard; not in a
    # transaction of the caller's, where Citus would run it on the coordinator.
    claimed: list[asyncpg.Record] = []
    for shard, buckets in await SHARDS.due(db):
        wanted = limit - len(claimed)
        got = await db.fetch(
            QUERIES["claim_due_jobs"], wanted, lease, worker_id, list(kinds), buckets[0], buckets
        )
        claimed += got
        if len(got) < wanted:
            SHARDS.found_nothing_more(shard)
        if len(claimed) >= limit:
            break
    return claimed


@dataclasses.dataclass(frozen=True, slots=True)
class NextDue:
    """When the next pending job may start, as the database answered, and when it answered."""

    now: float  # the database's clock as it answered (epoch seconds)
    next_start: float | None  # epoch seconds; None if nothing is pending
    # This process's monotonic clock at that moment, estimated as the middle of the statement's
    # round trip, and that round trip.
    read_at: float
    trip: float


async def seconds_until_next_due(db: Executor, *, kinds: Sequence[str]) -> NextDue:
    """The database's `now` and when the next pending job of `kinds` may start (`next_start`,
    None if none is pending), both in epoch seconds."""
    if not QUERIES.citus:
        timed = await fetch_planned_timed(db, QUERIES["seconds_until_next_due"], list(kinds))
        (row,) = timed.records
        return _next_due(row, timed.sent, timed.received)
    # A cluster asks each shard (a call run on the shard's worker, at once on separate
    # connections when `db` is the pool); the earliest answer is the next start.
    asks = [
        db.fetch(QUERIES["seconds_until_next_due"], list(kinds), buckets[0], buckets)
        for buckets in await SHARDS.buckets(db)
    ]
    sent = time.monotonic()
    # One connection runs one statement at a time.
    rows = await asyncio.gather(*asks) if isinstance(db, asyncpg.Pool) else [await a for a in asks]
    due = [row for (row,) in rows if row["next_start"] is not None]
    earliest = _next_due(
        min(due, key=lambda row: row["next_start"]) if due else rows[0][0], sent, time.monotonic()
    )
    SHARDS.learnt(
        rows[0][0]["now"],
        [row["next_start"] for (row,) in rows],
        read_at=earliest.read_at,
        trip=earliest.trip,
    )
    return earliest


def _next_due(row: asyncpg.Record, sent: float, received: float) -> NextDue:
    # The database reads its clock while it runs the statement: taken as the round trip's middle.
    return NextDue(row["now"], row["next_start"], (sent + received) / 2, received - sent)


async def lock_running_job(
    conn: Connection, *, job_id: int, attempt: int
) -> tuple[str, int] | None:
    """Lock the job if `attempt` still holds it (PROCESSING); its (kind, object_id), or None.
    First step of a requeue, in the caller's transaction, planned per call (`plan_per_call`
    first)."""
    if not QUERIES.citus:
        row = await conn.fetchrow(QUERIES["lock_running_job"], job_id, attempt)
    else:
        # A cluster locks on the job's shard only: find it first.
        bucket = await conn.fetchval(QUERIES["bucket_of_job"], job_id)
        if bucket is None:
            return None
        row = await conn.fetchrow(QUERIES["lock_running_job"], job_id, attempt, bucket)
    return None if row is None else (row["kind"], row["object_id"])


async def requeue_job(
    conn: Connection,
    *,
    job_id: int,
    attempt: int,
    delay: float,
    error: str | None,
    outcome: str,
) -> datetime | None:
    """Back to PENDING, for now at `delay` seconds from now (the planner then places it);
    the attempt gets `outcome` (RETRY, RELEASED, LOST). That `run_at`, or None if the attempt
    no longer holds the job."""
    run_at: datetime | None = await conn.fetchval(
        QUERIES["requeue_job"], job_id, attempt, delay, error, outcome
    )
    return run_at


async def renew_leases(
    db: Executor,
    *,
    job_ids: Sequence[int],
    attempts: Sequence[int],
    lease: float,
    worker_id: uuid.UUID,
    buckets: Sequence[int | None] | None = None,
) -> set[int]:
    """Extend the leases `worker_id` still holds (at most MAX_IDS_PER_STATEMENT); the ids
    renewed (one missing was taken back). `buckets`: each job's, as its claim said (a Citus
    cluster then renews each shard's jobs on that shard alone)."""
    return await _ids_by_shard(
        db, QUERIES["renew_leases"], (job_ids, attempts), (lease, worker_id), buckets
    )


async def finish_jobs(
    db: Executor,
    *,
    job_ids: Sequence[int],
    attempts: Sequence[int],
    statuses: Sequence[str],
    durations: Sequence[float],
    errors: Sequence[str | None],
    results: Sequence[str | None],
    buckets: Sequence[int | None] | None = None,
) -> set[int]:
    """Record the outcomes of attempts that ended (at most MAX_IDS_PER_STATEMENT, parallel
    sequences; results as JSON text) in one statement; the ids recorded (an attempt taken back
    meanwhile is not). `buckets`: each job's, as its claim said: a Citus cluster records each
    shard's outcomes on that shard alone, one statement per shard (a job's outcome is its own:
    nothing needs the shards' statements to commit together)."""
    return await _ids_by_shard(
        db,
        QUERIES["finish_jobs"],
        (job_ids, attempts, statuses, durations, errors, results),
        (),
        buckets,
    )


async def _ids_by_shard(
    db: Executor,
    query: str,
    arrays: tuple[Sequence[Any], ...],
    rest: tuple[Any, ...],
    buckets: Sequence[int | None] | None,
) -> set[int]:
    """`query` (planned per call) with the parallel `arrays` then `rest` as its parameters; the
    ids it returned. On a Citus cluster once per shard: that shard's positions of the arrays,
    and the shard's buckets as the last parameter (each job's bucket from `buckets`)."""
    if not QUERIES.citus:
        rows = await fetch_planned(db, query, *(list(array) for array in arrays), *rest)
        return {row["id"] for row in rows}
    found: set[int] = set()
    for shard_buckets, at in await SHARDS.group(db, buckets, len(arrays[0])):
        parts = ([array[i] for i in at] for array in arrays)
        rows = await fetch_planned(db, query, *parts, *rest, shard_buckets)
        found.update(row["id"] for row in rows)
    return found


async def expired_leases(conn: Connection, *, limit: int) -> list[asyncpg.Record]:
    """Running jobs whose lease ran out (id, attempts, attempts_at_retry, kind, object_id),
    locked, SKIP LOCKED. In the caller's transaction, planned per call (`plan_per_call`
    first)."""
    if not QUERIES.citus:
        return await conn.fetch(QUERIES["expired_leases"], limit)
    # A cluster locks shard by shard: each statement one shard's, in the caller's transaction.
    expired: list[asyncpg.Record] = []
    for buckets in await SHARDS.buckets(conn):
        expired += await conn.fetch(QUERIES["expired_leases"], limit - len(expired), buckets)
        if len(expired) >= limit:
            break
    return expired


async def fail_lost_job(conn: Connection, *, job_id: int, attempt: int, error: str) -> None:
    """The lost attempt was the last one allowed: FAILED."""
    await conn.execute(QUERIES["fail_lost_job"], job_id, attempt, error)


async def heartbeat(
    db: Executor,
    *,
    worker_id: uuid.UUID,
    host: str,
    pid: int,
    concurrency: int,
    running: int,
    kinds: Sequence[str],
) -> None:
    """Register this replica (with the kinds it has handlers for) or beat its heart."""
    await db.execute(QUERIES["heartbeat"], worker_id, host, pid, concurrency, running, list(kinds))


async def live_kinds(db: Executor, *, within: float) -> list[str]:
    """The kinds some replica that beat in the last `within` seconds has handlers for."""
    return [row["kind"] for row in await db.fetch(QUERIES["live_kinds"], within)]


async def unregister_worker(db: Executor, *, worker_id: uuid.UUID) -> None:
    """A replica leaving gracefully."""
    await db.execute(QUERIES["unregister_worker"], worker_id)


async def forget_dead_workers(db: Executor, *, silent_for: float) -> None:
    """Forget replicas whose heartbeat is older than `silent_for` seconds."""
    await db.execute(QUERIES["forget_dead_workers"], silent_for)


async def prune_finished_jobs(db: Executor, *, retention: float, batch: int) -> int:
    """Delete up to `batch` finished jobs older than `retention` seconds; how many."""
    if QUERIES.citus:
        # One DELETE (the cluster's foreign key cascades to the attempts): its status counts.
        status = await db.execute(QUERIES["prune_finished_jobs"], retention, batch)
        return int(status.split()[-1])
    return int(await db.fetchval(QUERIES["prune_finished_jobs"], retention, batch))


async def prune_passed_windows(conn: Connection) -> None:
    """Drop window rows whose key's window has passed (a missing row means "free now"). In
    the caller's transaction, planned per call (`plan_per_call` first)."""
    await conn.execute(QUERIES["prune_passed_windows"])


async def ping(db: Executor) -> None:
    """One round trip; raises if the server does not answer."""
    await db.execute(QUERIES["ping"])


async def notify_due(db: Executor, *, channel: str, seconds: float) -> None:
    """Tell every replica's listener that a job is due in `seconds`."""
    await db.execute(QUERIES["notify_due"], channel, f"{seconds:.6f}")


async def notify_due_at(db: Executor, *, channel: str, at: datetime) -> None:
    """Tell every replica's workers (at commit) that a job is due at `at`."""
    await db.execute(QUERIES["notify_due_at"], channel, at)
