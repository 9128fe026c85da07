-- Planning a key's slots beyond the plain enqueue: backlog policies, idempotency keys,
-- compaction after a cancel, re-planning for a new window. Loaded by paceline.db.queries.
-- A key is a (kind, object_id): windows, FIFO and coalescing are per key. Every multi-step
-- change locks the key's object_slots row first, then job rows, so the steps serialize with
-- enqueues of that key and never deadlock with each other.

-- name: lock_object_slots
-- $1 kind, $2 object_id. Take the key's slot row lock, creating the row as "free now" if the
-- key is new or its row was pruned (rolled back with the transaction if a request is refused),
-- so enqueues of the key wait, and the slot moves that follow always find the row. The
-- statements after it in the transaction see every job a previous holder committed.
INSERT INTO object_slots AS s (kind, object_id, next_slot  -- citus: , bucket
)
VALUES ($1, $2, now()  -- citus: , paceline_bucket($1, $2)
)
ON CONFLICT (kind, object_id  -- citus-instead: ON CONFLICT (bucket, kind, object_id
) DO UPDATE SET next_slot = s.next_slot
RETURNING s.next_slot;

-- name: object_backlog
-- $1 kind, $2 object_id, $3 count at most this many pending jobs. What the policies decide on:
-- the backlog size and the key's first pending job in slot order.
SELECT (SELECT count(*) FROM (
            SELECT 1 FROM jobs
            WHERE kind = $1 AND object_id = $2 AND status = 'PENDING'  -- citus: AND bucket = paceline_bucket($1, $2)
            LIMIT $3
        ) AS capped) AS pending,
       head.id AS head_id, head.run_at AS head_run_at
FROM (VALUES (1)) AS one (x)
LEFT JOIN LATERAL (
    SELECT id, run_at FROM jobs
    WHERE kind = $1 AND object_id = $2 AND status = 'PENDING'  -- citus: AND bucket = paceline_bucket($1, $2)
    ORDER BY run_at, id
    LIMIT 1
) AS head ON true;

-- name: lock_pending_tail
-- $1 kind, $2 object_id. The key's last pending job in slot order (the one replace and append
-- change), locked
-- so no claim starts it while it changes (claims skip locked rows), with the size of its payload
-- as PostgreSQL writes it. Nothing if the key has no pending job, or if the tail was being
-- claimed and has started by the time its lock is free (the request then makes a new job: a
-- started job is never changed). Call with the key's slot row locked.
SELECT id, absorbed, octet_length(payload::text) AS payload_bytes
FROM jobs
WHERE kind = $1 AND object_id = $2 AND status = 'PENDING'  -- citus: AND bucket = paceline_bucket($1, $2)
ORDER BY run_at DESC, id DESC
LIMIT 1
FOR UPDATE;

-- name: replace_payload
-- $1 job id, $2 its new payload (JSON, or NULL). on_busy=replace: the latest payload wins.
UPDATE jobs SET payload = $2::jsonb, absorbed = NULL
WHERE id = $1 AND status = 'PENDING'
RETURNING {job_columns};

-- name: append_payload
-- $1 job id, $2 one more payload (JSON, or NULL). on_busy=append: the job's payload array gets
-- it as its last element (jsonb_build_array wraps it, so an array payload stays one element).
UPDATE jobs SET payload = payload || jsonb_build_array($2::jsonb), absorbed = absorbed + 1
WHERE id = $1 AND status = 'PENDING' AND absorbed IS NOT NULL
RETURNING {job_columns};

-- name: claim_idempotency_key
-- $1 key, $2 fingerprint. Returns the key if this request now owns it; nothing if another
-- request already did (a concurrent one waits here until that one commits or rolls back).
INSERT INTO idempotency_keys (key, fingerprint)
VALUES ($1, $2)
ON CONFLICT (key) DO NOTHING
RETURNING key;

-- name: read_idempotency_key
-- $1 key, $2 seconds a key lives. The earlier request's fingerprint and job (or a batch's
-- jobs), and whether the key has expired.
SELECT fingerprint, job_id, job_ids, created_at < now() - make_interval(secs => $2) AS expired
FROM idempotency_keys
WHERE key = $1;

-- name: forget_idempotency_key
-- $1 key. An expired key is taken over by the request that finds it.
DELETE FROM idempotency_keys WHERE key = $1;

-- name: bind_idempotency_key
-- $1 key, $2 job id.
UPDATE idempotency_keys SET job_id = $2 WHERE key = $1;

-- name: bind_idempotency_key_to_batch
-- $1 key, $2 the batch's job ids, in request order.
UPDATE idempotency_keys SET job_ids = $2 WHERE key = $1;

-- name: prune_idempotency_keys
-- $1 seconds a key lives, $2 batch size.
WITH doomed AS (
    SELECT key FROM idempotency_keys
    WHERE created_at < now() - make_interval(secs => $1)
    ORDER BY created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM idempotency_keys USING doomed WHERE idempotency_keys.key = doomed.key;

-- name: key_of_job
-- $1 id. Jobs never change kind or object, so this needs no lock.
SELECT kind, object_id FROM jobs WHERE id = $1;

-- name: cancel_pending_job
-- $1 id. Cancel the job if it has not started; its slot is given to the jobs behind it.
UPDATE jobs
SET status = 'CANCELLED', finished_at = clock_timestamp()
WHERE id = $1 AND status = 'PENDING'
RETURNING {job_columns};

-- name: move_slots
-- $1 job ids, $2 their new slots.
UPDATE jobs AS j
SET run_at = moved.run_at
FROM unnest($1::bigint[], $2::timestamptz[]) AS moved(id, run_at)
WHERE j.id = ANY ($1::bigint[]) AND j.id = moved.id;

-- name: move_slots_of_key citus
-- The same for jobs of one key, $3 kind, $4 object_id, on a Citus cluster: its bucket routes
-- the statement to the key's shard.
UPDATE jobs AS j
SET run_at = moved.run_at
FROM unnest($1::bigint[], $2::timestamptz[]) AS moved(id, run_at)
WHERE j.bucket = paceline_bucket($3, $4) AND j.id = ANY ($1::bigint[]) AND j.id = moved.id;

-- name: objects_with_pending
-- $1 kinds, $2 object ids (parallel: keys). Those keys with a pending job (one probe of
-- ix_jobs_pending_kind_object_id_run_at_id each).
SELECT DISTINCT k.kind, k.object_id
FROM unnest($1::text[], $2::bigint[]) AS k(kind, object_id)
WHERE (
    SELECT 1 FROM jobs AS j
    WHERE j.kind = k.kind AND j.object_id = k.object_id AND j.status = 'PENDING'
    LIMIT 1
) IS NOT NULL;

-- name: objects_with_pending citus
-- The same on a Citus cluster, which runs no correlated subquery beside a set-returning
-- function: the keys are a list every shard matches against its pending jobs' index.
SELECT DISTINCT j.kind, j.object_id
FROM jobs AS j
WHERE j.status = 'PENDING'
  AND (j.kind, j.object_id) IN (
      SELECT k.kind, k.object_id FROM unnest($1::text[], $2::bigint[]) AS k(kind, object_id)
  );
