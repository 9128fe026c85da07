-- Reference: the same work as enqueue_one.sql in two statements (one transaction), the slot
-- read back to the client between them. Variables: -D window=<W seconds>.
\set object_id random(1, 1000000000000)
BEGIN;
INSERT INTO object_slots AS s (object_id, next_slot)
VALUES (:object_id, now() + make_interval(secs => :window))
ON CONFLICT (object_id) DO UPDATE
    SET next_slot = GREATEST(s.next_slot, now()) + make_interval(secs => :window)
RETURNING s.next_slot - make_interval(secs => :window) AS run_at
\gset
INSERT INTO jobs (object_id, run_at)
VALUES (:object_id, :run_at)
RETURNING id, object_id, status, created_at, run_at, started_at, finished_at, duration,
          attempts, error;
COMMIT;
