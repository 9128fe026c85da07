"""A Citus cluster as paceline's database: the queries of `citus.sql`.

`paceline migrate` (after Alembic's migrations) distributes the per-key tables on their
`bucket` when the database has the citus extension, once; the service then runs the cluster's
form of its statements (`paceline.db.queries`), and the worker claims shard by shard, each
claim naming one shard's buckets. docs/citus.md says what is single-shard and what is not.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence

import asyncpg

from paceline.db.pool import Executor
from paceline.db.queries import QUERIES, use_citus

# The functions the cluster's statements call (citus.sql), made or replaced by every migrate.
CLUSTER_FUNCTIONS = (
    "citus_reserve_function",
    "citus_enqueue_function",
    "citus_enqueue_batch_function",
    "citus_claim_function",
    "citus_next_due_function",
)


async def installed(db: Executor) -> bool:
    """Whether the database has the citus extension."""
    found: bool = await db.fetchval(QUERIES["citus_installed"])
    return found


async def distribute_if_citus(dsn: str, *, lock_key: int) -> bool:
    """On a database with the citus extension, distribute the per-key tables unless they are
    already; True if the tables are distributed now (whoever did it). Idempotent. `lock_key`:
    the migrations' advisory lock, so replicas starting together take turns here too."""
    conn = await asyncpg.connect(dsn)
    try:
        if not await installed(conn):
            return False
        async with conn.transaction():
            await conn.execute(QUERIES.cluster("citus_lock"), lock_key)
            if not await conn.fetchval(QUERIES.cluster("citus_distributed")):
                # One statement at a time: Citus propagates some DDL to the workers as the
                # text it was sent, and a text of several statements is refused there.
                for statement in QUERIES.cluster("citus_distribute").split(";\n"):
                    await conn.execute(statement)
            # Every run: a new release's functions replace the old ones.
            for name in CLUSTER_FUNCTIONS:
                await conn.execute(QUERIES.cluster(name))
            for statement in QUERIES.cluster("citus_distribute_functions").split(";\n"):
                await conn.execute(statement)
            # Once: CREATE INDEX takes a SHARE lock on `jobs` before it finds the index there,
            # which every replica's start would otherwise take, holding up writes.
            if not await conn.fetchval(QUERIES.cluster("citus_listing_indexes_made")):
                for statement in QUERIES.cluster("citus_listing_indexes").split(";\n"):
                    await conn.execute(statement)
        return True
    finally:
        await conn.close()


def distribute(dsn: str, *, lock_key: int) -> bool:
    """`distribute_if_citus`, blocking (for `paceline.db.migrate`, which runs outside a loop)."""
    return asyncio.run(distribute_if_citus(dsn, lock_key=lock_key))


async def detect(db: Executor) -> bool:
    """Learn whether the database is a cluster with distributed tables, and use its statements
    from now on if it is; True then."""
    citus = await installed(db) and bool(await db.fetchval(QUERIES.cluster("citus_distributed")))
    use_citus(citus)
    if citus and isinstance(db, asyncpg.Pool):
        await _warm_up(db)
    return citus


async def _warm_up(pool: asyncpg.Pool) -> None:
    """Open the connections a worker's first wake-up uses, before it needs them: its next-due
    query asks every shard at once, one pooled connection each. A new connection's first
    statements on a cluster are slow: the coordinator's backend loads Citus's metadata and
    opens its own connections to the workers, whose backends load theirs (0.1-0.25 s late
    first starts without this). Each connection here asks its shard about no kind (an answer
    of nothing, routed like the real question)."""
    shards = await SHARDS.buckets(pool)

    async def ask(buckets: list[int]) -> None:
        await pool.fetch(QUERIES["seconds_until_next_due"], [], buckets[0], buckets)

    await asyncio.gather(*(ask(buckets) for buckets in shards))


# Timers and clocks are not exact: a shard due this little after the moment the claim reaches
# it counts as due (the claim itself tests each job against the database's clock).
_NOISE = 0.001


class Shards:
    """Each shard's buckets, one list per shard, read once per process (like the statements,
    for the one database a process serves). Fixed while shards only move between nodes
    (rebalancing); splitting a shard changes it, and a replica restarted after that learns it.

    It also remembers when each shard's next job may start, as the last next-due query said,
    so that a claim visits only the shards with due work (a claim per shard is a round trip:
    visiting every shard made an idle worker's start late by all of them). A shard a claim
    found nothing more in counts as not due until the next next-due query; one never asked
    counts as due. The claim turns the due shards round, so one that fills a claim first does
    not leave the others behind every time."""

    def __init__(self) -> None:
        self._buckets: list[list[int]] | None = None
        self._shard_of: dict[int, int] = {}  # bucket -> its shard's index in _buckets
        self._next_start: list[float] = []
        self._clock: tuple[float, float] = (0.0, 0.0)  # (database now, monotonic) when learnt
        self._half_trip = 0.0  # of the last next-due query
        self._turn = 0

    async def buckets(self, db: Executor) -> list[list[int]]:
        """Every shard's buckets."""
        if self._buckets is None:
            rows = await db.fetch(QUERIES.cluster("citus_shard_buckets"))
            self._buckets = [list(row["buckets"]) for row in rows]
            self._shard_of = {b: i for i, shard in enumerate(self._buckets) for b in shard}
            self._next_start = [-math.inf] * len(self._buckets)
        return self._buckets

    async def group(
        self, db: Executor, buckets: Sequence[int | None] | None, count: int
    ) -> list[tuple[list[int], list[int]]]:
        """Positions 0..count-1 of a statement's arrays grouped by the shard of their bucket
        (`buckets`, parallel to them): (the shard's buckets, the positions), one statement each,
        which Citus routes to that shard alone. Positions whose bucket is not known (None, or no
        `buckets`) form one group with every bucket: a statement every shard runs."""
        shards = await self.buckets(db)
        by_shard: dict[int, list[int]] = {}
        unknown: list[int] = []
        for at in range(count):
            bucket = None if buckets is None else buckets[at]
            shard = None if bucket is None else self._shard_of.get(bucket)
            if shard is None:
                unknown.append(at)
            else:
                by_shard.setdefault(shard, []).append(at)
        groups = [(shards[shard], at) for shard, at in by_shard.items()]
        if unknown:
            groups.append(([bucket for shard in shards for bucket in shard], unknown))
        return groups

    async def due(self, db: Executor) -> list[tuple[int, list[int]]]:
        """The shards (index, buckets) whose next job may start by now, in turn."""
        buckets = await self.buckets(db)
        # When the claim will reach the shard: half a round trip from now (the worker woke
        # that much before the next start, paceline.queue.worker).
        database_now = (
            self._clock[0] + (time.monotonic() - self._clock[1]) + self._half_trip + _NOISE
        )
        self._turn = (self._turn + 1) % len(buckets)
        order = [*range(self._turn, len(buckets)), *range(self._turn)]
        return [(i, buckets[i]) for i in order if self._next_start[i] <= database_now]

    def found_nothing_more(self, shard: int) -> None:
        """A claim took all that was due in `shard`: not due until the next next-due query."""
        self._next_start[shard] = math.inf

    def learnt(
        self, database_now: float, next_starts: list[float | None], *, read_at: float, trip: float
    ) -> None:
        """What a next-due query said: the database's now, read at `read_at` on this process's
        monotonic clock (the middle of the query's round trip `trip`), and each shard's next
        start."""
        self._clock = (database_now, read_at)
        self._half_trip = trip / 2
        self._next_start = [math.inf if start is None else start for start in next_starts]


SHARDS = Shards()
