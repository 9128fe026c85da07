"""Rows as the queue would have left them, written straight into a test's database.

Times are seconds relative to the database's now() (negative: in the past), so tests agree
with the server's clock, as paceline does.
"""

from __future__ import annotations

import uuid

import asyncpg

from paceline.db.queries import QUERIES


def bucket_of(kind: str, object_id: str) -> str:
    """The SQL of a per-key row's `bucket` (kind and object_id as SQL): its shard key on a Citus
    cluster (make test-citus), which refuses a row without it; NULL on one server, as the queue
    leaves it there."""
    return f"paceline_bucket({kind}, {object_id})" if QUERIES.citus else "NULL"


async def insert_job(
    db: asyncpg.Connection,
    object_id: int,
    status: str = "PENDING",
    *,
    created: float = -60.0,
    run_at: float = 0.0,
    started: float | None = None,
    finished: float | None = None,
    attempts: int = 0,
    error: str | None = None,
) -> int:
    """One job; returns its id. A finished job's duration is finished - started."""
    job_id: int = await db.fetchval(
        f"""
        INSERT INTO jobs (object_id, status, created_at, run_at, started_at, finished_at,
                          duration, attempts, error, lease_expires_at, bucket)
        VALUES ($1, $2, now() + make_interval(secs => $3), now() + make_interval(secs => $4),
                now() + make_interval(secs => $5), now() + make_interval(secs => $6),
                $6 - $5, $7, $8,
                -- A running job holds a lease (ck_jobs_lease_while_processing).
                CASE WHEN $2 = 'PROCESSING' THEN now() + interval '30 seconds' END,
                {bucket_of("'default'", "$1")})
        RETURNING id
        """,
        object_id,
        status,
        created,
        run_at,
        started,
        finished,
        attempts,
        error,
    )
    return job_id


async def insert_attempt(
    db: asyncpg.Connection,
    job_id: int,
    attempt: int,
    *,
    started: float,
    finished: float | None = None,
    outcome: str | None = None,
    error: str | None = None,
    worker_id: uuid.UUID | None = None,
) -> None:
    """One start of a job (its object is the job's), as the worker records it."""
    await db.execute(
        """
        INSERT INTO job_attempts (job_id, attempt, object_id, worker_id, started_at,
                                  finished_at, outcome, error, bucket)
        SELECT $1, $2, object_id, $3, now() + make_interval(secs => $4),
               now() + make_interval(secs => $5), $6, $7, bucket
        FROM jobs WHERE id = $1
        """,
        job_id,
        attempt,
        worker_id,
        started,
        finished,
        outcome,
        error,
    )


async def insert_worker(
    db: asyncpg.Connection,
    host: str,
    pid: int,
    *,
    started: float = -600.0,
    heartbeat: float = 0.0,
    concurrency: int = 8,
    running: int = 0,
) -> uuid.UUID:
    """A replica's registration row, with its last heartbeat `heartbeat` seconds from now."""
    worker_id = uuid.uuid4()
    await db.execute(
        """
        INSERT INTO workers (id, host, pid, concurrency, running, started_at, last_heartbeat)
        VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6),
                now() + make_interval(secs => $7))
        """,
        worker_id,
        host,
        pid,
        concurrency,
        running,
        started,
        heartbeat,
    )
    return worker_id


# Errors a real upstream gives, and one that tries to be markup: the page must show it as text.
DEMO_ERRORS = (
    "HTTPError: 503 Service Unavailable from the billing API",
    "TimeoutError: the handler ran longer than 30 s",
    "ValueError: object has no owner",
    '<img src=x onerror="alert(1)"> was not found',
)


async def seed_busy_queue(dsn: str, window: float) -> dict[str, int]:
    """A queue of some 350 jobs in every state, as a busy service has after a while: the last
    13 minutes of history (some failed), yesterday's, running jobs on two live replicas and a
    dead one, jobs past their slot (the workers are behind) and jobs waiting for their window.
    Returns what the page should count."""
    conn = await asyncpg.connect(dsn)
    try:
        live = [uuid.uuid4(), uuid.uuid4()]
        await conn.execute(
            """
            INSERT INTO workers (id, host, pid, concurrency, running, started_at, last_heartbeat)
            VALUES ($1, 'paceline-1', 4711, 8, 3, now() - interval '3 hours', now()),
                   ($2, 'paceline-2', 4712, 8, 3, now() - interval '3 hours', now()),
                   ($3, 'paceline-3', 4713, 8, 0, now() - interval '2 hours',
                    now() - interval '47 seconds');
            """,
            *live,
            uuid.uuid4(),
        )
        # The last 13 minutes: one job every ~3.4 s (each object's 203 s apart); every 13th failed.
        await conn.execute(
            f"""
            INSERT INTO jobs (object_id, status, created_at, run_at, started_at, finished_at,
                              duration, attempts, error, worker_id, bucket)
            SELECT 1 + g % 60, CASE WHEN g % 13 = 0 THEN 'FAILED' ELSE 'SUCCESS' END,
                   f - interval '40 seconds', f - interval '2 seconds',
                   f - interval '1.5 seconds', f, 1.5,
                   1,
                   CASE WHEN g % 13 = 0 THEN ($2::text[])[1 + (g / 13) % 4] END,
                   ($1::uuid[])[1 + g % 2], {bucket_of("'default'", "1 + g % 60")}
            FROM generate_series(1, 230) AS g,
                 LATERAL (SELECT now() - make_interval(secs => 780 - g * 3.39)) AS t (f)
            """,
            live,
            list(DEMO_ERRORS),
        )
        # Running now, on the two live replicas.
        await conn.execute(
            f"""
            INSERT INTO jobs (object_id, status, created_at, run_at, started_at, attempts,
                              worker_id, lease_expires_at, bucket)
            SELECT 100 + g, 'PROCESSING', now() - interval '1 minute', now() - interval '1 second',
                   now() - interval '1 second', 1, ($1::uuid[])[1 + g % 2],
                   now() + interval '30 seconds', {bucket_of("'default'", "100 + g")}
            FROM generate_series(1, 6) AS g
            """,
            live,
        )
        await conn.execute(
            f"""
            -- Yesterday's, and a few cancelled.
            INSERT INTO jobs (object_id, status, created_at, run_at, started_at, finished_at,
                              duration, attempts, bucket)
            SELECT 1 + g % 60, 'SUCCESS', t, t, t, t + interval '1 second', 1.0, 1,
                   {bucket_of("'default'", "1 + g % 60")}
            FROM generate_series(1, 40) AS g,
                 LATERAL (SELECT now() - interval '1 day' + make_interval(mins => g)) AS a (t);
            INSERT INTO jobs (object_id, status, created_at, run_at, finished_at, bucket)
            SELECT 60 + g, 'CANCELLED', now() - interval '2 hours', now() + interval '1 hour',
                   now() - interval '1 hour', {bucket_of("'default'", "60 + g")}
            FROM generate_series(1, 4) AS g;
            """
        )
        await conn.execute(
            f"""
            -- Waiting for their window: FIFO per object, each slot a window after the object's
            -- previous start or slot, as enqueue hands them out.
            WITH last AS (
                SELECT object_id, max(started_at) AS started FROM jobs GROUP BY object_id
            )
            INSERT INTO jobs (object_id, created_at, run_at, bucket)
            SELECT o, now() - make_interval(secs => 400 - g),
                   GREATEST(
                       now() + make_interval(secs => 20 + g * 3),
                       last.started + make_interval(secs => {window})
                   ) + make_interval(secs => (g / 20) * {window}),
                   {bucket_of("'default'", "o")}
            FROM generate_series(1, 65) AS g
            CROSS JOIN LATERAL (SELECT 1 + g % 20) AS x (o)
            LEFT JOIN last ON last.object_id = o;
            -- Past their slot: the workers are behind.
            INSERT INTO jobs (object_id, created_at, run_at, bucket)
            SELECT 200 + g, now() - interval '20 seconds', now() - make_interval(secs => 6 - g),
                   {bucket_of("'default'", "200 + g")}
            FROM generate_series(1, 5) AS g;
            INSERT INTO job_attempts (job_id, attempt, object_id, worker_id, started_at,
                                      finished_at, outcome, error, bucket)
            SELECT id, attempts, object_id, worker_id, started_at, finished_at,
                   CASE WHEN status = 'PROCESSING' THEN NULL ELSE status END, error, bucket
            FROM jobs WHERE started_at IS NOT NULL;
            INSERT INTO object_starts (object_id, last_started_at, bucket)
            SELECT object_id, max(started_at), bucket FROM jobs WHERE started_at IS NOT NULL
            GROUP BY object_id, bucket;
            INSERT INTO object_slots (object_id, next_slot, bucket)
            SELECT object_id, max(run_at) + make_interval(secs => {window}), bucket FROM jobs
            GROUP BY object_id, bucket;
            """
        )
        # As autovacuum would: analyze once this session's row counts reached the statistics
        # (they do when it goes idle; forcing it avoids waiting seconds for that).
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.execute("ANALYZE jobs")
        rows = await conn.fetch("SELECT status, count(*) FROM jobs GROUP BY 1")
        counts = {row["status"]: row["count"] for row in rows}
        counts["due"] = await conn.fetchval(
            "SELECT count(*) FROM jobs WHERE status = 'PENDING' AND run_at <= now()"
        )
        counts["total"] = sum(row["count"] for row in rows)
        return counts
    finally:
        await conn.close()
