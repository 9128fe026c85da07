-- paceline's runtime SQL, one named query per block. Loaded by paceline.db.queries.
-- Parameters are positional ($1, ...); each block says what they are.
-- W, the rate window, is always passed in seconds as float8, and all times are the
-- database's clock, so replicas with skewed clocks still agree on every window.

-- name: enqueue
-- $1 object_id, $2 W. Reserve the object's next slot and insert the job, in one statement.
WITH slot AS (
    -- The upsert's row lock serializes concurrent submitters of this object, and only of
    -- this object. The job's slot is GREATEST(next_slot, now()) (a fresh object: now());
    -- the row keeps slot + W for the next job. Reading the slot back from the locked row
    -- is what makes two concurrent requests unable to take the same slot.
    INSERT INTO object_slots AS s (object_id, next_slot)
    VALUES ($1, now() + make_interval(secs => $2))
    ON CONFLICT (object_id) DO UPDATE
        SET next_slot = GREATEST(s.next_slot, now()) + make_interval(secs => $2)
    RETURNING s.next_slot - make_interval(secs => $2) AS run_at
),
job AS (
    INSERT INTO jobs (object_id, run_at)
    SELECT $1, slot.run_at FROM slot
    RETURNING id, object_id, status, created_at, run_at, started_at, finished_at,
              duration, attempts, error
)
-- Wake the workers of every replica; the payload is the seconds until the job is due,
-- so a listener can set its timer without trusting its own clock.
SELECT job.*
FROM job
CROSS JOIN LATERAL (
    SELECT pg_notify('paceline_jobs', EXTRACT(EPOCH FROM job.run_at - now())::text)
) AS wake;

-- name: claim_due_jobs
-- $1 how many (the worker's free capacity), $2 W. Start due jobs; returns them.
WITH due AS (
    SELECT j.id
    FROM jobs AS j
    WHERE j.status = 'PENDING'
      -- I2: never before the reserved slot.
      AND j.run_at <= now()
      -- I4: only the oldest pending job of an object may start. This also means a
      -- claim never takes two jobs of one object, and while another worker holds the
      -- head locked (SKIP LOCKED skips it), the jobs behind it wait too.
      AND NOT EXISTS (
          SELECT 1 FROM jobs AS older
          WHERE older.object_id = j.object_id
            AND older.status = 'PENDING'
            AND older.id < j.id
      )
      -- I1: the object's last actual start is at least W ago. run_at alone is not
      -- enough: when workers fall behind, a job starts after its slot and the next
      -- slot is then less than W after that start.
      AND NOT EXISTS (
          SELECT 1 FROM object_starts AS s
          WHERE s.object_id = j.object_id
            AND s.last_started_at > now() - make_interval(secs => $2)
      )
    ORDER BY j.run_at, j.id
    LIMIT $1
    FOR UPDATE OF j SKIP LOCKED
),
started AS (
    UPDATE jobs AS j
    SET status = 'PROCESSING', started_at = now(), attempts = j.attempts + 1
    FROM due
    WHERE j.id = due.id
    RETURNING j.id, j.object_id, j.status, j.created_at, j.run_at, j.started_at,
              j.finished_at, j.duration, j.attempts, j.error
),
window_start AS (
    -- Record the start for the I1 check above. At most one job per object is in
    -- `started`, so the upsert never touches one row twice.
    INSERT INTO object_starts AS s (object_id, last_started_at)
    SELECT object_id, started_at FROM started
    ON CONFLICT (object_id) DO UPDATE SET last_started_at = EXCLUDED.last_started_at
)
SELECT * FROM started;

-- name: seconds_until_next_due
-- $1 W. (database clock now, when the next pending job may start), both in epoch seconds;
-- the second is NULL if nothing is pending. Looks only at the first 100 pending jobs by slot,
-- so its cost does not grow with the backlog.
WITH first_pending AS (
    SELECT object_id, id, run_at
    FROM jobs
    WHERE status = 'PENDING'
    ORDER BY run_at, id
    LIMIT 100
),
heads AS (
    -- When a head may start: at its slot, and a window after its object's last start
    -- (later than the slot when an earlier run started late). Jobs behind a head wait for it.
    SELECT f.run_at,
           GREATEST(f.run_at, s.last_started_at + make_interval(secs => $1)) AS earliest
    FROM first_pending AS f
    LEFT JOIN object_starts AS s ON s.object_id = f.object_id
    WHERE NOT EXISTS (
        SELECT 1 FROM jobs AS older
        WHERE older.object_id = f.object_id AND older.status = 'PENDING' AND older.id < f.id
    )
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

-- name: finish_job
-- $1 id, $2 attempt, $3 status, $4 duration, $5 error. Fenced by the attempt: a worker
-- whose attempt was taken back meanwhile changes nothing (returns no row).
UPDATE jobs
SET status = $3, finished_at = clock_timestamp(), duration = $4, error = $5
WHERE id = $1 AND attempts = $2 AND status = 'PROCESSING'
RETURNING id;

-- name: release_job
-- $1 id, $2 attempt. Give a running job back (shutdown): it runs again, as a new
-- attempt, once its object's window since this start has passed (the claim's I1 check).
UPDATE jobs
SET status = 'PENDING', started_at = NULL
WHERE id = $1 AND attempts = $2 AND status = 'PROCESSING'
RETURNING id;

-- name: get_job
-- $1 id.
SELECT id, object_id, status, created_at, run_at, started_at, finished_at,
       duration, attempts, error
FROM jobs
WHERE id = $1;

-- name: list_jobs
-- $1 before id (cursor), $2 limit. Newest first, over the primary key.
SELECT id, object_id, status, created_at, run_at, started_at, finished_at,
       duration, attempts, error
FROM jobs
WHERE id < $1
ORDER BY id DESC
LIMIT $2;

-- name: list_jobs_by_object
-- $1 object_id, $2 before id, $3 limit. Uses ix_jobs_object_id_id.
SELECT id, object_id, status, created_at, run_at, started_at, finished_at,
       duration, attempts, error
FROM jobs
WHERE object_id = $1 AND id < $2
ORDER BY id DESC
LIMIT $3;

-- name: list_jobs_by_status
-- $1 status, $2 before id, $3 limit. Uses ix_jobs_status_id.
SELECT id, object_id, status, created_at, run_at, started_at, finished_at,
       duration, attempts, error
FROM jobs
WHERE status = $1 AND id < $2
ORDER BY id DESC
LIMIT $3;

-- name: list_jobs_by_object_and_status
-- $1 object_id, $2 status, $3 before id, $4 limit. Walks the object's jobs newest first.
SELECT id, object_id, status, created_at, run_at, started_at, finished_at,
       duration, attempts, error
FROM jobs
WHERE object_id = $1 AND status = $2 AND id < $3
ORDER BY id DESC
LIMIT $4;

-- name: ping
SELECT 1;
