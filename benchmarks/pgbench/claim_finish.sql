-- Ceiling for the drain: claim up to :batch due jobs in one statement (the claim docs/design.md
-- prescribes: SKIP LOCKED over the due index, FIFO per object, the spacing check against the
-- object's last start, all per (kind, object_id) key, of the kinds the worker has handlers
-- for), then mark them finished in a second statement, as a worker whose handler does nothing
-- would. Variables: -D batch=<jobs per claim> -D window=<W seconds> -D kinds=<the worker's
-- kinds as an array literal, e.g. {default}>.
WITH due AS (
    SELECT j.id
    FROM jobs AS j
    WHERE j.status = 'PENDING'
      AND j.run_at <= now()
      AND j.kind = ANY (:kinds::text[])
      -- FIFO: only the oldest pending job of its key.
      AND NOT EXISTS (
          SELECT 1 FROM jobs AS older
          WHERE older.kind = j.kind AND older.object_id = j.object_id
            AND older.status = 'PENDING' AND older.id < j.id
      )
      -- Spacing: the key's last actual start is a window ago.
      AND NOT EXISTS (
          SELECT 1 FROM object_starts AS s
          WHERE s.kind = j.kind AND s.object_id = j.object_id
            AND s.last_started_at > now() - make_interval(secs => :window)
      )
    ORDER BY j.run_at, j.id
    LIMIT :batch
    FOR UPDATE OF j SKIP LOCKED
),
started AS (
    UPDATE jobs AS j
    SET status = 'PROCESSING', started_at = now(), attempts = j.attempts + 1,
        lease_expires_at = now() + interval '30 seconds'
    FROM due
    WHERE j.id = due.id
    RETURNING j.id, j.kind, j.object_id, j.started_at
),
window_start AS (
    -- Record the start for the spacing check.
    INSERT INTO object_starts AS s (kind, object_id, last_started_at)
    SELECT kind, object_id, started_at FROM started
    ON CONFLICT (kind, object_id) DO UPDATE SET last_started_at = EXCLUDED.last_started_at
)
SELECT array_agg(id) AS ids FROM started
\gset
-- The handler ran (a no-op); record every claimed job as finished in one statement.
UPDATE jobs
SET status = 'SUCCESS', finished_at = clock_timestamp(), duration = 0, lease_expires_at = NULL
WHERE id = ANY (:ids::bigint[]) AND status = 'PROCESSING';
