-- Reference: enqueue_one.sql, then the wake-up NOTIFY in a transaction of its own. paceline's
-- enqueue sends pg_notify inside the enqueue statement; a transaction that notifies holds the
-- server-wide notify-queue lock through its commit (WAL flush included), so those commits run
-- one at a time. A NOTIFY in its own transaction writes no WAL and holds the lock briefly.
-- Variables: -D window=<W seconds>.
\set object_id random(1, 1000000000000)
WITH slot AS (
    INSERT INTO object_slots AS s (object_id, next_slot)
    VALUES (:object_id, now() + make_interval(secs => :window))
    ON CONFLICT (object_id) DO UPDATE
        SET next_slot = GREATEST(s.next_slot, now()) + make_interval(secs => :window)
    RETURNING s.next_slot - make_interval(secs => :window) AS run_at
)
INSERT INTO jobs (object_id, run_at)
SELECT :object_id, slot.run_at FROM slot
RETURNING id, object_id, status, created_at, run_at, started_at, finished_at, duration,
          attempts, error;
SELECT pg_notify('paceline_jobs', '0');
