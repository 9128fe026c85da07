-- Ceiling for POST /jobs: the enqueue as one statement, the shape docs/design.md describes (per-key
-- slot upsert + job insert in one CTE, the key being (kind, object_id)), without paceline's
-- NOTIFY. Random object ids, as the scenario sends. Variables: -D window=<W seconds>
-- -D kind=<the jobs' kind> -D payload=<the payload as JSON text, sent with every statement as
-- paceline sends it; null: none, as the API reads a null payload>.
\set object_id random(1, 1000000000000)
WITH slot AS (
    -- The row lock on the key's slot row serializes submitters of this key only.
    INSERT INTO object_slots AS s (kind, object_id, next_slot)
    VALUES (:kind, :object_id, now() + make_interval(secs => :window))
    ON CONFLICT (kind, object_id) DO UPDATE
        SET next_slot = GREATEST(s.next_slot, now()) + make_interval(secs => :window)
    RETURNING s.next_slot - make_interval(secs => :window) AS run_at
)
-- The job takes the slot; the client gets the whole row back (the payload too), as the API does.
INSERT INTO jobs (kind, object_id, run_at, payload, absorbed)
SELECT :kind, :object_id, slot.run_at, NULLIF(:payload, 'null')::jsonb, NULL FROM slot
RETURNING id, object_id, status, created_at, run_at, started_at, finished_at, duration,
          attempts, error, kind, payload, result;
