-- Ceiling for batch enqueue: paceline's enqueue_batch statement (1000 jobs in one statement,
-- per-key slots exact also for keys repeated inside the batch), the batch made here instead of
-- sent as arrays: every 10th job repeats an object (900 distinct keys). Variables:
-- -D window=<W seconds> -D kind=<the jobs' kind> -D payload_bytes=<0: no payload; else each job
-- carries {"customer": <its object id>, "note": "xx..."} of that many bytes as compact JSON,
-- written as text and parsed into jsonb per job, as the service's jsonb[] parameter is>.
\set base random(1, 1000000000000)
WITH items AS (
    SELECT kind, object_id, payload, ord,
           row_number() OVER (PARTITION BY kind, object_id ORDER BY ord) AS k
    FROM (
        SELECT :kind::text AS kind, o.object_id, g AS ord,
               CASE WHEN :payload_bytes > 0 THEN
                   format('{"customer":%s,"note":"%s"}', o.object_id,
                          repeat('x', :payload_bytes - 23 - length(o.object_id::text)))::jsonb
               END AS payload
        FROM generate_series(1, 1000) AS g,
             LATERAL (SELECT :base::bigint + g % 900 AS object_id) AS o
    ) AS t
),
counts AS (
    SELECT kind, object_id, count(*) AS n FROM items GROUP BY kind, object_id
),
slots AS (
    -- Keys in order, so concurrent batches lock in the same order (no deadlock). The key's
    -- first slot is GREATEST(next_slot, now()); the row then keeps first + n * W.
    INSERT INTO object_slots AS s (kind, object_id, next_slot)
    SELECT kind, object_id, now() + n * make_interval(secs => :window)
    FROM counts ORDER BY kind, object_id
    ON CONFLICT (kind, object_id) DO UPDATE
        SET next_slot = GREATEST(s.next_slot, now()) + (EXCLUDED.next_slot - now())
    RETURNING s.kind, s.object_id, s.next_slot
),
created AS (
    -- Job k of a key takes first + (k - 1) * W; ids follow the batch's order.
    INSERT INTO jobs (kind, object_id, payload, run_at)
    SELECT i.kind, i.object_id, i.payload,
           sl.next_slot - (c.n - i.k + 1) * make_interval(secs => :window)
    FROM items AS i
    JOIN counts AS c ON c.kind = i.kind AND c.object_id = i.object_id
    JOIN slots AS sl ON sl.kind = i.kind AND sl.object_id = i.object_id
    ORDER BY i.ord
    RETURNING id, object_id, status, created_at, run_at, started_at, finished_at, duration,
              attempts, error, kind, payload, result
)
SELECT * FROM created ORDER BY id;
