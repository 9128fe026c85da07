-- Planning an object's slots beyond the plain enqueue: backlog policies, idempotency keys,
-- compaction after a cancel, re-planning for a new window. Loaded by paceline.db.queries.
-- Every multi-step change locks the object's object_slots row first, then job rows, so the
-- steps serialize with enqueues of that object and never deadlock with each other.

-- name: lock_object_slots
-- $1 object_id. Take the object's slot row lock, creating the row as "free now" if the object
-- is new or its row was pruned (rolled back with the transaction if a request is refused), so
-- enqueues of the object wait, and the slot moves that follow always find the row. The
-- statements after it in the transaction see every job a previous holder committed.
INSERT INTO object_slots AS s (object_id, next_slot)
VALUES ($1, now())
ON CONFLICT (object_id) DO UPDATE SET next_slot = s.next_slot
RETURNING s.next_slot;

-- name: object_backlog
-- $1 object_id, $2 W, $3 count at most this many pending jobs. What the policies decide on:
-- the next free slot (as enqueue would give it), the pending head, and the backlog size.
SELECT now() AS now,
       GREATEST(
           (SELECT next_slot FROM object_slots WHERE object_id = $1),
           (SELECT last_started_at + make_interval(secs => $2)
            FROM object_starts WHERE object_id = $1),
           now()
       ) AS next_free,
       (SELECT count(*) FROM (
            SELECT 1 FROM jobs WHERE object_id = $1 AND status = 'PENDING' LIMIT $3
        ) AS capped) AS pending,
       (SELECT id FROM jobs WHERE object_id = $1 AND status = 'PENDING'
        ORDER BY id LIMIT 1) AS head_id,
       (SELECT run_at FROM jobs WHERE object_id = $1 AND status = 'PENDING'
        ORDER BY id LIMIT 1) AS head_run_at;

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

-- name: object_of_job
-- $1 id. Jobs never change object, so this needs no lock.
SELECT object_id FROM jobs WHERE id = $1;

-- name: cancel_pending_job
-- $1 id. Cancel the job if it has not started; its slot is given to the jobs behind it.
UPDATE jobs
SET status = 'CANCELLED', finished_at = clock_timestamp()
WHERE id = $1 AND status = 'PENDING'
RETURNING {job_columns};

-- name: pending_jobs_of_object
-- $1 object_id, $2 after this job id. Locked: claims skip them for the moment they move.
SELECT id, created_at, run_at
FROM jobs
WHERE object_id = $1 AND status = 'PENDING' AND id > $2
ORDER BY id
FOR UPDATE;

-- name: last_start_of_object
-- $1 object_id.
SELECT last_started_at FROM object_starts WHERE object_id = $1;

-- name: move_slots
-- $1 job ids, $2 their new slots.
UPDATE jobs AS j
SET run_at = moved.run_at
FROM unnest($1::bigint[], $2::timestamptz[]) AS moved(id, run_at)
WHERE j.id = ANY ($1::bigint[]) AND j.id = moved.id;

-- name: set_next_slot
-- $1 object_id, $2 the object's next free slot.
UPDATE object_slots SET next_slot = $2 WHERE object_id = $1;

-- name: objects_with_pending_jobs
-- Every object that has pending jobs (ix_jobs_pending_object gives them in order).
SELECT DISTINCT object_id FROM jobs WHERE status = 'PENDING' ORDER BY object_id;

-- name: respace_idle_objects
-- $1 old W, $2 new W. Objects with no pending job: their next free slot is a window (the
-- new one) after their last reserved slot.
UPDATE object_slots AS s
SET next_slot = s.next_slot - make_interval(secs => $1) + make_interval(secs => $2)
WHERE NOT EXISTS (
    SELECT 1 FROM jobs AS j WHERE j.object_id = s.object_id AND j.status = 'PENDING'
);

-- name: read_state
-- $1 name.
SELECT value FROM service_state WHERE name = $1;

-- name: write_state
-- $1 name, $2 value.
INSERT INTO service_state (name, value) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now();

-- name: lock_replan
-- Only one re-plan at a time, across replicas; released at commit.
SELECT pg_advisory_xact_lock(7421093119);

-- name: objects_with_pending
-- $1 object ids. Those of them with a pending job (one probe of ix_jobs_pending_object each).
SELECT DISTINCT object_id FROM jobs WHERE object_id = ANY($1::bigint[]) AND status = 'PENDING';
