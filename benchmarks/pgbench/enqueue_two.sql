-- Reference: the same work as enqueue_one.sql in two statements (one transaction), the slot
-- read back to the client between them. Variables: as enqueue_one.sql.
\set object_id random(1, 1000000000000)
BEGIN;
INSERT INTO object_slots AS s (kind, object_id, next_slot)
VALUES (:kind, :object_id, now() + make_interval(secs => :window))
ON CONFLICT (kind, object_id) DO UPDATE
    SET next_slot = GREATEST(s.next_slot, now()) + make_interval(secs => :window)
RETURNING s.next_slot - make_interval(secs => :window) AS run_at
\gset
INSERT INTO jobs (kind, object_id, run_at, payload, absorbed)
VALUES (:kind, :object_id, :run_at, NULLIF(:payload, 'null')::jsonb, NULL)
RETURNING id, object_id, status, created_at, run_at, started_at, finished_at, duration,
          attempts, error, kind, payload, result;
COMMIT;
