-- Reference: a bare single-row INSERT into jobs (all its indexes), no slot bookkeeping.
-- Variables: -D kind=<the jobs' kind>.
\set object_id random(1, 1000000000000)
INSERT INTO jobs (kind, object_id, run_at) VALUES (:kind, :object_id, now());
