-- Jobs, their attempts, leases and replicas: one named query per block, loaded by
-- paceline.db.queries and run only through the typed functions of paceline.db.jobs.
-- Parameters are positional ($1, ...); each block says what they are.
-- W, the rate window, is always passed in seconds as float8, and all times are the
-- database's clock, so replicas with skewed clocks still agree on every window.

-- name: enqueue
-- $1 kind, $2 object_id, $3 payload (JSON text, or NULL), $4 absorbed (1 for the job an
-- on_busy=append request starts, else NULL), $5 not_before (or NULL). Reserve the key's next
-- slot and insert the job, in one statement, for a key that is not paused and whose slot row
-- lets this statement place it; returns no row for any other key, which the exact planner
-- (paceline.queue.scheduling) then places.
WITH lim AS (
    -- The key's limit, N starts per window W: its override, else its kind's, else the
    -- default's (an inlined function: three primary-key probes, whatever plan is cached).
    SELECT l.window_seconds, l.per_window FROM paceline_limit($1, $2) AS l WHERE NOT l.paused
),
slot AS (
    -- The upsert's row lock serializes concurrent submitters of this key, and only of this
    -- key. A plain job's slot is t = GREATEST(next_slot, now()) (a fresh key: now()). Reading
    -- the slot back from the locked row is what makes two concurrent requests unable to take
    -- the same slot. The row is left as it is (but locked until the statement ends), and no
    -- job made here, where t would crowd a reservation past a gap (open_until) or the row was
    -- worked out under another limit (paceline_next_slots says what the row keeps).
    --
    -- A job with not_before later than t (a fresh key: later than now()) goes at not_before
    -- itself, if that crowds no reservation after it: every reservation before it is at or
    -- before next_slot, where a plain job fits, so one at not_before fits too. It leaves a
    -- gap before it for the plain jobs: next_slot stays, and open_until becomes not_before.
    -- Any other not_before (one that may take a free slot before t) is the planner's.
    INSERT INTO object_slots AS s (
        kind, object_id, next_slot, recent, window_seconds, per_window, open_until
    )
    SELECT $1, $2,
           CASE WHEN $5::timestamptz IS NULL THEN f.next_slot ELSE now() END,
           CASE WHEN $5::timestamptz IS NULL THEN f.recent
                WHEN lim.per_window > 1 THEN '{}'::timestamptz[] END,
           lim.window_seconds, lim.per_window,
           COALESCE($5::timestamptz, 'infinity')
    FROM lim
    CROSS JOIN LATERAL paceline_next_slots(now(), NULL, make_interval(secs => lim.window_seconds),
                                           lim.window_seconds, lim.per_window) AS f
    WHERE $5::timestamptz IS NULL OR $5::timestamptz > now()
    ON CONFLICT (kind, object_id) DO UPDATE
        SET (next_slot, recent, open_until) = (
            SELECT CASE WHEN $5::timestamptz IS NULL THEN f.next_slot ELSE s.next_slot END,
                   CASE WHEN $5::timestamptz IS NULL THEN f.recent ELSE s.recent END,
                   COALESCE($5::timestamptz, s.open_until)
            FROM paceline_next_slots(GREATEST(s.next_slot, now()), s.recent,
                                     make_interval(secs => EXCLUDED.window_seconds),
                                     EXCLUDED.window_seconds, EXCLUDED.per_window) AS f
        )
        WHERE s.window_seconds = EXCLUDED.window_seconds
          AND s.per_window = EXCLUDED.per_window
          AND CASE WHEN $5::timestamptz IS NULL
                   THEN GREATEST(s.next_slot, now())
                        + make_interval(secs => EXCLUDED.window_seconds) <= s.open_until
                   ELSE $5::timestamptz > GREATEST(s.next_slot, now())
                        AND $5::timestamptz + make_interval(secs => EXCLUDED.window_seconds)
                            <= s.open_until
              END
    -- The job's slot: its not_before; else under N = 1 a window before the row's next_slot,
    -- else recent's last.
    RETURNING COALESCE($5::timestamptz,
                       CASE WHEN s.per_window = 1
                            THEN s.next_slot - make_interval(secs => s.window_seconds)
                            ELSE s.recent[cardinality(s.recent)] END) AS run_at
),
job AS (
    INSERT INTO jobs (kind, object_id, run_at, payload, absorbed, not_before)
    SELECT $1, $2, slot.run_at, $3::jsonb, $4, $5::timestamptz
    FROM slot
    RETURNING {job_columns}
)
-- No NOTIFY here: NOTIFY takes a cluster-wide lock at commit, which throttles this statement
-- (docs/performance-notes.md). The API wakes workers through DueNotifier, one NOTIFY per
-- burst of enqueues instead of one per job.
SELECT * FROM job;

-- name: enqueue citus
-- The same on a Citus cluster, for a job without not_before (one with it is the planner's
-- there: paceline.db.jobs.enqueue): the key's bucket routes the call to the worker holding the
-- key's shard, which runs the same steps there (paceline_enqueue, citus.sql).
SELECT {job_columns}
FROM paceline_enqueue(paceline_bucket($1, $2), $1, $2, $3::jsonb, $4);

-- name: enqueue_batch
-- $1 kinds, $2 object ids, $3 payloads (JSON, or NULL): parallel arrays in request order,
-- repeats allowed. Many jobs in one statement, each in its (kind, object)'s next free slot:
-- under one start per window the k-th occurrence of a key in the batch takes the k-th slot
-- after the key's next free one, so repeats are a window apart as if sent one by one; under
-- N > 1 the statement places a key's job if it is the key's only one in the batch. Like
-- enqueue, only for keys the one-statement path may plan; the jobs of other keys are left
-- out of the answer, and the caller places them.
WITH items AS (
    -- $1 or $3 may be NULL: every job of the default kind, none with a payload (the plain
    -- batch, the group commit's). unnest pads the missing arrays with NULLs, so 2,000 elements
    -- that say nothing are not encoded, sent and decoded per 1000-job batch.
    SELECT kind, object_id, payload, ord,
           row_number() OVER (PARTITION BY kind, object_id ORDER BY ord) AS k
    FROM (
        SELECT COALESCE(t.kind, 'default') AS kind, t.object_id, t.payload, t.ord
        FROM unnest($1::text[], $2::bigint[], $3::jsonb[]) WITH ORDINALITY
            AS t(kind, object_id, payload, ord)
    ) AS sent
),
kind_windows AS MATERIALIZED (
    -- The limit of each kind in the batch (a batch has one kind or a few: read once per kind,
    -- not once per key); a key's override, if it has one, comes on top in `counts`.
    SELECT b.kind,
           COALESCE(k.window_seconds, d.window_seconds, 300.0) AS window_seconds,
           COALESCE(k.per_window, d.per_window, 1) AS per_window,
           COALESCE(k.paused, false) AS paused
    FROM (SELECT DISTINCT kind FROM items) AS b
    LEFT JOIN kind_limits AS d ON d.kind = 'default'
    LEFT JOIN kind_limits AS k ON k.kind = b.kind
),
counts AS (
    -- Each key's count and limit, for the keys this statement places. The kind's limit and
    -- the override are LATERAL probes with LIMIT, not joins, so the override stays one
    -- primary-key probe per key whatever the statistics of key_limits say. A key it leaves
    -- out gets no window, and only that is filtered on: "IS NOT NULL" of an expression is
    -- estimated to keep nearly every row, so the estimate of this CTE stays the items'
    -- groups, which is what keeps the join of `created` below a hash join (filtered on the
    -- conditions themselves, the estimate fell to one row, and that join became a nested
    -- loop of 1000 x 1000 rows: a 1000-job batch took 116 ms instead of 12).
    SELECT c.kind, c.object_id, c.n, c.window_seconds, c.per_window
    FROM (
        SELECT g.kind, g.object_id, g.n,
               CASE WHEN NOT kw.paused AND NOT COALESCE(o.paused, false)
                         AND (COALESCE(o.per_window, kw.per_window) = 1 OR g.n = 1)
                    THEN COALESCE(o.window_seconds, kw.window_seconds) END AS window_seconds,
               COALESCE(o.per_window, kw.per_window) AS per_window
        FROM (SELECT kind, object_id, count(*) AS n FROM items GROUP BY kind, object_id) AS g
        CROSS JOIN LATERAL (
            SELECT kw.window_seconds, kw.per_window, kw.paused FROM kind_windows AS kw
            WHERE kw.kind = g.kind
            LIMIT 1
        ) AS kw
        LEFT JOIN LATERAL (
            SELECT o.window_seconds, o.per_window, o.paused FROM key_limits AS o
            WHERE o.kind = g.kind AND o.object_id = g.object_id
            LIMIT 1
        ) AS o ON true
    ) AS c
    WHERE c.window_seconds IS NOT NULL
),
slots AS (
    -- Keys in order: two batches sharing keys lock their rows in the same order, so they
    -- wait for each other instead of deadlocking. The row moves as in enqueue, by the key's
    -- n jobs (paceline_next_slots). A key whose slots would crowd a reservation past a gap,
    -- or whose row was worked out under another limit, is left out.
    INSERT INTO object_slots AS s (kind, object_id, next_slot, recent, window_seconds, per_window)
    SELECT c.kind, c.object_id, f.next_slot, f.recent, c.window_seconds, c.per_window
    FROM counts AS c
    CROSS JOIN LATERAL paceline_next_slots(now(), NULL, c.n * make_interval(secs => c.window_seconds),
                                           c.window_seconds, c.per_window) AS f
    ORDER BY c.kind, c.object_id
    ON CONFLICT (kind, object_id) DO UPDATE
        -- EXCLUDED.next_slot - now() is how far the key's jobs move a fresh key's row: n
        -- windows under N = 1 (under N > 1, one job: nothing). The last job's slot plus a
        -- window must not pass open_until.
        SET (next_slot, recent) = (
            SELECT f.next_slot, f.recent
            FROM paceline_next_slots(GREATEST(s.next_slot, now()), s.recent,
                                     EXCLUDED.next_slot - now(), EXCLUDED.window_seconds,
                                     EXCLUDED.per_window) AS f
        )
        WHERE s.window_seconds = EXCLUDED.window_seconds
          AND s.per_window = EXCLUDED.per_window
          AND GREATEST(s.next_slot, now())
              + GREATEST(EXCLUDED.next_slot - now(),
                         make_interval(secs => EXCLUDED.window_seconds))
              <= s.open_until
    RETURNING s.kind, s.object_id, s.next_slot, s.recent, s.per_window, s.window_seconds
),
created AS (
    INSERT INTO jobs (kind, object_id, payload, run_at)
    SELECT i.kind, i.object_id, i.payload,
           CASE WHEN sl.per_window = 1
                THEN sl.next_slot - (c.n - i.k + 1) * make_interval(secs => sl.window_seconds)
                ELSE sl.recent[cardinality(sl.recent)] END
    FROM items AS i
    JOIN counts AS c ON c.kind = i.kind AND c.object_id = i.object_id
    JOIN slots AS sl ON sl.kind = i.kind AND sl.object_id = i.object_id
    ORDER BY i.ord
    -- What the statement decided, not every column: the rest of a new row is the defaults of
    -- a new job, which the caller knows (queue.jobs.Job.created). The payload as jsonb keeps
    -- it (normalized), so the answer shows it as GET /jobs/{id} will. Receiving and decoding
    -- all 16 columns of 1000 rows was a tenth of a replica's time under batch load.
    RETURNING id, kind, object_id, created_at, run_at, payload
)
-- In id order, which is batch order: the rows were inserted in it (ORDER BY i.ord above), so
-- the caller pairs them with the items of the keys that came back without a join here (with
-- the planner's guess of one row for `created`, a join by id was a nested loop: 1000 x 1000
-- rows, 90 ms of a 110 ms batch).
SELECT * FROM created ORDER BY id;

-- name: bucket_of citus
-- $1 kind, $2 object_id. The key's bucket (computed on the coordinator, no table read).
SELECT paceline_bucket($1, $2);

-- name: buckets_of citus
-- $1 kinds, $2 object_ids (parallel). Each key's bucket, in order (on the coordinator).
SELECT paceline_bucket(k, o) AS bucket
FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS key (k, o, n)
ORDER BY n;

-- name: enqueue_batch citus
-- The same on a Citus cluster (paceline_enqueue_batch, citus.sql): $1 kinds and $3 payloads
-- in full (no NULL for "all default"), $4 a bucket when every job is of one key (the call then
-- runs on that key's worker), else NULL.
SELECT {job_columns}
FROM paceline_enqueue_batch($4::smallint, $1::text[], $2::bigint[], $3::jsonb[])
ORDER BY id;

-- name: claim_due_jobs
-- $1 how many (the worker's free capacity), $2 lease seconds, $3 worker id, $4 the kinds this
-- worker has handlers for. Start due jobs under a lease held by this worker; returns them.
-- The rules are per (kind, object): a "key" below, each under its limit paceline_limit().
WITH due AS (
    -- Named apart from the job's columns, which `started` returns unqualified.
    SELECT j.id AS due_id, lim.window_seconds, lim.per_window, lim.max_running
    FROM jobs AS j
    -- The key's limit: an inlined function, three primary-key probes (a LATERAL on the row,
    -- so it stays a nested loop of probes, whatever the statistics say).
    CROSS JOIN LATERAL paceline_limit(j.kind, j.object_id) AS lim
    WHERE j.status = 'PENDING'
      -- I2: never before the reserved slot (a paused key's jobs wait at 'infinity'). Due as
      -- of this statement's start, not the transaction's (now()): the worker opens the
      -- transaction a round trip earlier (BEGIN with the plan settings), and a worker woken
      -- for a timed slot opens it about when the slot comes; tested at now(), about half its
      -- claims at a timed slot found nothing and had to claim again, 3-4 ms late.
      AND j.run_at <= statement_timestamp()
      AND j.kind = ANY ($4::text[])
      AND NOT lim.paused
      -- I4': only the key's first pending job in slot order may start. This also means a
      -- claim never takes two jobs of one key, and while another worker holds the head
      -- locked (SKIP LOCKED skips it), the jobs behind it wait too.
      --
      -- Every check is a scalar subquery with LIMIT, not NOT EXISTS: PostgreSQL turns a
      -- NOT EXISTS into an anti join, and with old statistics (a table analyzed while small)
      -- it chose to join with every pending job, by nested loop of sequential scans or by
      -- hashing them all (docs/design.md, "Plans that do not depend on statistics"). A
      -- scalar subquery is never made a join: it stays one index probe per job looked at.
      AND (
          SELECT 1 FROM jobs AS older
          WHERE older.kind = j.kind
            AND older.object_id = j.object_id
            AND older.status = 'PENDING'
            AND (older.run_at, older.id) < (j.run_at, j.id)
          LIMIT 1
      ) IS NULL
      -- I1': fewer than N starts of the key in the last W. run_at alone is not enough: when
      -- workers fall behind, a job starts after its slot and the next slot is then less than
      -- W after that start. N = 1 reads the key's last start (object_starts, one probe);
      -- N > 1 counts the key's attempts of the last W, at most N of them.
      AND CASE WHEN lim.per_window = 1 THEN (
              SELECT 1 FROM object_starts AS s
              WHERE s.kind = j.kind
                AND s.object_id = j.object_id
                AND s.last_started_at
                    > statement_timestamp() - make_interval(secs => lim.window_seconds)
              LIMIT 1
          ) IS NULL
          ELSE (
              SELECT count(*) FROM (
                  SELECT 1 FROM job_attempts AS a
                  WHERE a.kind = j.kind
                    AND a.object_id = j.object_id
                    AND a.started_at
                        > statement_timestamp() - make_interval(secs => lim.window_seconds)
                  LIMIT lim.per_window
              ) AS recent
          ) < lim.per_window
      END
      -- I7: fewer than M of the key's jobs running (the running ones of every replica).
      AND (
          SELECT count(*) FROM (
              SELECT 1 FROM jobs AS r
              WHERE r.kind = j.kind AND r.object_id = j.object_id AND r.status = 'PROCESSING'
              LIMIT lim.max_running
          ) AS running
      ) < lim.max_running
    ORDER BY j.run_at, j.id
    LIMIT $1
    FOR UPDATE OF j SKIP LOCKED
),
started AS (
    -- The start is recorded at clock_timestamp(), read after this statement's snapshot, not
    -- at now(): the worker opens the transaction a round trip earlier (BEGIN with the plan
    -- settings), and a job of the key that finished in between, seen finished above, has its
    -- finished_at (that statement's time) after now(). Recorded at now(), the history would
    -- show both running at once and the auditor would count an I7 violation that never was.
    -- The checks above use the statement's start, no later: they count at least the starts of
    -- the last W before this start.
    UPDATE jobs AS j
    SET status = 'PROCESSING', started_at = clock_timestamp(), attempts = j.attempts + 1,
        lease_expires_at = clock_timestamp() + make_interval(secs => $2), worker_id = $3
    -- A nested loop of primary-key probes, one per due job (the statement is planned from
    -- index paths only, paceline.db.plans), which also hands each started row the limit it
    -- was started under. Not a join of `started` with `due` below: between two CTEs, that
    -- nested loop is of scans, quadratic in the claim's size (512 jobs: 21 of 43 ms).
    FROM due
    WHERE j.id = due.due_id
    RETURNING {job_columns}, due.window_seconds, due.per_window, due.max_running
),
window_start AS (
    -- Record the start for the I1 check above. At most one job per key is in `started`, so
    -- the upsert never touches one row twice.
    INSERT INTO object_starts AS s (kind, object_id, last_started_at)
    SELECT kind, object_id, started_at FROM started
    ON CONFLICT (kind, object_id) DO UPDATE SET last_started_at = EXCLUDED.last_started_at
),
history AS (
    -- The attempt's own record; the job row will only show the latest attempt. With the
    -- limit it was started under, which the limit auditor judges it by.
    INSERT INTO job_attempts (
        job_id, attempt, kind, object_id, worker_id, started_at,
        window_seconds, per_window, max_running
    )
    SELECT id, attempts, kind, object_id, $3, started_at, window_seconds, per_window, max_running
    FROM started
)
SELECT {job_columns} FROM started;

-- name: claim_due_jobs citus
-- The same on a Citus cluster, for one shard: $5 a bucket of the shard (which routes the call to
-- the worker that holds it), $6 all the shard's buckets (paceline_claim, citus.sql).
-- The job's bucket too: the worker's outcome and lease statements name it (finish_jobs citus).
SELECT {job_columns}, bucket
FROM paceline_claim($5::smallint, $6::smallint[], $1, $2, $3, $4::text[]);

-- name: seconds_until_next_due
-- $1 the worker's kinds. (database clock now, when the next pending job may start), both in
-- epoch seconds; the second is NULL if nothing is pending. Looks only at the first 100 pending
-- jobs by slot, so its cost does not grow with the backlog. A head held back only by a running
-- job of its key (max_running) is left out: the finish of that job wakes the workers. On a
-- Citus cluster, of one shard, $2 its buckets: the body of paceline_next_due (citus.sql).
WITH first_pending AS (
    SELECT kind, object_id, id, run_at  -- citus: , bucket
    FROM jobs
    WHERE status = 'PENDING' AND kind = ANY ($1::text[]) AND run_at < 'infinity'
      -- citus-instead: AND bucket = ANY ($2::smallint[])
    ORDER BY run_at, id
    LIMIT 100
),
heads AS (
    -- When a head may start: at its slot, and once the window since its key's N-th last start
    -- has passed (later than the slot when an earlier run started late). Jobs behind a head
    -- wait for it. Per-row probes as scalar subqueries, never joins, as in claim_due_jobs: a
    -- few probes of indexes per job whatever the statistics say.
    SELECT f.run_at,
           GREATEST(
               f.run_at,
               (SELECT a.started_at FROM job_attempts AS a
                WHERE a.kind = f.kind AND a.object_id = f.object_id
                  -- citus-instead: AND a.bucket = f.bucket AND a.bucket = ANY ($2::smallint[])
                ORDER BY a.started_at DESC
                OFFSET lim.per_window - 1 LIMIT 1)
               + make_interval(secs => lim.window_seconds),
               CASE WHEN lim.per_window = 1 THEN
                   (SELECT s.last_started_at FROM object_starts AS s
                    WHERE s.kind = f.kind AND s.object_id = f.object_id
                      -- citus-instead: AND s.bucket = f.bucket AND s.bucket = ANY ($2::smallint[])
                   )
                   + make_interval(secs => lim.window_seconds)
               END
           ) AS earliest
    FROM first_pending AS f
    CROSS JOIN LATERAL paceline_limit(f.kind, f.object_id) AS lim
    WHERE NOT lim.paused
      AND (
        SELECT 1 FROM jobs AS older
        WHERE older.kind = f.kind AND older.object_id = f.object_id
          AND older.status = 'PENDING' AND (older.run_at, older.id) < (f.run_at, f.id)
          -- citus-instead: AND older.bucket = f.bucket AND older.bucket = ANY ($2::smallint[])
        LIMIT 1
      ) IS NULL
      AND (
          SELECT count(*) FROM (
              SELECT 1 FROM jobs AS r
              WHERE r.kind = f.kind AND r.object_id = f.object_id AND r.status = 'PROCESSING'
                -- citus-instead: AND r.bucket = f.bucket AND r.bucket = ANY ($2::smallint[])
              LIMIT lim.max_running
          ) AS running
      ) < lim.max_running
)
SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8 AS now,
       EXTRACT(EPOCH FROM
    CASE
        -- All 100 seen: a job further on has a slot at least the last one's, so waking
        -- then at the latest is safe.
        WHEN (SELECT count(*) FROM first_pending) = 100
            THEN LEAST((SELECT min(earliest) FROM heads), (SELECT max(run_at) FROM first_pending))
        ELSE (SELECT min(earliest) FROM heads)
    END)::float8 AS next_start;

-- name: seconds_until_next_due citus
-- The same on a Citus cluster, for one shard: $2 a bucket of it (routes the call to its
-- worker), $3 its buckets (paceline_next_due, citus.sql).
SELECT * FROM paceline_next_due($2::smallint, $3::smallint[], $1::text[]);

-- name: lock_running_job
-- $1 id, $2 attempt. First step of putting a running job back to PENDING (retry, release):
-- lock it if this attempt still holds it; its key. Jobs are always locked before object_slots
-- rows.
SELECT kind, object_id FROM jobs
WHERE id = $1 AND attempts = $2 AND status = 'PROCESSING'
  -- citus-instead: AND bucket = $3  -- the job's shard (FOR UPDATE is one shard's on a cluster)
FOR UPDATE;

-- name: bucket_of_job citus
-- $1 id. The job's bucket on a Citus cluster (every shard looks; a job's bucket never changes,
-- so this needs no lock).
SELECT bucket FROM jobs WHERE id = $1;

-- name: requeue_job
-- $1 id, $2 attempt, $3 seconds from now at the earliest, $4 error, $5 outcome for the
-- attempt's record (RETRY, RELEASED, LOST). Back to PENDING, for now no earlier than the delay;
-- returns that slot, which the planner (paceline.queue.scheduling) then moves to where the
-- key's limit allows, pushing the key's later jobs back behind it. The delay counts from the
-- moment the attempt is recorded as finished, this statement's start, one instant for both
-- rows: counted from now() (the transaction's start, several statements earlier, 6 ms on a
-- Citus cluster), a retry started on time came less than its backoff after the finish its
-- history showed. (Not clock_timestamp(): Citus refuses volatile functions in an UPDATE.)
WITH requeued AS (
    UPDATE jobs AS j
    SET status = 'PENDING', run_at = statement_timestamp() + make_interval(secs => $3),
        started_at = NULL, lease_expires_at = NULL, error = $4
    WHERE j.id = $1 AND j.attempts = $2 AND j.status = 'PROCESSING'
    RETURNING j.id, j.attempts, j.run_at
),
history AS (
    UPDATE job_attempts AS a
    SET outcome = $5, finished_at = statement_timestamp(), error = $4
    FROM requeued
    WHERE a.job_id = requeued.id AND a.attempt = requeued.attempts
)
SELECT run_at FROM requeued;

-- name: renew_leases
-- $1 job ids, $2 their attempts, $3 lease seconds, $4 worker id (on a Citus cluster, $5 the
-- buckets of the shard that holds the jobs). Extends the leases this
-- worker still holds; a job missing from the answer was taken back and must stop. At most
-- MAX_IDS_PER_STATEMENT ids (queries.py): array_position is a linear search.
UPDATE jobs AS j
SET lease_expires_at = now() + make_interval(secs => $3)
-- By primary key alone, running tested through the lease: see finish_jobs.
WHERE j.id = ANY ($1::bigint[])
  AND j.attempts = ($2::int[])[array_position($1::bigint[], j.id)]
  AND j.lease_expires_at IS NOT NULL
  AND j.worker_id = $4
  -- citus: AND j.bucket = ANY ($5::smallint[])  -- one shard's jobs (see finish_jobs citus)
RETURNING j.id;

-- name: expired_leases
-- $1 how many. Running jobs whose replica stopped renewing; locked for the reaper's
-- transaction, skipping ones another reaper is handling. attempts_at_retry: the attempts
-- before the job's last retry by hand, which PACELINE_MAX_ATTEMPTS does not count.
SELECT id, attempts, attempts_at_retry, kind, object_id
FROM jobs
WHERE status = 'PROCESSING' AND lease_expires_at < now()
  -- citus-instead: AND bucket = ANY ($2::smallint[])  -- one shard's (SKIP LOCKED is per shard)
ORDER BY lease_expires_at
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: fail_lost_job
-- $1 id, $2 attempt, $3 error. A lost attempt that was the last one allowed: FAILED.
WITH failed AS (
    UPDATE jobs
    SET status = 'FAILED', finished_at = clock_timestamp(), error = $3, lease_expires_at = NULL
    WHERE id = $1 AND attempts = $2 AND status = 'PROCESSING'
    RETURNING id, attempts, finished_at
)
UPDATE job_attempts AS a
SET outcome = 'LOST', finished_at = failed.finished_at, error = $3
FROM failed
WHERE a.job_id = failed.id AND a.attempt = failed.attempts;

-- name: heartbeat
-- $1 worker id, $2 host, $3 pid, $4 concurrency, $5 running now, $6 its kinds. Register or beat.
INSERT INTO workers (id, host, pid, concurrency, running, kinds)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (id) DO UPDATE
SET running = EXCLUDED.running, last_heartbeat = now();

-- name: live_kinds
-- $1 seconds. The kinds some replica that beat within that long has handlers for.
SELECT DISTINCT unnest(kinds) AS kind FROM workers
WHERE last_heartbeat > now() - make_interval(secs => $1)
ORDER BY kind;

-- name: unregister_worker
-- $1 worker id. A replica leaving gracefully.
DELETE FROM workers WHERE id = $1;

-- name: forget_dead_workers
-- $1 seconds. Replicas silent this long are gone (killed); their jobs' leases expire on their own.
DELETE FROM workers WHERE last_heartbeat < now() - make_interval(secs => $1);

-- name: prune_finished_jobs
-- $1 retention seconds, $2 batch size. Oldest finished jobs first, a small batch per
-- transaction so pruning never holds many locks; their attempts go with them. How many jobs.
WITH doomed AS (
    SELECT id FROM jobs
    WHERE status IN ('SUCCESS', 'FAILED', 'CANCELLED')
      AND finished_at < now() - make_interval(secs => $1)
    ORDER BY finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
pruned AS (
    DELETE FROM jobs USING doomed WHERE jobs.id = doomed.id RETURNING jobs.id
),
their_attempts AS (
    -- An attempt goes with its job (no foreign key cascades it: schema.py, job_attempts). By
    -- the primary key's first column, whatever the planner thinks of the batch's size.
    DELETE FROM job_attempts WHERE job_id = ANY (ARRAY(SELECT id FROM pruned))
)
SELECT count(*) FROM pruned;

-- name: prune_finished_jobs citus
-- The same on a Citus cluster, which refuses FOR UPDATE across shards: the batch is chosen
-- without locks (each shard's oldest, merged on the coordinator), and the delete tests each
-- row again, so a job retried by hand meanwhile is not deleted. The cluster keeps the foreign
-- key of job_attempts (migration 0014): it deletes their attempts.
DELETE FROM jobs
WHERE id IN (
    SELECT id FROM jobs
    WHERE status IN ('SUCCESS', 'FAILED', 'CANCELLED')
      AND finished_at < now() - make_interval(secs => $1)
    ORDER BY finished_at
    LIMIT $2
)
  AND status IN ('SUCCESS', 'FAILED', 'CANCELLED')
  AND finished_at < now() - make_interval(secs => $1);

-- name: prune_passed_windows
-- Window rows whose window has passed constrain nothing (a missing row means "free now", and
-- the enqueue makes it anew under the key's limit), so they go; the tables stay as small as
-- the set of recently active keys. Each key by its own window. A key with pending jobs or a
-- start in its window keeps its row (the planner reads those, not next_slot, but the row is
-- its lock).
WITH slots AS (
    DELETE FROM object_slots AS s
    WHERE s.next_slot < now() - (
            SELECT make_interval(secs => l.window_seconds)
            FROM paceline_limit(s.kind, s.object_id) AS l)
      AND (SELECT 1 FROM jobs AS j
           WHERE j.kind = s.kind AND j.object_id = s.object_id AND j.status = 'PENDING'
           LIMIT 1) IS NULL
      AND (SELECT 1 FROM object_starts AS t
           WHERE t.kind = s.kind AND t.object_id = s.object_id
             AND t.last_started_at >= now() - (
                 SELECT make_interval(secs => l.window_seconds)
                 FROM paceline_limit(s.kind, s.object_id) AS l)) IS NULL
)
DELETE FROM object_starts AS t
WHERE t.last_started_at < now() - (
    SELECT make_interval(secs => l.window_seconds)
    FROM paceline_limit(t.kind, t.object_id) AS l);

-- name: prune_passed_windows citus
-- The same on a Citus cluster, which refuses a per-row window here (now() minus a column's
-- interval in a DELETE): every row is judged by the longest window of any limit, so a key with
-- a shorter window keeps its rows a little longer (a row kept constrains nothing its window has
-- not already passed, so nothing is started later for it). Each shard joins its own rows on
-- the bucket.
WITH horizon AS (
    SELECT now() - make_interval(secs => max(w.window_seconds)) AS passed
    FROM (
        SELECT window_seconds FROM kind_limits WHERE window_seconds IS NOT NULL
        UNION ALL
        SELECT window_seconds FROM key_limits WHERE window_seconds IS NOT NULL
        UNION ALL
        -- paceline_limit's own fallback, when the default kind has no window.
        SELECT 300.0 WHERE NOT EXISTS (
            SELECT 1 FROM kind_limits WHERE kind = 'default' AND window_seconds IS NOT NULL)
    ) AS w
),
slots AS (
    DELETE FROM object_slots AS s
    WHERE s.next_slot < (SELECT passed FROM horizon)
      AND NOT EXISTS (
          SELECT 1 FROM jobs AS j
          WHERE j.bucket = s.bucket AND j.kind = s.kind AND j.object_id = s.object_id
            AND j.status = 'PENDING')
      AND NOT EXISTS (
          SELECT 1 FROM object_starts AS t
          WHERE t.bucket = s.bucket AND t.kind = s.kind AND t.object_id = s.object_id
            AND t.last_started_at >= (SELECT passed FROM horizon))
)
DELETE FROM object_starts AS t WHERE t.last_started_at < (SELECT passed FROM horizon);

-- name: get_job
-- $1 id.
SELECT {job_columns}
FROM jobs
WHERE id = $1;

-- name: job_created_at
-- $1 id. When the job was accepted (a cluster's listing cursor, from an id alone).
SELECT created_at FROM jobs WHERE id = $1;

-- name: get_jobs
-- $1 ids. Those that exist, in any order.
SELECT {job_columns}
FROM jobs
WHERE id = ANY ($1::bigint[]);

-- name: list_jobs
-- $1 before id (cursor), $2 limit. Newest first, over the primary key. On a cluster every
-- listing is newest first by (created_at, id) instead, after the cursor's ($3 and on: one
-- more parameter than on one server), since each node hands out ids from its own range:
-- by id, one worker's jobs would all list before the other's. The cluster's indexes on
-- (created_at, id), (object_id | kind | status, created_at, id) replace those on id (citus.sql).
SELECT {job_columns}
FROM jobs
WHERE id < $1  -- citus-instead: WHERE (created_at, id) < ($3::timestamptz, $1)
ORDER BY id DESC  -- citus-instead: ORDER BY created_at DESC, id DESC
LIMIT $2;

-- name: list_jobs_by_object
-- $1 object_id, $2 before id, $3 limit. Uses ix_jobs_object_id_id.
SELECT {job_columns}
FROM jobs
WHERE object_id = $1 AND id < $2  -- citus-instead: WHERE object_id = $1 AND (created_at, id) < ($4::timestamptz, $2)
ORDER BY id DESC  -- citus-instead: ORDER BY created_at DESC, id DESC
LIMIT $3;

-- name: list_jobs_by_status
-- $1 status, $2 before id, $3 limit. Uses ix_jobs_status_id.
SELECT {job_columns}
FROM jobs
WHERE status = $1 AND id < $2  -- citus-instead: WHERE status = $1 AND (created_at, id) < ($4::timestamptz, $2)
ORDER BY id DESC  -- citus-instead: ORDER BY created_at DESC, id DESC
LIMIT $3;

-- name: list_jobs_by_object_and_status
-- $1 object_id, $2 status, $3 before id, $4 limit. Walks the object's jobs newest first.
SELECT {job_columns}
FROM jobs
WHERE object_id = $1 AND status = $2 AND id < $3  -- citus-instead: WHERE object_id = $1 AND status = $2 AND (created_at, id) < ($5::timestamptz, $3)
ORDER BY id DESC  -- citus-instead: ORDER BY created_at DESC, id DESC
LIMIT $4;

-- name: list_jobs_by_kind
-- $1 kind, $2 before id, $3 limit. Uses ix_jobs_kind_id.
SELECT {job_columns}
FROM jobs
WHERE kind = $1 AND id < $2  -- citus-instead: WHERE kind = $1 AND (created_at, id) < ($4::timestamptz, $2)
ORDER BY id DESC  -- citus-instead: ORDER BY created_at DESC, id DESC
LIMIT $3;

-- name: list_jobs_by_kind_and_object
-- $1 kind, $2 object_id, $3 before id, $4 limit. Walks the object's jobs newest first.
SELECT {job_columns}
FROM jobs
WHERE kind = $1 AND object_id = $2 AND id < $3  -- citus-instead: WHERE kind = $1 AND object_id = $2 AND (created_at, id) < ($5::timestamptz, $3)
ORDER BY id DESC  -- citus-instead: ORDER BY created_at DESC, id DESC
LIMIT $4;

-- name: list_jobs_by_kind_and_status
-- $1 kind, $2 status, $3 before id, $4 limit. Walks the kind's jobs newest first.
SELECT {job_columns}
FROM jobs
WHERE kind = $1 AND status = $2 AND id < $3  -- citus-instead: WHERE kind = $1 AND status = $2 AND (created_at, id) < ($5::timestamptz, $3)
ORDER BY id DESC  -- citus-instead: ORDER BY created_at DESC, id DESC
LIMIT $4;

-- name: list_jobs_by_kind_object_and_status
-- $1 kind, $2 object_id, $3 status, $4 before id, $5 limit. Walks the object's jobs.
SELECT {job_columns}
FROM jobs
WHERE kind = $1 AND object_id = $2 AND status = $3 AND id < $4  -- citus-instead: WHERE kind = $1 AND object_id = $2 AND status = $3 AND (created_at, id) < ($6::timestamptz, $4)
ORDER BY id DESC  -- citus-instead: ORDER BY created_at DESC, id DESC
LIMIT $5;

-- name: list_jobs_by_payload
-- $1 a JSON object the payload must contain (payload @> $1), $2 kind, $3 object_id, $4 status
-- (NULL: any), $5 before id, $6 limit. The containment test is what narrows: ix_jobs_payload
-- (GIN, jsonb_path_ops) finds the matching jobs, the other filters are checked on them, and
-- the page is the newest of them. The ordering key is `id + 0`, not `id`: ordered by `id`,
-- the planner may walk the primary key from the newest job down and test every payload on
-- the way, which reads the whole table when few jobs match (it cannot tell that from the
-- statistics of a jsonb column). The cursor is `id + 0 < $5` for the same reason: a generic
-- plan (the cursor unknown) ANDed the GIN's bitmap with a bitmap of the whole primary key,
-- 60-90 ms at 1M jobs instead of 0.3 ms (benchmarks/scenarios/search.py). A filter that
-- matches much of the table costs a scan: 0.55-0.64 s for a third of 1M jobs.
SELECT {job_columns}
FROM jobs
WHERE payload @> $1::jsonb
  AND ($2::text IS NULL OR kind = $2)
  AND ($3::bigint IS NULL OR object_id = $3)
  AND ($4::text IS NULL OR status = $4)
  AND id + 0 < $5  -- citus-instead:   AND (created_at, id) < ($7::timestamptz, $5)
ORDER BY id + 0 DESC  -- citus-instead: ORDER BY created_at DESC, id DESC
LIMIT $6;

-- name: ping
-- A round trip that proves the session is alive (the LISTEN connection's keepalive).
SELECT 1;

-- name: notify_due
-- $1 channel, $2 seconds until the earliest job just committed is due (text).
SELECT pg_notify($1, $2);

-- name: notify_due_at
-- $1 channel, $2 when the job just committed is due: the seconds until then (at commit).
SELECT pg_notify($1, GREATEST(0, EXTRACT(EPOCH FROM $2::timestamptz - now()))::text);

-- name: finish_jobs
-- $1 ids, $2 attempts, $3 statuses (SUCCESS or FAILED), $4 durations, $5 errors, $6 results
-- (JSON, or NULL): every attempt
-- that ended since the last write, in one statement and one commit: under load the commit (a
-- WAL flush) is the cost, not the rows. Fenced by the attempt: a worker whose attempt was taken
-- back meanwhile (its lease expired, the job was requeued or re-claimed) changes nothing for
-- that job, and its id is not returned. Returns the ids it recorded.
--
-- Both tables' rows are found by primary key alone (`= ANY`), never by a join with the outcomes
-- or with each other, and each row's own values come from its place in the arrays (a linear
-- search: at most MAX_IDS_PER_STATEMENT outcomes per statement). A join's plan follows the
-- statistics, and the planner cannot know how many rows an UPDATE ... RETURNING gives (it
-- guesses one): with statistics taken on empty tables such joins read whole tables per batch
-- (docs/performance-notes.md).
WITH finished AS (
    -- Still running is tested through the lease (ck_jobs_lease_while_processing makes that the
    -- same as status = 'PROCESSING'), so that no index of running jobs looks like a shortcut.
    UPDATE jobs AS j
    SET status = ($3::text[])[array_position($1::bigint[], j.id)],
        finished_at = statement_timestamp(),
        duration = ($4::float8[])[array_position($1::bigint[], j.id)],
        error = ($5::text[])[array_position($1::bigint[], j.id)],
        result = ($6::jsonb[])[array_position($1::bigint[], j.id)],
        lease_expires_at = NULL
    WHERE j.id = ANY ($1::bigint[])
      AND j.attempts = ($2::int[])[array_position($1::bigint[], j.id)]
      AND j.lease_expires_at IS NOT NULL
    RETURNING j.id, j.kind, j.object_id
),
history AS (
    -- The same fence as the job row's: an attempt taken back was given its outcome (LOST,
    -- RELEASED, RETRY) in the same transaction that took it, so an open attempt row is one
    -- whose job row the UPDATE above finishes.
    UPDATE job_attempts AS a
    SET outcome = ($3::text[])[array_position($1::bigint[], a.job_id)],
        finished_at = statement_timestamp(),
        error = ($5::text[])[array_position($1::bigint[], a.job_id)]
    WHERE a.job_id = ANY ($1::bigint[])
      AND a.attempt = ($2::int[])[array_position($1::bigint[], a.job_id)]
      AND a.outcome IS NULL
),
wake AS (
    -- A key that ran its max_running jobs has a due job waiting for one of them to end: wake
    -- every replica's workers (a NOTIFY at commit) when one did. Only then: NOTIFY takes a
    -- cluster-wide lock at commit.
    SELECT pg_notify('paceline_jobs', '0')
    WHERE EXISTS (
        SELECT 1 FROM finished AS f
        WHERE (SELECT 1 FROM jobs AS p
               WHERE p.kind = f.kind AND p.object_id = f.object_id AND p.status = 'PENDING'
                 AND p.run_at <= now()
               LIMIT 1) IS NOT NULL
    )
)
-- count(*) makes the wake run (a CTE nothing reads is never evaluated).
SELECT id FROM finished WHERE (SELECT count(*) FROM wake) >= 0;

-- name: finish_jobs citus
-- The same on a Citus cluster, for the jobs of one shard: $7 the shard's buckets, which route the
-- statement to that shard alone (paceline.db.jobs groups the outcomes by shard; outcomes of jobs
-- whose bucket the worker does not know are sent with every bucket, to every shard at once, in
-- one distributed transaction). Each row's values come from a join with the arrays
-- (Citus crashed on the per-row array_position of the one-server form, issue 19's notes). The
-- wake-up cannot look at each finished job's key (Citus runs no correlated subquery over a
-- CTE's rows): a batch that finished a job wakes the workers, one NOTIFY per batch.
WITH finished AS (
    UPDATE jobs AS j
    SET status = o.status, finished_at = statement_timestamp(), duration = o.duration,
        error = o.error, result = o.result, lease_expires_at = NULL
    FROM unnest($1::bigint[], $2::int[], $3::text[], $4::float8[], $5::text[], $6::jsonb[])
        AS o(id, attempt, status, duration, error, result)
    WHERE j.id = ANY ($1::bigint[]) AND j.id = o.id
      AND j.bucket = ANY ($7::smallint[])
      AND j.attempts = o.attempt
      AND j.lease_expires_at IS NOT NULL
    RETURNING j.id
),
history AS (
    UPDATE job_attempts AS a
    SET outcome = o.status, finished_at = statement_timestamp(), error = o.error
    FROM unnest($1::bigint[], $2::int[], $3::text[], $5::text[])
        AS o(id, attempt, status, error)
    WHERE a.job_id = ANY ($1::bigint[]) AND a.job_id = o.id
      AND a.bucket = ANY ($7::smallint[])
      AND a.attempt = o.attempt
      AND a.outcome IS NULL
),
wake AS (
    -- Counted, not returned: Citus keeps a CTE's rows, and a void column cannot be kept.
    SELECT count(*) AS n FROM (
        SELECT pg_notify('paceline_jobs', '0') WHERE EXISTS (SELECT 1 FROM finished)
    ) AS woke
)
SELECT id FROM finished WHERE (SELECT n FROM wake) >= 0;
