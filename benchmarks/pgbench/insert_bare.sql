-- Reference: a bare single-row INSERT into jobs (all its indexes), no slot bookkeeping.
\set object_id random(1, 1000000000000)
INSERT INTO jobs (object_id, run_at) VALUES (:object_id, now());
