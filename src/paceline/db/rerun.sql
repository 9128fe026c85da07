-- Retrying finished jobs by hand (POST /jobs/{id}/retry, POST /jobs/retry): the reads and
-- writes of paceline.queue.rerun. Loaded by paceline.db.queries. Locks are taken in the order
-- every multi-step change of slots.sql takes them: the keys' object_slots rows first (in key
-- order), then the job rows.

-- name: retry_candidates
-- $1 status (FAILED or CANCELLED), $2 kind, $3 object_id, $4 payload (a JSON object the job's
-- payload must contain); NULL: any. The jobs a bulk retry takes and their keys, in slot order
-- (oldest first). Run planned per call (`plan_for_values`): with the values in place of the
-- NULL tests, the planner narrows by the most selective index of ix_jobs_status_id,
-- ix_jobs_kind_id, ix_jobs_object_id_id and the payload's GIN index (ix_jobs_payload).
SELECT id, kind, object_id
FROM jobs
WHERE status = $1
  AND ($2::text IS NULL OR kind = $2)
  AND ($3::bigint IS NULL OR object_id = $3)
  AND ($4::jsonb IS NULL OR payload @> $4::jsonb)
ORDER BY run_at, id;

-- name: lock_slot_rows
-- $1 kinds, $2 object ids (parallel: keys, repeats allowed). lock_object_slots for many keys in
-- one statement, in key order as enqueue_batch and plan_exactly lock them (two statements that
-- lock rows in different orders could deadlock); a key without a row gets one, "free now".
INSERT INTO object_slots AS s (kind, object_id, next_slot)
SELECT DISTINCT k.kind, k.object_id, now()
FROM unnest($1::text[], $2::bigint[]) AS k (kind, object_id)
ORDER BY k.kind, k.object_id
ON CONFLICT (kind, object_id) DO UPDATE SET next_slot = s.next_slot;

-- name: lock_jobs_to_retry
-- $1 ids. The jobs as the planner needs them, and their status, locked in id order (a
-- concurrent retry of the same jobs waits here, then finds them PENDING).
SELECT id, kind, object_id, status, created_at, not_before
FROM jobs
WHERE id = ANY ($1::bigint[])
  -- citus: AND bucket = ANY ($2::smallint[])  -- one shard's (FOR UPDATE is refused across shards)
ORDER BY id
FOR UPDATE;

-- name: buckets_of_jobs citus
-- $1 ids. Each job's bucket, to lock the jobs shard by shard (every shard looks; a job's
-- bucket never changes, so this needs no lock).
SELECT id, bucket FROM jobs WHERE id = ANY ($1::bigint[]);

-- name: retry_jobs
-- $1 ids, $2 their new slots ('infinity': the key is paused). Finished jobs back to PENDING,
-- as fresh: no start, end, duration, error or result (job_attempts keeps every attempt's);
-- `attempts` goes on counting (attempt numbers keep increasing) and `attempts_at_retry`
-- records where this retry starts counting the attempts PACELINE_MAX_ATTEMPTS allows.
UPDATE jobs AS j
SET status = 'PENDING', run_at = r.slot, attempts_at_retry = j.attempts,
    started_at = NULL, finished_at = NULL, duration = NULL, error = NULL, result = NULL
FROM unnest($1::bigint[], $2::timestamptz[]) AS r (job_id, slot)
WHERE j.id = ANY ($1::bigint[]) AND j.id = r.job_id AND j.status IN ('FAILED', 'CANCELLED')
RETURNING {job_columns};
