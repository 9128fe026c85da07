-- Limits (N starts per window W, M running, paused) per kind and per key, and the reads and
-- writes of the exact planner (paceline.queue.scheduling). Loaded by paceline.db.queries.
-- A key is a (kind, object_id). The limit of a key is paceline_limit(kind, object_id)
-- (migration 0009): its override, else its kind's, else the default kind's, field by field.

-- name: seed_default_limit
-- $1 W. The default kind's limit on a fresh database (PACELINE_RATE_WINDOW); a database that
-- has one keeps it. Returns the window in force.
WITH seeded AS (
    INSERT INTO kind_limits (kind, window_seconds, per_window, max_running)
    VALUES ('default', $1, 1, 1)
    ON CONFLICT (kind) DO NOTHING
    RETURNING window_seconds
)
SELECT window_seconds FROM seeded
UNION ALL
SELECT window_seconds FROM kind_limits WHERE kind = 'default'
LIMIT 1;

-- name: key_limit
-- $1 kind, $2 object_id. The key's limit in force, whether it has an override row, and the
-- transaction's now() (what the planner plans from).
SELECT now() AS now, l.window_seconds, l.per_window, l.max_running, l.paused,
       EXISTS (SELECT 1 FROM key_limits WHERE kind = $1 AND object_id = $2) AS overridden
FROM paceline_limit($1, $2) AS l;

-- name: kind_limit_rows
-- Every kind's own row (NULL fields inherit from the default kind).
SELECT kind, window_seconds, per_window, max_running, paused, updated_at
FROM kind_limits
ORDER BY kind;

-- name: kind_limit_row
-- $1 kind.
SELECT kind, window_seconds, per_window, max_running, paused, updated_at
FROM kind_limits
WHERE kind = $1;

-- name: key_limit_row
-- $1 kind, $2 object_id.
SELECT kind, object_id, window_seconds, per_window, max_running, paused, updated_at
FROM key_limits
WHERE kind = $1 AND object_id = $2;

-- name: key_limit_rows
-- $1 kind, $2 after this object_id (cursor), $3 how many. A kind's overrides in object order:
-- each row as stored, and the limit in force for its key (`in_force_*`), so a page of them is
-- one statement.
SELECT o.kind, o.object_id, o.window_seconds, o.per_window, o.max_running, o.paused,
       o.updated_at, l.window_seconds AS in_force_window_seconds,
       l.per_window AS in_force_per_window, l.max_running AS in_force_max_running,
       l.paused AS in_force_paused
FROM key_limits AS o
CROSS JOIN LATERAL paceline_limit(o.kind, o.object_id) AS l
WHERE o.kind = $1 AND o.object_id > $2
ORDER BY o.object_id
LIMIT $3;

-- name: put_kind_limit
-- $1 kind, $2 W, $3 N, $4 M (NULL: inherit), $5 paused (NULL: keep, false for a new row).
-- updated_at from EXCLUDED (its default, now()) rather than now() in the SET: the same time,
-- and the form Citus accepts for an upsert of a replicated table (it refuses now() there).
INSERT INTO kind_limits (kind, window_seconds, per_window, max_running, paused)
VALUES ($1, $2, $3, $4, COALESCE($5, false))
ON CONFLICT (kind) DO UPDATE
SET window_seconds = EXCLUDED.window_seconds, per_window = EXCLUDED.per_window,
    max_running = EXCLUDED.max_running,
    paused = COALESCE($5, kind_limits.paused), updated_at = EXCLUDED.updated_at;

-- name: set_kind_paused
-- $1 kind, $2 paused. Creates the kind's row (inheriting everything) if it has none. Not an
-- upsert: PostgreSQL checks the row an INSERT proposes before it looks for a conflict, and the
-- default kind's row may not leave its numbers NULL (changes are serialized by
-- lock_limit_changes, so no insert races this update).
WITH updated AS (
    UPDATE kind_limits SET paused = $2, updated_at = now() WHERE kind = $1 RETURNING kind
)
INSERT INTO kind_limits (kind, paused)
SELECT $1, $2
WHERE NOT EXISTS (SELECT FROM updated);

-- name: drop_kind_limit
-- $1 kind. The kind inherits the default kind's limit again (the default kind's row stays).
DELETE FROM kind_limits WHERE kind = $1 AND kind <> 'default' RETURNING kind;

-- name: put_key_limit
-- $1 kind, $2 object_id, $3 W, $4 N, $5 M (NULL: inherit), $6 paused (NULL: keep).
INSERT INTO key_limits (kind, object_id, window_seconds, per_window, max_running, paused)
VALUES ($1, $2, $3, $4, $5, COALESCE($6, false))
ON CONFLICT (kind, object_id) DO UPDATE
SET window_seconds = EXCLUDED.window_seconds, per_window = EXCLUDED.per_window,
    max_running = EXCLUDED.max_running,
    paused = COALESCE($6, key_limits.paused), updated_at = EXCLUDED.updated_at;

-- name: set_key_paused
-- $1 kind, $2 object_id, $3 paused. Creates the override (inheriting every number) if none.
INSERT INTO key_limits (kind, object_id, paused) VALUES ($1, $2, $3)
ON CONFLICT (kind, object_id) DO UPDATE
SET paused = EXCLUDED.paused, updated_at = EXCLUDED.updated_at;

-- name: drop_key_limit
-- $1 kind, $2 object_id.
DELETE FROM key_limits WHERE kind = $1 AND object_id = $2 RETURNING kind;

-- name: plan_exactly
-- $1 kinds (NULL: every kind), $2 object_id (NULL: every object of them). The one-statement
-- enqueue stops planning these keys (open_until '-infinity'): after a limit change, until the
-- planner has placed their next job and written next_slot and open_until anew. The rows are
-- locked in key order, as a batch enqueue locks them: two statements that lock several slot
-- rows in different orders could deadlock.
UPDATE object_slots AS s
SET open_until = '-infinity'
FROM (
    SELECT kind, object_id FROM object_slots
    WHERE ($1::text[] IS NULL OR kind = ANY ($1::text[]))
      AND ($2::bigint IS NULL OR object_id = $2)
    ORDER BY kind, object_id
    FOR UPDATE
) AS locked
WHERE s.kind = locked.kind AND s.object_id = locked.object_id;

-- name: keys_with_pending
-- $1 kinds (NULL: every kind), $2 object_id (NULL: every object). Keys with pending jobs.
SELECT DISTINCT kind, object_id
FROM jobs
WHERE status = 'PENDING'
  AND ($1::text[] IS NULL OR kind = ANY ($1::text[]))
  AND ($2::bigint IS NULL OR object_id = $2)
ORDER BY kind, object_id;

-- name: kinds_inheriting
-- $1 kind. The kinds whose limit a change of this kind's row changes: itself, and for
-- `default` every kind with jobs or a row of its own that does not set all three numbers.
SELECT $1::text AS kind
UNION
SELECT k.kind FROM kind_limits AS k
WHERE $1 = 'default'
  AND (k.window_seconds IS NULL OR k.per_window IS NULL OR k.max_running IS NULL)
UNION
SELECT DISTINCT s.kind FROM object_slots AS s
WHERE $1 = 'default' AND NOT EXISTS (SELECT 1 FROM kind_limits AS k WHERE k.kind = s.kind);

-- name: pending_of_key
-- $1 kind, $2 object_id. The key's pending jobs in slot order, locked: claims skip them while
-- their slots move.
SELECT id, created_at, run_at, not_before FROM jobs
WHERE kind = $1 AND object_id = $2 AND status = 'PENDING'  -- citus: AND bucket = paceline_bucket($1, $2)
ORDER BY run_at, id
FOR UPDATE;

-- name: pending_slots_of_key
-- $1 kind, $2 object_id. The same as pending_of_key, unlocked: for a reader (the timeline),
-- which runs in a read-only transaction and moves nothing.
SELECT id, created_at, run_at, not_before FROM jobs
WHERE kind = $1 AND object_id = $2 AND status = 'PENDING'  -- citus: AND bucket = paceline_bucket($1, $2)
ORDER BY run_at, id;

-- name: starts_of_key
-- $1 kind, $2 object_id, $3 since. The key's starts after $3 (its attempts), and the last
-- start object_starts remembers (it outlives pruned history); the same instant may come twice.
SELECT started_at FROM job_attempts
WHERE kind = $1 AND object_id = $2 AND started_at > $3  -- citus: AND bucket = paceline_bucket($1, $2)
UNION ALL
SELECT last_started_at FROM object_starts
WHERE kind = $1 AND object_id = $2  -- citus: AND bucket = paceline_bucket($1, $2)
;

-- name: lock_key_rows
-- $1 kinds, $2 object ids (parallel: distinct keys). lock_object_slots for many keys in one
-- statement, in key order: the order a batch enqueue and plan_exactly lock theirs in, so two
-- of them wait for each other instead of deadlocking. One server only (on a cluster each
-- key's statements stay its shard's: paceline.db.limits.keys_share_a_transaction).
INSERT INTO object_slots AS s (kind, object_id, next_slot)
SELECT k.kind, k.object_id, now()
FROM unnest($1::text[], $2::bigint[]) AS k(kind, object_id)
ORDER BY k.kind, k.object_id
ON CONFLICT (kind, object_id) DO UPDATE SET next_slot = s.next_slot;

-- name: limits_of_keys
-- $1 kinds, $2 object ids (parallel). key_limit for each key, one row per key.
SELECT k.kind, k.object_id, now() AS now, l.window_seconds, l.per_window, l.max_running,
       l.paused,
       EXISTS (
           SELECT 1 FROM key_limits AS o WHERE o.kind = k.kind AND o.object_id = k.object_id
       ) AS overridden
FROM unnest($1::text[], $2::bigint[]) AS k(kind, object_id)
CROSS JOIN LATERAL paceline_limit(k.kind, k.object_id) AS l;

-- name: pending_of_keys
-- $1 kinds, $2 object ids (parallel). pending_of_key for each key, locked; the caller orders
-- each key's. Each key a LATERAL probe of ix_jobs_pending_kind_object_id_run_at_id, so the
-- plan stays a loop over the keys whatever the statistics say (as a join, with the tables
-- analyzed while empty, a burst's re-plans scanned every pending job: scenario 9 fell to
-- 0.37 of its analyzed rate).
SELECT k.kind, k.object_id, j.id, j.created_at, j.run_at, j.not_before
FROM unnest($1::text[], $2::bigint[]) AS k(kind, object_id)
CROSS JOIN LATERAL (
    SELECT id, created_at, run_at, not_before FROM jobs
    WHERE kind = k.kind AND object_id = k.object_id AND status = 'PENDING'
    FOR UPDATE
) AS j;

-- name: starts_of_keys
-- $1 kinds, $2 object ids, $3 since (parallel). starts_of_key for each key (LATERAL, as
-- above).
SELECT k.kind, k.object_id, a.started_at
FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]) AS k(kind, object_id, since)
CROSS JOIN LATERAL (
    SELECT started_at FROM job_attempts
    WHERE kind = k.kind AND object_id = k.object_id AND started_at > k.since
    UNION ALL
    SELECT last_started_at FROM object_starts
    WHERE kind = k.kind AND object_id = k.object_id
) AS a;

-- name: set_key_rows
-- $1 kinds, $2 object ids, $3 next_slot, $4 open_until, $5 window_seconds, $6 per_window
-- (parallel), $7 each key's `recent` as JSON (an array of instants, or null; a
-- two-dimensional array could not hold lists of different lengths). set_key_row for each key.
-- An upsert of rows lock_key_rows made sure of: one primary-key probe per key by
-- construction, where an UPDATE ... FROM is a join the statistics may order the wrong way.
INSERT INTO object_slots AS s (
    kind, object_id, next_slot, open_until, window_seconds, per_window, recent
)
SELECT k.kind, k.object_id, k.next_slot, k.open_until, k.window_seconds, k.per_window,
       CASE WHEN k.recent IS NOT NULL THEN
           ARRAY(SELECT e::timestamptz FROM jsonb_array_elements_text(k.recent) AS e)
       END
FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::timestamptz[], $5::float8[],
            $6::int[], $7::jsonb[])
    AS k(kind, object_id, next_slot, open_until, window_seconds, per_window, recent)
ON CONFLICT (kind, object_id) DO UPDATE
    SET next_slot = EXCLUDED.next_slot, open_until = EXCLUDED.open_until,
        window_seconds = EXCLUDED.window_seconds, per_window = EXCLUDED.per_window,
        recent = EXCLUDED.recent;

-- name: set_key_row
-- $1 kind, $2 object_id, $3 next_slot, $4 open_until, $5 window_seconds, $6 per_window,
-- $7 recent (NULL under N = 1). After the planner placed or moved the key's jobs: where the
-- one-statement enqueue may put the next one, and under which limit.
UPDATE object_slots
SET next_slot = $3, open_until = $4, window_seconds = $5, per_window = $6, recent = $7
WHERE kind = $1 AND object_id = $2  -- citus: AND bucket = paceline_bucket($1, $2)
;

-- name: insert_planned_job
-- $1 kind, $2 object_id, $3 run_at (the planner's slot; 'infinity' while the key is paused),
-- $4 payload (JSON text or NULL), $5 absorbed, $6 not_before.
INSERT INTO jobs (kind, object_id, run_at, payload, absorbed, not_before  -- citus: , bucket
)
VALUES ($1, $2, $3, $4::jsonb, $5, $6  -- citus: , paceline_bucket($1, $2)
)
RETURNING {job_columns};

-- name: park_pending
-- $1 kind, $2 object_id (NULL: every object of the kind). A paused key's pending jobs wait
-- for the resume: run_at 'infinity'. Returns each one's slot before.
WITH parked AS (
    SELECT id, run_at FROM jobs
    WHERE kind = $1 AND status = 'PENDING' AND ($2::bigint IS NULL OR object_id = $2)
      AND run_at <> 'infinity'
    FOR UPDATE
)
UPDATE jobs AS j
SET run_at = 'infinity'
FROM parked
WHERE j.id = parked.id
RETURNING j.id, j.kind, j.object_id, parked.run_at AS before;

-- name: stranded_keys
-- $1 how many keys, $2 the most parked jobs read. Keys with jobs parked for a resume
-- ('infinity') that are no longer paused. A resume lifts the pause and commits, then re-plans
-- its keys a few per transaction; cut off in between (its connection killed, its replica
-- gone), it leaves their jobs parked. Parked jobs sort last in ix_jobs_due: a range at its
-- end, capped, then the key's limit (three primary-key probes).
SELECT DISTINCT p.kind, p.object_id
FROM (
    SELECT kind, object_id FROM jobs
    WHERE status = 'PENDING' AND run_at = 'infinity'
    LIMIT $2
) AS p
CROSS JOIN LATERAL paceline_limit(p.kind, p.object_id) AS lim
WHERE NOT lim.paused
LIMIT $1;

-- name: lock_limit_changes
-- One limit change at a time, across replicas; released at commit.
SELECT pg_advisory_xact_lock(7421093120);

-- name: running_jobs_of_key
-- $1 kind, $2 object_id. The key's running jobs (the "waits for job N to finish" reason).
SELECT id FROM jobs
WHERE kind = $1 AND object_id = $2 AND status = 'PROCESSING'  -- citus: AND bucket = paceline_bucket($1, $2)
ORDER BY started_at, id;

-- name: plan_exactly citus
-- The same on a Citus cluster, which refuses FOR UPDATE across shards: the update locks each
-- shard's rows in its own order. A batch enqueue locking the same keys in key order may then
-- meet it in a deadlock, which PostgreSQL breaks by failing one of the two (both are retried).
UPDATE object_slots
SET open_until = '-infinity'
WHERE ($1::text[] IS NULL OR kind = ANY ($1::text[]))
  AND ($2::bigint IS NULL OR object_id = $2);

-- name: park_pending citus
-- The same on a Citus cluster: the slot before is read by a join on (bucket, id), which each
-- shard runs on its own rows; the update tests "still pending" again on each row it changes.
UPDATE jobs AS j
SET run_at = 'infinity'
FROM (
    SELECT bucket, id, run_at FROM jobs
    WHERE kind = $1 AND status = 'PENDING' AND ($2::bigint IS NULL OR object_id = $2)
      AND run_at <> 'infinity'
) AS parked
WHERE j.bucket = parked.bucket AND j.id = parked.id
  AND j.status = 'PENDING' AND j.run_at <> 'infinity'
RETURNING j.id, j.kind, j.object_id, parked.run_at AS before;
