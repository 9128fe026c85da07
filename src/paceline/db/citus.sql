-- A Citus cluster: what `paceline migrate` does on a database with the citus extension, and
-- what the worker asks the cluster about its shards. Loaded by paceline.db.queries, run only
-- through paceline.db.citus. Every block but the first is a cluster's only (`citus` after its
-- name): one server never runs it, and its registry does not hold it.

-- name: citus_installed
-- Whether this database has the citus extension (then the per-key tables are distributed).
SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus');

-- name: citus_distributed citus
-- Whether `jobs` is already a distributed table (a second `paceline migrate` does nothing).
SELECT EXISTS (
    SELECT 1 FROM pg_dist_partition
    WHERE logicalrelid = 'jobs'::regclass AND partmethod = 'h'
);

-- name: citus_lock citus
-- $1 the migrations' advisory lock key: held to the end of the caller's transaction.
SELECT pg_advisory_xact_lock($1);

-- name: citus_distribute citus
-- One transaction (the caller's). Fill the bucket of rows written before (an upgraded
-- single-server database), make it part of every key of the per-key tables (Citus needs the
-- distribution column in each primary key and foreign key), then distribute the four tables on
-- it, co-located: one key's rows of all four live in one shard group, so every statement about
-- one key is a router query on one worker. The limits are small and read by the claim with
-- every key's jobs: reference tables (a copy on every node). workers, idempotency_keys,
-- sessions and service_state stay local tables on the coordinator: no hot statement joins them
-- with a per-key table. The foreign key of idempotency_keys to jobs cannot cross from a local
-- table to a distributed one; it only cascaded deletes of jobs pruned days after their key.
SET LOCAL citus.multi_shard_modify_mode TO 'sequential';
ALTER TABLE job_attempts DROP CONSTRAINT IF EXISTS fk_job_attempts_job_id_jobs;
ALTER TABLE idempotency_keys DROP CONSTRAINT IF EXISTS fk_idempotency_keys_job_id_jobs;
UPDATE jobs SET bucket = paceline_bucket(kind, object_id) WHERE bucket IS NULL;
UPDATE job_attempts SET bucket = paceline_bucket(kind, object_id) WHERE bucket IS NULL;
UPDATE object_slots SET bucket = paceline_bucket(kind, object_id) WHERE bucket IS NULL;
UPDATE object_starts SET bucket = paceline_bucket(kind, object_id) WHERE bucket IS NULL;
ALTER TABLE jobs ALTER COLUMN bucket SET NOT NULL,
    DROP CONSTRAINT pk_jobs, ADD CONSTRAINT pk_jobs PRIMARY KEY (bucket, id);
-- Statements that know only a job's id (GET /jobs/{id}, the outcome of a run) look on every
-- shard; this keeps each shard's part of that one probe.
CREATE INDEX IF NOT EXISTS ix_jobs_id ON jobs (id);
ALTER TABLE job_attempts ALTER COLUMN bucket SET NOT NULL,
    DROP CONSTRAINT pk_job_attempts,
    ADD CONSTRAINT pk_job_attempts PRIMARY KEY (bucket, job_id, attempt);
ALTER TABLE object_slots ALTER COLUMN bucket SET NOT NULL,
    DROP CONSTRAINT pk_object_slots,
    ADD CONSTRAINT pk_object_slots PRIMARY KEY (bucket, kind, object_id);
ALTER TABLE object_starts ALTER COLUMN bucket SET NOT NULL,
    DROP CONSTRAINT pk_object_starts,
    ADD CONSTRAINT pk_object_starts PRIMARY KEY (bucket, kind, object_id);
SELECT create_reference_table('kind_limits');
SELECT create_reference_table('key_limits');
SELECT create_distributed_table('jobs', 'bucket', colocate_with => 'none');
SELECT create_distributed_table('job_attempts', 'bucket', colocate_with => 'jobs');
SELECT create_distributed_table('object_slots', 'bucket', colocate_with => 'jobs');
SELECT create_distributed_table('object_starts', 'bucket', colocate_with => 'jobs');
ALTER TABLE job_attempts ADD CONSTRAINT fk_job_attempts_job_id_jobs
    FOREIGN KEY (bucket, job_id) REFERENCES jobs (bucket, id) ON DELETE CASCADE;
-- The functions the shards' statements call, on every worker.
SELECT create_distributed_function('paceline_bucket(text, bigint)');
SELECT create_distributed_function('paceline_limit(text, bigint)');

-- name: citus_shard_buckets citus
-- Which buckets each shard of `jobs` holds: one row per shard, its buckets in order. A claim
-- names one shard's buckets (`bucket = ANY (...)`), which Citus routes to that shard alone.
-- (Citus places a smallint by its hashint2 within the shards' hash ranges: the same answer as
-- get_shard_id_for_distribution_column, which took a second for 1024 buckets.)
SELECT s.shardid AS shard, array_agg(b::smallint ORDER BY b) AS buckets
FROM generate_series(0, 1023) AS b
JOIN pg_dist_shard AS s
    ON s.logicalrelid = 'jobs'::regclass
   AND hashint2(b::smallint) BETWEEN s.shardminvalue::int AND s.shardmaxvalue::int
GROUP BY s.shardid
ORDER BY s.shardid;

-- name: citus_reserve_function citus
-- A key's next $6 jobs' slots on a Citus cluster (the enqueue's upsert), under $5 starts per
-- $4 seconds (more than one job only under one start per window): the first job's slot, or
-- NULL when they would crowd a reservation past a gap or the key's row was worked out under
-- another limit (the row then stays locked to the end of the transaction, as the one-server
-- upsert leaves it). Citus refuses that upsert as one statement (`ON CONFLICT ... DO UPDATE
-- SET` may not compute with now(), nor add an interval to a timestamptz); here it is an
-- insert-or-lock, then an update with values computed in PL/pgSQL by the same
-- paceline_next_slots: the same row lock serializes a key's submitters, and the same slots
-- come out.
CREATE OR REPLACE FUNCTION paceline_reserve(
    p_bucket smallint, p_kind text, p_object_id bigint, p_window float8, p_per_window int,
    p_count int
) RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := now();
    v_advance interval := p_count * make_interval(secs => p_window);
    v_next timestamptz;
    v_open timestamptz;
    v_recent timestamptz[];
    v_window float8;
    v_per_window int;
    v_slot timestamptz;
BEGIN
    LOOP
        -- A new key: its first job starts now.
        SELECT f.next_slot, f.recent INTO v_next, v_recent
        FROM paceline_next_slots(v_now, NULL, v_advance, p_window, p_per_window) AS f;
        INSERT INTO object_slots (
            bucket, kind, object_id, next_slot, recent, window_seconds, per_window)
        VALUES (p_bucket, p_kind, p_object_id, v_next, v_recent, p_window, p_per_window)
        ON CONFLICT (bucket, kind, object_id) DO NOTHING;
        IF FOUND THEN
            RETURN v_now;
        END IF;
        -- A known key: lock its row (concurrent submitters of this key wait here).
        SELECT s.next_slot, s.open_until, s.recent, s.window_seconds, s.per_window
        INTO v_next, v_open, v_recent, v_window, v_per_window
        FROM object_slots AS s
        WHERE s.bucket = p_bucket AND s.kind = p_kind AND s.object_id = p_object_id
        FOR UPDATE;
        IF FOUND THEN
            v_slot := GREATEST(v_next, v_now);
            IF v_window IS DISTINCT FROM p_window OR v_per_window IS DISTINCT FROM p_per_window
               OR v_slot + GREATEST(v_advance, make_interval(secs => p_window)) > v_open THEN
                RETURN NULL;
            END IF;
            SELECT f.next_slot, f.recent INTO v_next, v_recent
            FROM paceline_next_slots(v_slot, v_recent, v_advance, p_window, p_per_window) AS f;
            UPDATE object_slots SET next_slot = v_next, recent = v_recent
            WHERE bucket = p_bucket AND kind = p_kind AND object_id = p_object_id;
            RETURN v_slot;
        END IF;
        -- Pruned between the two statements: the key is new again.
    END LOOP;
END
$$;

-- name: citus_enqueue_function citus
-- The cluster's enqueue of one key (jobs.sql, `enqueue citus`), distributed by its bucket: Citus
-- runs the call on the worker that holds the key's shard, in one round trip.
CREATE OR REPLACE FUNCTION paceline_enqueue(
    p_bucket smallint, p_kind text, p_object_id bigint, p_payload jsonb, p_absorbed int
) RETURNS SETOF jobs LANGUAGE plpgsql AS $$
DECLARE
    v_limit record;
    v_slot timestamptz;
BEGIN
    -- The key's limit (else, while it is paused, the exact planner places the job: no row).
    SELECT l.window_seconds, l.per_window INTO v_limit
    FROM paceline_limit(p_kind, p_object_id) AS l
    WHERE NOT l.paused;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    v_slot := paceline_reserve(
        p_bucket, p_kind, p_object_id, v_limit.window_seconds, v_limit.per_window, 1);
    IF v_slot IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    INSERT INTO jobs (bucket, kind, object_id, run_at, payload, absorbed)
    VALUES (p_bucket, p_kind, p_object_id, v_slot, p_payload, p_absorbed)
    RETURNING *;
END
$$;

-- name: citus_enqueue_batch_function citus
-- The cluster's batch enqueue (jobs.sql, `enqueue_batch citus`): the same slots as the
-- one-server statement (under one start per window the k-th job of a key in the batch takes
-- the k-th slot after the key's next free one; under N > 1 a key's only job in the batch takes
-- its next free slot), keys reserved in (kind, object_id) order so that two batches wait for
-- each other instead of deadlocking, jobs inserted in request order (so in id order). $1
-- routes the call: a bucket when every job is of one key (then it runs on that key's worker),
-- NULL for a batch of several keys, which runs on the coordinator, each statement routed to
-- its key's shard, all in the caller's one transaction (all or none).
CREATE OR REPLACE FUNCTION paceline_enqueue_batch(
    p_route smallint, p_kinds text[], p_object_ids bigint[], p_payloads jsonb[]
) RETURNS SETOF jobs LANGUAGE plpgsql AS $$
DECLARE
    v_key record;
    v_item record;
    v_keys text[] := '{}';
    v_firsts timestamptz[] := '{}';
    v_windows interval[] := '{}';
    v_first timestamptz;
    v_at int;
BEGIN
    FOR v_key IN
        SELECT c.kind, c.object_id, c.n, l.window_seconds, l.per_window
        FROM (
            SELECT t.kind, t.object_id, count(*)::int AS n
            FROM unnest(p_kinds, p_object_ids) AS t(kind, object_id)
            GROUP BY t.kind, t.object_id
        ) AS c
        CROSS JOIN LATERAL paceline_limit(c.kind, c.object_id) AS l
        WHERE NOT l.paused AND (l.per_window = 1 OR c.n = 1)
        ORDER BY c.kind, c.object_id
    LOOP
        v_first := paceline_reserve(
            paceline_bucket(v_key.kind, v_key.object_id), v_key.kind, v_key.object_id,
            v_key.window_seconds, v_key.per_window, v_key.n);
        IF v_first IS NOT NULL THEN
            v_keys := v_keys || (v_key.kind || ' ' || v_key.object_id);
            v_firsts := v_firsts || v_first;
            v_windows := v_windows || make_interval(secs => v_key.window_seconds);
        END IF;
    END LOOP;
    FOR v_item IN
        SELECT t.kind, t.object_id, t.payload,
               row_number() OVER (PARTITION BY t.kind, t.object_id ORDER BY t.ord) AS k
        FROM unnest(p_kinds, p_object_ids, p_payloads) WITH ORDINALITY
            AS t(kind, object_id, payload, ord)
        ORDER BY t.ord
    LOOP
        v_at := array_position(v_keys, v_item.kind || ' ' || v_item.object_id);
        IF v_at IS NOT NULL THEN
            RETURN QUERY
            INSERT INTO jobs (bucket, kind, object_id, run_at, payload)
            VALUES (paceline_bucket(v_item.kind, v_item.object_id), v_item.kind,
                    v_item.object_id, v_firsts[v_at] + (v_item.k - 1) * v_windows[v_at],
                    v_item.payload)
            RETURNING *;
        END IF;
    END LOOP;
END
$$;

-- name: citus_claim_function citus
-- The cluster's claim of one shard (jobs.sql, `claim_due_jobs citus`): the same rules as the
-- one-server claim (its comments say why each is there), restricted to one shard's buckets and
-- distributed by a bucket of that shard, so the whole claim runs on the worker holding it. Its
-- statements are planned out of index paths only, as paceline.db.plans does for the one-server
-- claim (here as the function's own settings); PL/pgSQL keeps the plans it makes, since planning
-- through Citus on every call cost more than the claim itself.
CREATE OR REPLACE FUNCTION paceline_claim(
    p_bucket smallint, p_buckets smallint[], p_limit int, p_lease float8, p_worker uuid,
    p_kinds text[]
) RETURNS SETOF jobs LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off
SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
DECLARE
    v_ids bigint[];
    -- The limit each job is started under, in v_ids' order: recorded with its attempt, as the
    -- one-server claim records it, for the limit auditor.
    v_windows float8[];
    v_per_window int[];
    v_max_running int[];
    v_at int;
    v_started timestamptz;
    v_job jobs;
    -- The started jobs' keys and attempts, written after the loop in two statements: a
    -- statement on a distributed table costs its planning through Citus, about half a
    -- millisecond, so two per job made the claim of 256 jobs take 0.3 s.
    v_started_ids bigint[] := '{}';
    v_attempts int[] := '{}';
    v_buckets smallint[] := '{}';
    v_kinds text[] := '{}';
    v_objects bigint[] := '{}';
    v_job_windows float8[] := '{}';
    v_job_per_window int[] := '{}';
    v_job_max_running int[] := '{}';
BEGIN
    SELECT array_agg(due.id), array_agg(due.window_seconds), array_agg(due.per_window),
           array_agg(due.max_running)
    INTO v_ids, v_windows, v_per_window, v_max_running
    FROM (
        SELECT j.id, lim.window_seconds, lim.per_window, lim.max_running
        FROM jobs AS j
        -- The key's limit, inlined when the queries are read (queries.py, as in every cluster
        -- statement).
        CROSS JOIN LATERAL paceline_limit(j.kind, j.object_id) AS lim
        WHERE j.bucket = ANY (p_buckets)
          AND j.status = 'PENDING'
          -- Due as of the claim's statement, not its transaction (jobs.sql says why).
          AND j.run_at <= statement_timestamp()
          AND j.kind = ANY (p_kinds)
          AND NOT lim.paused
          AND (
              SELECT 1 FROM jobs AS older
              WHERE older.bucket = ANY (p_buckets) AND older.bucket = j.bucket
                AND older.kind = j.kind AND older.object_id = j.object_id
                AND older.status = 'PENDING'
                AND (older.run_at, older.id) < (j.run_at, j.id)
              LIMIT 1
          ) IS NULL
          AND CASE WHEN lim.per_window = 1 THEN (
                  SELECT 1 FROM object_starts AS s
                  WHERE s.bucket = ANY (p_buckets) AND s.bucket = j.bucket
                    AND s.kind = j.kind AND s.object_id = j.object_id
                    AND s.last_started_at
                        > statement_timestamp() - make_interval(secs => lim.window_seconds)
                  LIMIT 1
              ) IS NULL
              ELSE (
                  SELECT count(*) FROM (
                      SELECT 1 FROM job_attempts AS a
                      WHERE a.bucket = ANY (p_buckets) AND a.bucket = j.bucket
                        AND a.kind = j.kind AND a.object_id = j.object_id
                        AND a.started_at
                            > statement_timestamp() - make_interval(secs => lim.window_seconds)
                      LIMIT lim.per_window
                  ) AS recent
              ) < lim.per_window
          END
          AND (
              SELECT count(*) FROM (
                  SELECT 1 FROM jobs AS r
                  WHERE r.bucket = ANY (p_buckets) AND r.bucket = j.bucket
                    AND r.kind = j.kind AND r.object_id = j.object_id
                    AND r.status = 'PROCESSING'
                  LIMIT lim.max_running
              ) AS running
          ) < lim.max_running
        ORDER BY j.run_at, j.id
        LIMIT p_limit
        FOR UPDATE OF j SKIP LOCKED
    ) AS due;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    -- The start is read after the checks' snapshot, as the one-server claim reads it
    -- (jobs.sql, claim_due_jobs, says why); a variable, as Citus refuses a VOLATILE function
    -- in an UPDATE of a distributed table.
    v_started := clock_timestamp();
    FOR v_job IN
        UPDATE jobs AS j
        SET status = 'PROCESSING', started_at = v_started, attempts = j.attempts + 1,
            lease_expires_at = v_started + make_interval(secs => p_lease),
            worker_id = p_worker
        WHERE j.bucket = ANY (p_buckets) AND j.id = ANY (v_ids)
        RETURNING j.*
    LOOP
        v_at := array_position(v_ids, v_job.id);
        v_started_ids := v_started_ids || v_job.id;
        v_attempts := v_attempts || v_job.attempts;
        v_buckets := v_buckets || v_job.bucket;
        v_kinds := v_kinds || v_job.kind;
        v_objects := v_objects || v_job.object_id;
        v_job_windows := v_job_windows || v_windows[v_at];
        v_job_per_window := v_job_per_window || v_per_window[v_at];
        v_job_max_running := v_job_max_running || v_max_running[v_at];
        RETURN NEXT v_job;
    END LOOP;
    -- At most one job per key starts here, so each key's start row is written once.
    INSERT INTO object_starts AS s (bucket, kind, object_id, last_started_at)
    SELECT b, k, o, v_started FROM unnest(v_buckets, v_kinds, v_objects) AS started (b, k, o)
    ON CONFLICT (bucket, kind, object_id)
    DO UPDATE SET last_started_at = EXCLUDED.last_started_at;
    INSERT INTO job_attempts (
        bucket, job_id, attempt, kind, object_id, worker_id, started_at,
        window_seconds, per_window, max_running
    )
    SELECT b, i, n, k, o, p_worker, v_started, w, pw, mr
    FROM unnest(v_buckets, v_started_ids, v_attempts, v_kinds, v_objects, v_job_windows,
                v_job_per_window, v_job_max_running) AS started (b, i, n, k, o, w, pw, mr);
END
$$;

-- name: citus_next_due_function citus
-- The cluster's next-due query of one shard (jobs.sql, `seconds_until_next_due citus`): the
-- one-server statement with its `-- citus` lines applied, its parameters named, written in
-- when the queries are read (queries.py, `{citus_body:...}`), so the two stay one text. A
-- function distributed by a bucket of the shard, so it runs on the worker holding it, where
-- PL/pgSQL keeps its plan (planning the statement anew through Citus cost more than running
-- it).
CREATE OR REPLACE FUNCTION paceline_next_due(
    p_bucket smallint, p_buckets smallint[], p_kinds text[]
) RETURNS TABLE (now float8, next_start float8) LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off
SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
BEGIN
    RETURN QUERY
    {citus_body:seconds_until_next_due $1=p_kinds $2=p_buckets};
END
$$;

-- name: citus_listing_indexes_made citus
-- Whether citus_listing_indexes ran (it makes them in one transaction).
SELECT to_regclass('ix_jobs_pending_created_at_id') IS NOT NULL;

-- name: citus_listing_indexes citus
-- Once per cluster, by the first migrate that finds them missing (a cluster distributed by an
-- earlier release gets them too). Each node
-- hands out job ids from a range of its own, so on a cluster ids are not acceptance order:
-- the listings (GET /jobs, the page's oldest pending job and newest failures) order by
-- (created_at, id), and these indexes replace those by id that one server lists through.
DROP INDEX IF EXISTS ix_jobs_object_id_id;
DROP INDEX IF EXISTS ix_jobs_kind_id;
DROP INDEX IF EXISTS ix_jobs_status_id;
DROP INDEX IF EXISTS ix_jobs_pending_id;
CREATE INDEX IF NOT EXISTS ix_jobs_created_at_id ON jobs (created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS ix_jobs_object_id_created_at_id
    ON jobs (object_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS ix_jobs_kind_created_at_id ON jobs (kind, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS ix_jobs_status_created_at_id
    ON jobs (status, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS ix_jobs_pending_created_at_id
    ON jobs (created_at, id) WHERE status = 'PENDING';

-- name: citus_distribute_functions citus
-- The functions above run where their bucket's shard is (a call in a transaction of several
-- statements runs on the coordinator instead, and still works).
-- The releases before 0015 reserved with the window as an interval.
DROP FUNCTION IF EXISTS paceline_reserve(smallint, text, bigint, interval, int);
-- Migration 0015's, which the reserve calls on the workers.
SELECT create_distributed_function(
    'paceline_next_slots(timestamptz, timestamptz[], interval, float8, int)');
SELECT create_distributed_function(
    'paceline_reserve(smallint, text, bigint, float8, int, int)');
SELECT create_distributed_function(
    'paceline_enqueue(smallint, text, bigint, jsonb, int)', 'p_bucket', colocate_with => 'jobs');
SELECT create_distributed_function(
    'paceline_enqueue_batch(smallint, text[], bigint[], jsonb[])', 'p_route',
    colocate_with => 'jobs');
SELECT create_distributed_function(
    'paceline_claim(smallint, smallint[], int, float8, uuid, text[])', 'p_bucket',
    colocate_with => 'jobs');
SELECT create_distributed_function(
    'paceline_next_due(smallint, smallint[], text[])', 'p_bucket', colocate_with => 'jobs');
