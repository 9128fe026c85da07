-- Jobs, their attempts, leases and replicas: one named query per block, loaded by
-- paceline.db.queries and run only through the typed functions of paceline.db.jobs.
-- Parameters are positional ($1, ...); each block says what they are.
-- W, the rate window, is always passed in seconds as float8, and all times are the
-- database's clock, so replicas with skewed clocks still agree on every window.

-- name: enqueue
-- $1 kind, $2 object_id, $3 W, $4 payload (JSON text, or NULL), $5 absorbed (1 for the job an
-- on_busy=append request starts, else NULL). Reserve the (kind, object)'s next slot and
-- insert the job, in one statement.
WITH slot AS (
    -- The upsert's row lock serializes concurrent submitters of this key, and only of this
    -- key. The job's slot is GREATEST(next_slot, now()) (a fresh key: now()); the row keeps
    -- slot + W for the next job. Reading the slot back from the locked row is what makes two
    -- concurrent requests unable to take the same slot.
    INSERT INTO object_slots AS s (kind, object_id, next_slot)
    VALUES ($1, $2, now() + make_interval(secs => $3))
    ON CONFLICT (kind, object_id) DO UPDATE
        SET next_slot = GREATEST(s.next_slot, now()) + make_interval(secs => $3)
    RETURNING s.next_slot - make_interval(secs => $3) AS run_at
),
job AS (
    INSERT INTO jobs (kind, object_id, run_at, payload, absorbed)
    SELECT $1, $2, slot.run_at, $4::jsonb, $5 FROM slot
    RETURNING {job_columns}
)
-- No NOTIFY here: NOTIFY takes a cluster-wide lock at commit, which throttles this statement
-- (docs/performance-notes.md). The API wakes workers through DueNotifier, one NOTIFY per
-- burst of enqueues instead of one per job.
SELECT * FROM job;

-- name: enqueue_batch
-- $1 kinds, $2 object ids, $3 payloads (JSON, or NULL): parallel arrays in request order,
-- repeats allowed; $4 W. Many jobs in one statement, each in its (kind, object)'s next free
-- slot: the k-th occurrence of a key in the batch takes the k-th slot after the key's next
-- free one, so repeats are a window apart as if sent one by one.
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
counts AS (
    SELECT kind, object_id, count(*) AS n FROM items GROUP BY kind, object_id
),
slots AS (
    -- Keys in order: two batches sharing keys lock their rows in the same order, so they
    -- wait for each other instead of deadlocking. EXCLUDED.next_slot - now() is the key's n
    -- windows.
    INSERT INTO object_slots AS s (kind, object_id, next_slot)
    SELECT kind, object_id, now() + n * make_interval(secs => $4)
    FROM counts ORDER BY kind, object_id
    ON CONFLICT (kind, object_id) DO UPDATE
        SET next_slot = GREATEST(s.next_slot, now()) + (EXCLUDED.next_slot - now())
    RETURNING s.kind, s.object_id, s.next_slot
),
created AS (
    INSERT INTO jobs (kind, object_id, payload, run_at)
    SELECT i.kind, i.object_id, i.payload,
           sl.next_slot - (c.n - i.k + 1) * make_interval(secs => $4)
    FROM items AS i
    JOIN counts AS c ON c.kind = i.kind AND c.object_id = i.object_id
    JOIN slots AS sl ON sl.kind = i.kind AND sl.object_id = i.object_id
    ORDER BY i.ord
    RETURNING {job_columns}
)
SELECT * FROM created ORDER BY id;

-- name: claim_due_jobs
-- $1 how many (the worker's free capacity), $2 W, $3 lease seconds, $4 worker id, $5 the kinds
-- this worker has handlers for. Start due jobs under a lease held by this worker; returns
-- them. The window and FIFO rules are per (kind, object): a "key" below.
WITH due AS (
    SELECT j.id
    FROM jobs AS j
    WHERE j.status = 'PENDING'
      -- I2: never before the reserved slot.
      AND j.run_at <= now()
      AND j.kind = ANY ($5::text[])
      -- I4: only the oldest pending job of a key may start. This also means a
      -- claim never takes two jobs of one object, and while another worker holds the
      -- head locked (SKIP LOCKED skips it), the jobs behind it wait too.
      --
      -- Both checks are scalar subqueries with LIMIT 1, not NOT EXISTS: PostgreSQL turns a
      -- NOT EXISTS into an anti join, and with old statistics (a table analyzed while small)
      -- it chose to join with every pending job, by nested loop of sequential scans or by
      -- hashing them all (docs/design.md, "Plans that do not depend on statistics"). A
      -- scalar subquery is never made a join: it stays one index probe per job looked at.
      AND (
          SELECT 1 FROM jobs AS older
          WHERE older.kind = j.kind
            AND older.object_id = j.object_id
            AND older.status = 'PENDING'
            AND older.id < j.id
          LIMIT 1
      ) IS NULL
      -- I1: the object's last actual start is at least W ago. run_at alone is not
      -- enough: when workers fall behind, a job starts after its slot and the next
      -- slot is then less than W after that start.
      AND (
          SELECT 1 FROM object_starts AS s
          WHERE s.kind = j.kind
            AND s.object_id = j.object_id
            AND s.last_started_at > now() - make_interval(secs => $2)
          LIMIT 1
      ) IS NULL
    ORDER BY j.run_at, j.id
    LIMIT $1
    FOR UPDATE OF j SKIP LOCKED
),
started AS (
    UPDATE jobs AS j
    SET status = 'PROCESSING', started_at = now(), attempts = j.attempts + 1,
        lease_expires_at = now() + make_interval(secs => $3), worker_id = $4
    -- By primary key: joined to the CTE instead, the planner may hash-join it against a
    -- sequential scan of the whole table.
    WHERE j.id = ANY (ARRAY(SELECT id FROM due))
    -- Unqualified, the columns are the updated row's (the statement has no FROM).
    RETURNING {job_columns}
),
window_start AS (
    -- Record the start for the I1 check above. At most one job per key is in `started`, so
    -- the upsert never touches one row twice.
    INSERT INTO object_starts AS s (kind, object_id, last_started_at)
    SELECT kind, object_id, started_at FROM started
    ON CONFLICT (kind, object_id) DO UPDATE SET last_started_at = EXCLUDED.last_started_at
),
history AS (
    -- The attempt's own record; the job row will only show the latest attempt.
    INSERT INTO job_attempts (job_id, attempt, kind, object_id, worker_id, started_at)
    SELECT id, attempts, kind, object_id, $4, started_at FROM started
)
SELECT * FROM started;

-- name: seconds_until_next_due
-- $1 W, $2 the worker's kinds. (database clock now, when the next pending job may start), both in epoch seconds;
-- the second is NULL if nothing is pending. Looks only at the first 100 pending jobs by slot,
-- so its cost does not grow with the backlog.
WITH first_pending AS (
    SELECT kind, object_id, id, run_at
    FROM jobs
    WHERE status = 'PENDING' AND kind = ANY ($2::text[])
    ORDER BY run_at, id
    LIMIT 100
),
heads AS (
    -- When a head may start: at its slot, and a window after its object's last start
    -- (later than the slot when an earlier run started late). Jobs behind a head wait for it.
    -- Per-row probes as scalar subqueries, never joins, as in claim_due_jobs: 100 probes of
    -- indexes whatever the statistics say (a join hashed every pending job when they were old).
    SELECT f.run_at,
           GREATEST(
               f.run_at,
               (SELECT s.last_started_at FROM object_starts AS s
                WHERE s.kind = f.kind AND s.object_id = f.object_id)
               + make_interval(secs => $1)
           ) AS earliest
    FROM first_pending AS f
    WHERE (
        SELECT 1 FROM jobs AS older
        WHERE older.kind = f.kind AND older.object_id = f.object_id
          AND older.status = 'PENDING' AND older.id < f.id
        LIMIT 1
    ) IS NULL
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

-- name: lock_running_job
-- $1 id, $2 attempt. First step of putting a running job back to PENDING (retry, release):
-- lock it if this attempt still holds it; its key. Jobs are always locked before object_slots
-- rows.
SELECT kind, object_id FROM jobs
WHERE id = $1 AND attempts = $2 AND status = 'PROCESSING'
FOR UPDATE;

-- name: requeue_job
-- $1 id, $2 attempt, $3 seconds from now at the earliest, $4 W, $5 error, $6 outcome for the
-- attempt's record (RETRY, RELEASED, LOST). Back to PENDING, no earlier than the delay and
-- than a window after the object's last start (I1 holds for retries too); returns the new slot.
-- It NOTIFYs (at commit) the seconds until the new slot itself, unlike enqueue (whose wake-ups
-- DueNotifier sends, one per burst): a job released or reaped here is usually run by another
-- replica, whose worker may be asleep until its idle poll (I5). Requeues are rare; a NOTIFY
-- each costs nothing that matters.
WITH requeued AS (
    UPDATE jobs AS j
    SET status = 'PENDING',
        run_at = GREATEST(
            now() + make_interval(secs => $3),
            (SELECT s.last_started_at + make_interval(secs => $4)
             FROM object_starts AS s WHERE s.kind = j.kind AND s.object_id = j.object_id)
        ),
        started_at = NULL, lease_expires_at = NULL, error = $5
    WHERE j.id = $1 AND j.attempts = $2 AND j.status = 'PROCESSING'
    RETURNING j.id, j.attempts, j.run_at
),
history AS (
    UPDATE job_attempts AS a
    SET outcome = $6, finished_at = clock_timestamp(), error = $5
    FROM requeued
    WHERE a.job_id = requeued.id AND a.attempt = requeued.attempts
)
SELECT requeued.run_at
FROM requeued
CROSS JOIN LATERAL (
    SELECT pg_notify('paceline_jobs', EXTRACT(EPOCH FROM requeued.run_at - now())::text)
) AS wake;

-- name: shift_later_slots
-- $1 kind, $2 object_id, $3 id of the requeued job, $4 its new slot, $5 W. The key's jobs
-- behind it keep their order and move back so each is still a window after the one before
-- (their run_at stays an honest prediction, I6); the key's next free slot moves after the last
-- of them.
WITH later AS (
    SELECT id, row_number() OVER (ORDER BY id) AS position
    FROM jobs
    WHERE kind = $1 AND object_id = $2 AND status = 'PENDING' AND id > $3
),
moved AS (
    UPDATE jobs AS j
    SET run_at = GREATEST(j.run_at, $4::timestamptz + later.position * make_interval(secs => $5))
    FROM later
    WHERE j.id = later.id
    RETURNING j.run_at
)
UPDATE object_slots
SET next_slot = GREATEST(
    next_slot,
    $4::timestamptz + make_interval(secs => $5),
    (SELECT max(run_at) FROM moved) + make_interval(secs => $5)
)
WHERE kind = $1 AND object_id = $2;

-- name: renew_leases
-- $1 job ids, $2 their attempts, $3 lease seconds, $4 worker id. Extends the leases this
-- worker still holds; a job missing from the answer was taken back and must stop. At most
-- MAX_IDS_PER_STATEMENT ids (queries.py): array_position is a linear search.
UPDATE jobs AS j
SET lease_expires_at = now() + make_interval(secs => $3)
-- By primary key alone, running tested through the lease: see finish_jobs.
WHERE j.id = ANY ($1::bigint[])
  AND j.attempts = ($2::int[])[array_position($1::bigint[], j.id)]
  AND j.lease_expires_at IS NOT NULL
  AND j.worker_id = $4
RETURNING j.id;

-- name: expired_leases
-- $1 how many. Running jobs whose replica stopped renewing; locked for the reaper's
-- transaction, skipping ones another reaper is handling.
SELECT id, attempts, kind, object_id
FROM jobs
WHERE status = 'PROCESSING' AND lease_expires_at < now()
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
-- transaction so pruning never holds many locks; their attempts go with them (cascade).
WITH doomed AS (
    SELECT id FROM jobs
    WHERE status IN ('SUCCESS', 'FAILED', 'CANCELLED')
      AND finished_at < now() - make_interval(secs => $1)
    ORDER BY finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM jobs USING doomed WHERE jobs.id = doomed.id;

-- name: prune_passed_windows
-- $1 W. Window rows whose window has passed constrain nothing (a missing row means "free
-- now"), so they go; the tables stay as small as the set of recently active objects.
WITH slots AS (
    DELETE FROM object_slots
    WHERE next_slot < now() - make_interval(secs => $1)
)
DELETE FROM object_starts
WHERE last_started_at < now() - make_interval(secs => $1);

-- name: get_job
-- $1 id.
SELECT {job_columns}
FROM jobs
WHERE id = $1;

-- name: get_jobs
-- $1 ids. Those that exist, in any order.
SELECT {job_columns}
FROM jobs
WHERE id = ANY ($1::bigint[]);

-- name: list_jobs
-- $1 before id (cursor), $2 limit. Newest first, over the primary key.
SELECT {job_columns}
FROM jobs
WHERE id < $1
ORDER BY id DESC
LIMIT $2;

-- name: list_jobs_by_object
-- $1 object_id, $2 before id, $3 limit. Uses ix_jobs_object_id_id.
SELECT {job_columns}
FROM jobs
WHERE object_id = $1 AND id < $2
ORDER BY id DESC
LIMIT $3;

-- name: list_jobs_by_status
-- $1 status, $2 before id, $3 limit. Uses ix_jobs_status_id.
SELECT {job_columns}
FROM jobs
WHERE status = $1 AND id < $2
ORDER BY id DESC
LIMIT $3;

-- name: list_jobs_by_object_and_status
-- $1 object_id, $2 status, $3 before id, $4 limit. Walks the object's jobs newest first.
SELECT {job_columns}
FROM jobs
WHERE object_id = $1 AND status = $2 AND id < $3
ORDER BY id DESC
LIMIT $4;

-- name: list_jobs_by_kind
-- $1 kind, $2 before id, $3 limit. Uses ix_jobs_kind_id.
SELECT {job_columns}
FROM jobs
WHERE kind = $1 AND id < $2
ORDER BY id DESC
LIMIT $3;

-- name: list_jobs_by_kind_and_object
-- $1 kind, $2 object_id, $3 before id, $4 limit. Walks the object's jobs newest first.
SELECT {job_columns}
FROM jobs
WHERE kind = $1 AND object_id = $2 AND id < $3
ORDER BY id DESC
LIMIT $4;

-- name: list_jobs_by_kind_and_status
-- $1 kind, $2 status, $3 before id, $4 limit. Walks the kind's jobs newest first.
SELECT {job_columns}
FROM jobs
WHERE kind = $1 AND status = $2 AND id < $3
ORDER BY id DESC
LIMIT $4;

-- name: list_jobs_by_kind_object_and_status
-- $1 kind, $2 object_id, $3 status, $4 before id, $5 limit. Walks the object's jobs.
SELECT {job_columns}
FROM jobs
WHERE kind = $1 AND object_id = $2 AND status = $3 AND id < $4
ORDER BY id DESC
LIMIT $5;

-- name: ping
-- A round trip that proves the session is alive (the LISTEN connection's keepalive).
SELECT 1;

-- name: notify_due
-- $1 channel, $2 seconds until the earliest job just committed is due (text).
SELECT pg_notify($1, $2);

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
    RETURNING j.id
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
)
SELECT id FROM finished;
