-- Ceiling for POST /jobs: the enqueue as one statement, the shape docs/design.md describes (per-object
-- slot upsert + job insert in one CTE), without paceline's NOTIFY. Random object ids, as the
-- scenario sends. Variables: -D window=<W seconds>.
\set object_id random(1, 1000000000000)
WITH slot AS (
    -- The row lock on the object's slot row serializes submitters of this object only.
    INSERT INTO object_slots AS s (object_id, next_slot)
    VALUES (:object_id, now() + make_interval(secs => :window))
    ON CONFLICT (object_id) DO UPDATE
        SET next_slot = GREATEST(s.next_slot, now()) + make_interval(secs => :window)
    RETURNING s.next_slot - make_interval(secs => :window) AS run_at
)
-- The job takes the slot; the client gets the whole row back, as the API does.
INSERT INTO jobs (object_id, run_at)
SELECT :object_id, slot.run_at FROM slot
RETURNING id, object_id, status, created_at, run_at, started_at, finished_at, duration,
          attempts, error;
