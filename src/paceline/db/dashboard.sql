-- What the page, /metrics, /readyz and the limit auditor read. Loaded by paceline.db.queries.
-- None of these may read the history of finished jobs row by row: with a million of them, a
-- refresh a second would be a full scan a second. Each query says which index keeps it small;
-- tests/test_dashboard_sql.py proves the plans on a large history.

-- name: overview_counts
-- $1 the most rows one count reads: a backlog beyond it shows as "at least $1".
-- The live queue, exactly. Pending and running jobs are the only rows read, through the
-- partial indexes that hold nothing else (ix_jobs_due, ix_jobs_lease), so the cost follows the
-- backlog, never the history; the LIMITs cap even a huge backlog.
SELECT
    now() AS now,
    (SELECT count(*) FROM (
        SELECT 1 FROM jobs WHERE status = 'PENDING' LIMIT $1
    ) AS pending) AS pending,
    -- Due: past the reserved slot and not started yet. With free workers this stays near 0;
    -- when it grows, the workers are behind. A range of ix_jobs_due up to now().
    (SELECT count(*) FROM (
        SELECT 1 FROM jobs WHERE status = 'PENDING' AND run_at <= now() LIMIT $1
    ) AS due) AS due,
    -- At most the replicas' total concurrency: ix_jobs_lease holds only running jobs.
    (SELECT count(*) FROM jobs WHERE status = 'PROCESSING') AS processing;

-- name: overview_first_due
-- The pending job whose slot comes first: the most overdue one, or the next to start.
-- The first entry of ix_jobs_due.
SELECT id, kind, object_id, created_at, run_at
FROM jobs
WHERE status = 'PENDING'
ORDER BY run_at, id
LIMIT 1;

-- name: overview_oldest_pending
-- The pending job accepted first: the oldest wait. The first entry of the partial index
-- ix_jobs_pending_id; ids grow with acceptance. (Through ix_jobs_status_id the planner
-- sometimes preferred walking the primary key through the history instead.) On a cluster ids
-- are not acceptance order (each node has its own range): by ix_jobs_pending_created_at_id.
SELECT id, kind, object_id, created_at, run_at
FROM jobs
WHERE status = 'PENDING'
ORDER BY id  -- citus-instead: ORDER BY created_at, id
LIMIT 1;

-- name: overview_table_estimates
-- Finished jobs are too many to count on every refresh; these are estimates from the
-- statistics PostgreSQL keeps anyway: the live rows of `jobs` (pg_stat_user_tables, current
-- within seconds) and the share of each status in ANALYZE's sample (pg_stats). Catalog reads
-- only. No row when the table was never analyzed.
SELECT t.n_live_tup::float8 AS live_rows, v.status, v.share::float8 AS share
FROM pg_stat_user_tables AS t
CROSS JOIN LATERAL (
    SELECT u.status, u.share
    FROM pg_stats AS s
    CROSS JOIN LATERAL unnest(s.most_common_vals::text::text[], s.most_common_freqs)
        AS u (status, share)
    WHERE s.schemaname = t.schemaname AND s.tablename = 'jobs' AND s.attname = 'status'
) AS v
WHERE t.relid = 'jobs'::regclass;

-- name: overview_live_rows
-- The live-row count alone, for a table not analyzed yet (see overview_table_estimates).
SELECT n_live_tup::float8 AS live_rows
FROM pg_stat_user_tables
WHERE relid = 'jobs'::regclass;

-- name: overview_table_estimates citus
-- The same on a cluster, whose coordinator keeps no statistics of the shards: each shard's
-- live rows and status shares, read on its worker (run_command_on_shards: one catalog read per
-- shard), combined here: the rows summed, each status's share weighted by the rows of the
-- shards analyzed. No row before any shard was analyzed.
WITH shard AS (
    SELECT (result::jsonb ->> 'rows')::float8 AS live_rows, result::jsonb -> 'shares' AS shares
    FROM run_command_on_shards('jobs', $shard$
        SELECT json_build_object(
            -- The shard's row count as ANALYZE and autovacuum left it (reltuples; the live-row
            -- counter before its first ANALYZE). Not n_live_tup, as one server reads: a
            -- shard's counter reaches the statistics only when the worker's backend that wrote
            -- goes idle, and a TRUNCATE through the coordinator did not reset it (measured:
            -- 518 counted for 350 rows, reltuples 350).
            'rows', CASE WHEN c.reltuples >= 0 THEN c.reltuples ELSE t.n_live_tup END,
            'shares', COALESCE((
                SELECT json_object_agg(u.status, u.share)
                FROM pg_stats AS s
                CROSS JOIN LATERAL unnest(s.most_common_vals::text::text[], s.most_common_freqs)
                    AS u (status, share)
                WHERE s.schemaname = t.schemaname AND s.tablename = t.relname
                  AND s.attname = 'status'
            ), '{}'))
        FROM pg_stat_user_tables AS t
        JOIN pg_class AS c ON c.oid = t.relid
        WHERE t.relid = '%s'::regclass
    $shard$)
    WHERE success AND result <> ''
), total AS (
    SELECT sum(live_rows) AS live_rows,
           sum(live_rows) FILTER (WHERE shares <> '{}'::jsonb) AS analyzed_rows,
           count(*) FILTER (WHERE shares <> '{}'::jsonb) AS analyzed_shards
    FROM shard
)
-- If the analyzed shards count no rows, they weigh alike.
SELECT t.live_rows,
       v.status,
       COALESCE(
           sum(h.live_rows * v.share::float8) / NULLIF(t.analyzed_rows, 0),
           sum(v.share::float8) / t.analyzed_shards
       )::float8 AS share
FROM shard AS h
CROSS JOIN LATERAL jsonb_each_text(h.shares) AS v (status, share)
CROSS JOIN total AS t
GROUP BY t.live_rows, t.analyzed_rows, t.analyzed_shards, v.status;

-- name: overview_live_rows citus
-- The live rows of every shard of `jobs`, summed (one catalog read per shard, on its worker;
-- each shard's count as in overview_table_estimates citus).
SELECT sum(NULLIF(result, '')::float8) AS live_rows
FROM run_command_on_shards('jobs', $shard$
    SELECT CASE WHEN c.reltuples >= 0 THEN c.reltuples ELSE t.n_live_tup END
    FROM pg_stat_user_tables AS t
    JOIN pg_class AS c ON c.oid = t.relid
    WHERE t.relid = '%s'::regclass
$shard$)
WHERE success;

-- name: overview_finished_per_minute
-- $1 minutes. Jobs finished per minute and status over the last $1 minutes, exactly: a range
-- scan of ix_jobs_finished from the first of those minutes, so the cost follows the recent
-- throughput, not the history. The WHERE repeats the index's predicate so it applies.
SELECT date_bin('1 minute', finished_at, TIMESTAMPTZ '2000-01-01') AS minute,
       status,
       count(*) AS jobs
FROM jobs
WHERE status IN ('SUCCESS', 'FAILED', 'CANCELLED')
  AND finished_at >= date_bin(
      '1 minute', now() - make_interval(mins => $1 - 1), TIMESTAMPTZ '2000-01-01'
  )
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: overview_recent_failures
-- $1 how many. The newest failed jobs with their error: the first FAILED entries of
-- ix_jobs_status_id (status, id DESC), however many jobs succeeded (on a cluster,
-- ix_jobs_status_created_at_id: its ids are not acceptance order).
SELECT id, kind, object_id, finished_at, attempts, error
FROM jobs
WHERE status = 'FAILED'
ORDER BY id DESC  -- citus-instead: ORDER BY created_at DESC, id DESC
LIMIT $1;

-- name: overview_kind_limits
-- $1 the most overrides one kind's counts read, $2 how many kinds. Each kind's limit in force
-- (paceline_limit with no object: what a key without an override has), whether the kind has
-- a row of its own, and its overrides and paused keys among its first $1 overrides (a prefix
-- range of pk_key_limits, capped). The kinds: those with a limit row, `default`, and those a
-- replica that beat in the last minute runs (a handful of rows each).
SELECT k.kind, l.window_seconds, l.per_window, l.max_running, l.paused,
       own.kind IS NOT NULL AS own_row, o.overrides, o.paused_keys
FROM (
    SELECT kind FROM kind_limits
    UNION SELECT 'default'
    UNION SELECT unnest(kinds) FROM workers WHERE last_heartbeat > now() - interval '1 minute'
) AS k (kind)
LEFT JOIN kind_limits AS own ON own.kind = k.kind
CROSS JOIN LATERAL paceline_limit(k.kind, NULL) AS l
CROSS JOIN LATERAL (
    SELECT count(*) AS overrides, count(*) FILTER (WHERE first.paused) AS paused_keys
    -- In pk order, so the plan is that range even where the kind has most overrides.
    FROM (
        SELECT paused FROM key_limits WHERE kind = k.kind ORDER BY object_id LIMIT $1
    ) AS first
) AS o
ORDER BY k.kind
LIMIT $2;

-- name: overview_overrides
-- $1 how many. The first overrides in (kind, object) order with the limit each key has in
-- force: the first entries of pk_key_limits, each limit three primary-key probes.
SELECT o.kind, o.object_id, l.window_seconds, l.per_window, l.max_running, l.paused,
       o.updated_at
FROM key_limits AS o
CROSS JOIN LATERAL paceline_limit(o.kind, o.object_id) AS l
ORDER BY o.kind, o.object_id
LIMIT $1;

-- name: overview_paused_keys
-- $1 how many. The first paused keys, with when they were paused and how many jobs wait for
-- the resume (capped at $2): ix_key_limits_paused holds only paused keys; each count is a
-- range of ix_jobs_pending_kind_object_id_run_at_id.
SELECT p.kind, p.object_id, p.updated_at,
       (SELECT count(*) FROM (
           SELECT 1 FROM jobs AS j
           WHERE j.kind = p.kind AND j.object_id = p.object_id AND j.status = 'PENDING'
           LIMIT $2
       ) AS waiting) AS waiting
FROM key_limits AS p
WHERE p.paused
ORDER BY p.kind, p.object_id
LIMIT $1;

-- name: overview_paused_keys citus
-- The same on a cluster, which refuses a subquery correlated with a reference table
-- (key_limits): the first paused keys are read first (a subplan the coordinator runs), then
-- their pending jobs counted in one statement every shard runs. The count is capped at $2 as
-- on one server, but each shard counts a paused key's whole backlog.
WITH paused AS MATERIALIZED (
    SELECT kind, object_id, updated_at
    FROM key_limits
    WHERE paused
    ORDER BY kind, object_id
    LIMIT $1
), waiting AS (
    SELECT j.kind, j.object_id, count(*) AS waiting
    FROM jobs AS j
    JOIN paused AS p ON j.kind = p.kind AND j.object_id = p.object_id
    WHERE j.status = 'PENDING'
    GROUP BY j.kind, j.object_id
)
SELECT p.kind, p.object_id, p.updated_at, LEAST(COALESCE(w.waiting, 0), $2) AS waiting
FROM paused AS p
LEFT JOIN waiting AS w ON w.kind = p.kind AND w.object_id = p.object_id
ORDER BY p.kind, p.object_id;

-- name: replicas
-- $1 seconds without a heartbeat after which a replica counts as dead. One row per process
-- with workers (a handful); dead ones stay until the janitor forgets them.
SELECT id, host, pid, concurrency, running, started_at, last_heartbeat,
       last_heartbeat > now() - make_interval(secs => $1) AS alive
FROM workers
ORDER BY started_at, host, pid;

-- name: timeline_windows
-- $1 kind, $2 object_id, $3 W, $4 N (the key's limit in force). When the key last started a
-- run, and the slot the one-statement enqueue would give a plain job of it now, read from its
-- slot row with the enqueue's own test (worked out under this limit, nothing reserved ahead in
-- the way); NULL where the enqueue would leave the job to the planner. Primary-key probes.
SELECT now() AS now,
       (SELECT last_started_at FROM object_starts WHERE kind = $1 AND object_id = $2)
           AS last_started_at,
       (SELECT GREATEST(s.next_slot, now()) FROM object_slots AS s
        WHERE s.kind = $1 AND s.object_id = $2
          AND s.window_seconds = $3 AND s.per_window = $4
          AND GREATEST(s.next_slot, now()) + make_interval(secs => $3) <= s.open_until)
           AS one_statement_slot;

-- name: timeline_window_starts
-- $1 kind, $2 object_id, $3 W, $4 N. The key's newest starts within the last W, at most N (what
-- the claim counts for a limit of N > 1): the newest entries of
-- ix_job_attempts_kind_object_id_started_at for the key.
SELECT started_at
FROM job_attempts
WHERE kind = $1 AND object_id = $2 AND started_at > now() - make_interval(secs => $3)
ORDER BY started_at DESC
LIMIT $4;

-- name: timeline_waiting
-- $1 kind, $2 object_id, $3 how many. The key's pending jobs in the order they will start
-- (slot order, I4'), each holding its reserved slot: ix_jobs_pending_kind_object_id_run_at_id.
SELECT id, created_at, run_at, not_before, attempts, error
FROM jobs
WHERE kind = $1 AND object_id = $2 AND status = 'PENDING'
ORDER BY run_at, id
LIMIT $3;

-- name: timeline_waiting_count
-- $1 kind, $2 object_id, $3 the most rows counted. ix_jobs_pending_kind_object_id_run_at_id again,
-- capped.
SELECT count(*)
FROM (
    SELECT 1 FROM jobs WHERE kind = $1 AND object_id = $2 AND status = 'PENDING' LIMIT $3
) AS waiting;

-- name: timeline_runs
-- $1 kind, $2 object_id, $3 how many. The key's latest starts (every attempt, retries
-- included), newest first: ix_job_attempts_kind_object_id_started_at read backwards. The
-- replica is a
-- primary-key probe of `workers`; gone once that replica stopped.
SELECT a.job_id, a.attempt, a.started_at, a.finished_at, a.outcome, a.error, a.worker_id,
       w.host, w.pid
FROM job_attempts AS a
LEFT JOIN workers AS w ON w.id = a.worker_id
WHERE a.kind = $1 AND a.object_id = $2
ORDER BY a.started_at DESC, a.job_id DESC, a.attempt DESC
LIMIT $3;

-- name: audit_horizon
-- $1 seconds. The newest start the auditor may trust to be committed: now() minus a margin
-- longer than any claim transaction, so a start committed late is not skipped.
SELECT now() - make_interval(secs => $1) AS horizon;

-- name: audit_starts
-- $1 after, $2 up to (both start times), $3 how many earlier starts of its key to look at for
-- I7. The starts in ($1, $2] that broke their key's limit, each read once with the limit the
-- claim started it under (recorded with it; for a start older than migration 0012, the one
-- in force now), so a limit tightened since does not make a lawful start look like one:
-- - `previous_*` set: it came less than W after the N-th previous start of the key, N + 1
--   starts in an interval shorter than W, a violation of I1' (N = 1: two starts less than W
--   apart). One backwards range of ix_job_attempts_kind_object_id_started_at, N entries long.
-- - `running_job_ids` holding M or more: it was made while M or more attempts of the key ran
--   (started before it, unfinished at its start), a violation of I7. Bounded per start: the
--   key's $3 previous starts, the same index; an attempt that overlapped it but started more
--   than $3 starts of its key earlier is not seen.
-- The starts come from ix_job_attempts_started_at (a few seconds' worth per call); the limit
-- is three primary-key probes.
SELECT a.kind, a.object_id, a.job_id, a.attempt, a.started_at,
       lim.window_seconds, lim.per_window, lim.max_running,
       p.job_id AS previous_job_id, p.attempt AS previous_attempt,
       p.started_at AS previous_started_at, o.running_job_ids
FROM job_attempts AS a
CROSS JOIN LATERAL paceline_limit(a.kind, a.object_id) AS in_force
CROSS JOIN LATERAL (
    SELECT COALESCE(a.window_seconds, in_force.window_seconds) AS window_seconds,
           COALESCE(a.per_window, in_force.per_window) AS per_window,
           COALESCE(a.max_running, in_force.max_running) AS max_running
) AS lim
LEFT JOIN LATERAL (
    SELECT p.job_id, p.attempt, p.started_at
    FROM job_attempts AS p
    WHERE p.kind = a.kind  -- citus: AND p.bucket = a.bucket
      AND p.object_id = a.object_id
      AND p.started_at <= a.started_at
      -- Starts at the same instant are counted once each, in one order.
      AND (p.started_at, p.job_id, p.attempt) < (a.started_at, a.job_id, a.attempt)
    ORDER BY p.started_at DESC, p.job_id DESC, p.attempt DESC
    OFFSET lim.per_window - 1
    LIMIT 1
) AS p ON p.started_at > a.started_at - make_interval(secs => lim.window_seconds)
CROSS JOIN LATERAL (
    SELECT array_agg(e.job_id ORDER BY e.started_at, e.job_id) AS running_job_ids
    FROM (
        SELECT p.job_id, p.started_at, p.finished_at
        FROM job_attempts AS p
        WHERE p.kind = a.kind  -- citus: AND p.bucket = a.bucket
          AND p.object_id = a.object_id
          AND p.started_at <= a.started_at
          AND (p.started_at, p.job_id, p.attempt) < (a.started_at, a.job_id, a.attempt)
        ORDER BY p.started_at DESC, p.job_id DESC, p.attempt DESC
        LIMIT $3
    ) AS e
    -- Still running when `a` started: unfinished (finished_at NULL) or finished after it.
    WHERE e.finished_at IS NULL OR e.finished_at > a.started_at
) AS o
WHERE a.started_at > $1
  AND a.started_at <= $2
  AND (p.job_id IS NOT NULL OR cardinality(o.running_job_ids) >= lim.max_running)
ORDER BY a.started_at;

-- name: schema_revisions
-- What Alembic recorded: the migrations the database is at (/readyz compares with the code).
SELECT version_num FROM alembic_version;

-- name: job_ahead
-- $1 kind, $2 object_id, $3 run_at, $4 id of a pending job. The key's pending job just before
-- it in slot order (I4'), if any: what the job page needs to say why the job waits, one
-- backwards probe of ix_jobs_pending_kind_object_id_run_at_id.
SELECT id, created_at, run_at, not_before, attempts, error
FROM jobs
WHERE kind = $1 AND object_id = $2 AND status = 'PENDING' AND (run_at, id) < ($3, $4)
ORDER BY run_at DESC, id DESC
LIMIT 1;

-- name: job_attempts
-- $1 job id. Every attempt of one job, oldest first, with the replica that ran it (gone once
-- that replica stopped): a range of pk_job_attempts, a primary-key probe of `workers` each.
SELECT a.attempt, a.started_at, a.finished_at, a.outcome, a.error, a.worker_id, w.host, w.pid
FROM job_attempts AS a
LEFT JOIN workers AS w ON w.id = a.worker_id
WHERE a.job_id = $1
ORDER BY a.attempt;

-- name: finished_per_kind
-- $1 minutes, $2 minutes per bar. Jobs finished per kind, bar and outcome over the last $1
-- minutes (the page's chart): a range scan of ix_jobs_finished from the first bar, so the
-- cost follows the last hour's throughput, not the history.
SELECT kind,
       date_bin(make_interval(mins => $2), finished_at, TIMESTAMPTZ '2000-01-01') AS bar,
       count(*) FILTER (WHERE status = 'SUCCESS') AS succeeded,
       count(*) FILTER (WHERE status = 'FAILED') AS failed,
       count(*) FILTER (WHERE status = 'CANCELLED') AS cancelled,
       date_bin(make_interval(mins => $2), now(), TIMESTAMPTZ '2000-01-01') AS current_bar
FROM jobs
WHERE status IN ('SUCCESS', 'FAILED', 'CANCELLED')
  AND finished_at >= date_bin(
      make_interval(mins => $2), now() - make_interval(mins => $1 - $2), TIMESTAMPTZ '2000-01-01'
  )
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: busiest_keys
-- $1 how many keys, $2 the most pending jobs read. The keys with the longest backlogs among
-- the first $2 pending jobs (the limits page): each with its waiting jobs, its first slot
-- (infinity while paused) and the slot a new job would get. An index-only range of
-- ix_jobs_pending_kind_object_id_run_at_id, capped, then a probe of pk_object_slots per key.
SELECT b.kind, b.object_id, b.waiting, b.first_slot, s.next_slot, now() AS now
FROM (
    SELECT kind, object_id, count(*) AS waiting, min(run_at) AS first_slot
    FROM (
        SELECT kind, object_id, run_at FROM jobs WHERE status = 'PENDING' LIMIT $2
    ) AS pending
    GROUP BY kind, object_id
    ORDER BY count(*) DESC, kind, object_id
    LIMIT $1
) AS b
LEFT JOIN object_slots AS s ON s.kind = b.kind AND s.object_id = b.object_id
ORDER BY b.waiting DESC, b.kind, b.object_id;
