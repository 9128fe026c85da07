"""Run a statement with a plan made for the call, out of index paths only.

PostgreSQL caches a prepared statement's plan (its generic plan, after five executions) as the
statistics of that moment make it. Cached while paceline's tables were empty, the plans of the
worker's statements were sequential scans and nested loops over them, and stayed so as `jobs`
grew to a million rows without an ANALYZE (autovacuum off or lagging): 12-25 s per claim, no
job started for half a minute. Every statement run through here is planned for this
call (`force_custom_plan`: the planner sizes each table by its pages now, whatever its
statistics say) with sequential scans, bitmap scans, sorts, hash and merge joins turned off,
for this transaction only (SET LOCAL): what remains are the index walks and per-row index
probes the statements were written for, whose cost follows the rows they return, not the table.

JIT compilation is turned off with them. A disabled path is costed 10^10 more and the claim's
per-row probes are costed for every due job, so these plans pass `jit_above_cost` whatever they
will read: on a server built with LLVM (Debian's and most distributions' packages; not the
embedded one) a claim of 50 jobs from 100k due ones spent 1.4 s compiling for 1.3 ms of work.

Not for enqueue: it scans no table (an insert and a primary-key upsert), runs once per request,
and planning it per call cost 40 % of its throughput (pgbench). See docs/design.md, "Plans that
do not depend on statistics".
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any

import asyncpg

from paceline.db.pool import Connection, Executor, committed_connection

# One round trip (a simple query may hold several statements).
INDEX_PATHS_ONLY = (
    "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; "
    "SET LOCAL enable_sort = off; SET LOCAL enable_hashjoin = off; "
    "SET LOCAL enable_mergejoin = off; SET LOCAL plan_cache_mode = force_custom_plan; "
    "SET LOCAL jit = off"
)


async def plan_per_call(conn: Connection) -> None:
    """Inside a transaction: its statements from now on are planned as described above."""
    await conn.execute(INDEX_PATHS_ONLY)


@dataclasses.dataclass(frozen=True, slots=True)
class Timed:
    """A statement's rows and when, on this process's monotonic clock, it went out and its
    answer came back: the round trip of that statement alone, without the BEGIN, COMMIT and
    pool hand-back around it."""

    records: list[asyncpg.Record]
    sent: float
    received: float


async def fetch_planned(db: Executor, query: str, *args: Any) -> list[asyncpg.Record]:
    """`fetch`, planned for the call (see above): through the pool on a
    `committed_connection` (what the statement did is not lost to an error handing the
    connection back), or on the connection given, in its transaction if one is open."""
    return (await fetch_planned_timed(db, query, *args)).records


async def fetch_planned_timed(db: Executor, query: str, *args: Any) -> Timed:
    """`fetch_planned`, with the statement's own round trip."""
    if isinstance(db, asyncpg.Pool):
        async with committed_connection(db) as conn:
            return await _fetch_planned(conn, query, *args)
    return await _fetch_planned(db, query, *args)


async def _fetch_planned(conn: Connection, query: str, *args: Any) -> Timed:
    # Three round trips outside a transaction: BEGIN with the settings (one simple query), the
    # statement, and COMMIT; the wake-up of an idle worker pays them twice (next-due, claim).
    if conn.is_in_transaction():
        await plan_per_call(conn)
        sent = time.monotonic()
        records = list(await conn.fetch(query, *args))
        return Timed(records, sent, time.monotonic())
    await conn.execute("BEGIN; " + INDEX_PATHS_ONLY)
    try:
        sent = time.monotonic()
        records = list(await conn.fetch(query, *args))
        received = time.monotonic()
    except BaseException:
        # A connection that broke is dropped by the pool; one that did not must not stay in
        # the failed transaction (the pool's reset rolls back too, but a caller may reuse it).
        if not conn.is_closed() and conn.is_in_transaction():
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")
    return Timed(records, sent, received)
