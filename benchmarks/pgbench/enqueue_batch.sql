-- Ceiling for batch enqueue: 1000 jobs in one statement, per-object slots exact also for
-- objects repeated inside the batch (here every 10th job repeats an object: 900 distinct).
-- Variables: -D window=<W seconds>.
\set base random(1, 1000000000000)
WITH wanted AS (
    -- The request body: each job's position in the batch and its object.
    SELECT g AS position, :base::bigint + g % 900 AS object_id
    FROM generate_series(1, 1000) AS g
),
ranked AS (
    -- k: the job's rank among this batch's jobs of its object (FIFO by position);
    -- n: how many slots the batch takes for that object.
    SELECT position, object_id,
           row_number() OVER (PARTITION BY object_id ORDER BY position) AS k,
           count(*) OVER (PARTITION BY object_id) AS n
    FROM wanted
),
per_object AS (
    SELECT object_id, max(n) AS n FROM ranked GROUP BY object_id
),
slots AS (
    -- One upsert per object, in object order so concurrent batches lock in the same order
    -- (no deadlock). The object's first slot is GREATEST(next_slot, now()); the row then
    -- keeps first + n * W.
    INSERT INTO object_slots AS s (object_id, next_slot)
    SELECT object_id, now() + n * make_interval(secs => :window)
    FROM per_object
    ORDER BY object_id
    ON CONFLICT (object_id) DO UPDATE
        SET next_slot = GREATEST(s.next_slot, now()) + (EXCLUDED.next_slot - now())
    RETURNING s.object_id, s.next_slot
)
-- Job k of an object takes first + (k - 1) * W; ids follow the batch's order.
INSERT INTO jobs (object_id, run_at)
SELECT r.object_id, s.next_slot - (p.n - r.k + 1) * make_interval(secs => :window)
FROM ranked AS r
JOIN slots AS s USING (object_id)
JOIN per_object AS p USING (object_id)
ORDER BY r.position
RETURNING id, object_id, run_at;
