-- The page's sign-ins (table `sessions`, migration 0011) and the key their token fingerprints
-- are made with. Loaded by paceline.db.queries. A session row is found by the SHA-256 of the
-- browser's cookie value, never by the value itself.

-- name: session_key
-- The random key (hex) every replica fingerprints tokens and signs form tokens with; NULL on a
-- database that lost it (seed_session_key makes one).
SELECT value FROM service_state WHERE name = 'session_key';

-- name: seed_session_key
-- $1 a new random key (hex). Kept only if there is none: replicas racing here all read the
-- winner's key with session_key afterwards.
INSERT INTO service_state (name, value)
VALUES ('session_key', $1)
ON CONFLICT (name) DO NOTHING;

-- name: create_session
-- $1 id (SHA-256 of the cookie value), $2 scope, $3 token fingerprint, $4 lifetime in seconds.
-- Expiry is on the database clock, the one every replica reads it with. Returns expires_at.
INSERT INTO sessions (id, scope, token_fingerprint, expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4))
RETURNING expires_at;

-- name: find_session
-- $1 id. The session if it has not expired: one primary-key lookup per signed-in request.
SELECT scope, token_fingerprint, expires_at
FROM sessions
WHERE id = $1
  AND expires_at > now();

-- name: end_session
-- $1 id. Sign-out (or a session refused for a rotated-out token): the cookie is worthless from
-- now on, on every replica.
DELETE FROM sessions WHERE id = $1;

-- name: prune_expired_sessions
-- $1 batch. Expired sessions, oldest first through ix_sessions_expires_at; how many is the
-- command tag's count.
DELETE FROM sessions
WHERE id IN (
    SELECT id FROM sessions
    WHERE expires_at <= now()
    ORDER BY expires_at
    LIMIT $1
);
