"""The schema as SQLAlchemy Core metadata: the source Alembic's migrations are checked against.

Runtime queries do not use SQLAlchemy: they are hand-written SQL in the `*.sql` files beside it,
run through the typed functions of `jobs.py`, `slots.py` and `dashboard.py`.
"""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

STATUSES = ("PENDING", "PROCESSING", "SUCCESS", "FAILED", "CANCELLED")

jobs = Table(
    "jobs",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    # Routes the job to its kind's handler; the rate window is per (kind, object_id).
    Column("kind", Text, nullable=False, server_default=text("'default'")),
    Column("object_id", BigInteger, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'PENDING'")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The slot enqueue reserved: the job never starts before it (I2, I6).
    Column("run_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    # Seconds the handler took, measured by the worker on a monotonic clock.
    Column("duration", Double),
    # Every attempt of the job's life (the number of its latest one in job_attempts).
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    # `attempts` when the job was last retried by hand (0: never); the retry policy and the
    # reaper count the attempts since then against PACELINE_MAX_ATTEMPTS.
    Column("attempts_at_retry", Integer, nullable=False, server_default=text("0")),
    Column("error", Text),
    # While PROCESSING: until when the claiming replica's lease holds (renewed as it runs),
    # and which replica that is. An expired lease means the replica is gone: taken back.
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("worker_id", Uuid),
    # What the client gave the job to work on, and what its handler returned (JSON, each at
    # most MAX_PAYLOAD_BYTES encoded).
    Column("payload", JSONB),
    Column("result", JSONB),
    # A job created by on_busy=append: how many payloads its payload array holds (NULL for
    # every other job, whose payload is whatever the client sent).
    Column("absorbed", Integer),
    # The client's earliest start (POST /jobs "not_before"): every re-plan keeps the job's slot
    # at or after it. NULL for a job that may start as soon as its key's limit allows.
    Column("not_before", DateTime(timezone=True)),
    # paceline_bucket(kind, object_id) on a Citus cluster, which distributes the table on it
    # (migration 0013, paceline.db.citus); NULL and unused on one PostgreSQL server.
    Column("bucket", SmallInteger),
    CheckConstraint("kind ~ '^[a-z0-9_.-]{1,64}$'", name="kind"),
    CheckConstraint(
        "status IN ('PENDING', 'PROCESSING', 'SUCCESS', 'FAILED', 'CANCELLED')",
        name="status",
    ),
    # A lease exactly while running: the worker's batched writes test "still running"
    # through it (jobs.sql, finish_jobs), where no index of running jobs can be used.
    CheckConstraint(
        "(status = 'PROCESSING') = (lease_expires_at IS NOT NULL)",
        name="lease_while_processing",
    ),
    # The claim scans due pending jobs in slot order; a partial index keeps that scan
    # proportional to the pending jobs, not to the history.
    Index(
        "ix_jobs_due",
        "run_at",
        "id",
        postgresql_where=text("status = 'PENDING'"),
    ),
    # The oldest pending job (the dashboard's oldest wait): the first entry. Without it the
    # planner may walk the primary key through the whole history, filtering on status.
    Index("ix_jobs_pending_id", "id", postgresql_where=text("status = 'PENDING'")),
    # A key's pending jobs in slot order (I4): "is there a job of this key before this one?"
    # is one probe here, and so are the key's head, its pending tail (on_busy=replace and
    # append) and the planner's read of the key's reservations.
    Index(
        "ix_jobs_pending_kind_object_id_run_at_id",
        "kind",
        "object_id",
        "run_at",
        "id",
        postgresql_where=text("status = 'PENDING'"),
    ),
    # max_running (I7): how many jobs of a key run now, one probe.
    Index(
        "ix_jobs_running_kind_object_id",
        "kind",
        "object_id",
        postgresql_where=text("status = 'PROCESSING'"),
    ),
    # Listing: newest first, by object, by kind or by status.
    Index("ix_jobs_object_id_id", "object_id", text("id DESC")),
    Index("ix_jobs_kind_id", "kind", text("id DESC")),
    Index("ix_jobs_status_id", "status", text("id DESC")),
    # The reaper looks for running jobs whose lease ran out.
    Index(
        "ix_jobs_lease",
        "lease_expires_at",
        postgresql_where=text("status = 'PROCESSING'"),
    ),
    # Search by payload: payload @> '{"customer": 42}' (GET /jobs, POST /jobs/retry). Jobs
    # without a payload are left out: GIN keeps an entry for a NULL too, which doubled the
    # cost of inserting payload-less jobs (300k rows: 0.8-0.9 s bare, 1.6-2.0 s with it), and
    # `@>` never matches NULL, so the planner proves the search may use the partial index.
    Index(
        "ix_jobs_payload",
        "payload",
        postgresql_using="gin",
        postgresql_ops={"payload": "jsonb_path_ops"},
        postgresql_where=text("payload IS NOT NULL"),
    ),
    # Retention prunes finished jobs oldest first.
    Index(
        "ix_jobs_finished",
        "finished_at",
        postgresql_where=text("status IN ('SUCCESS', 'FAILED', 'CANCELLED')"),
    ),
)

# Every start of a job, kept apart from the job row (which shows only its latest attempt):
# the evidence that starts of an object were a window apart, also across retries and lost
# replicas, and the history the per-object timeline shows. An attempt's job_id is its job's:
# the claim writes both in one statement. No foreign key checks it (its check was a quarter of
# a claim's time, migration 0014); retention deletes a job's attempts with the job.
job_attempts = Table(
    "job_attempts",
    metadata,
    Column("job_id", BigInteger, primary_key=True, autoincrement=False),
    Column("attempt", Integer, primary_key=True, autoincrement=False),
    Column("kind", Text, nullable=False, server_default=text("'default'")),
    Column("object_id", BigInteger, nullable=False),
    Column("worker_id", Uuid),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    # NULL while running; then SUCCESS, FAILED, RETRY, LOST (lease expired) or RELEASED.
    Column("outcome", Text),
    Column("error", Text),
    # The key's limit in force when the claim started it (NULL before migration 0012): the
    # limit auditor judges the start by it, not by a limit changed since.
    Column("window_seconds", Double),
    Column("per_window", Integer),
    Column("max_running", Integer),
    # paceline_bucket(kind, object_id) on a Citus cluster, which distributes the table on it
    # (migration 0013, paceline.db.citus); NULL and unused on one PostgreSQL server.
    Column("bucket", SmallInteger),
    Index("ix_job_attempts_kind_object_id_started_at", "kind", "object_id", "started_at"),
    # The window auditor reads the starts of the last few seconds, of every object.
    Index("ix_job_attempts_started_at", "started_at"),
)

# Live replicas: each process with workers registers here and beats every few seconds.
workers = Table(
    "workers",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("running", Integer, nullable=False, server_default=text("0")),
    # The kinds this replica has handlers for: a job of a kind no live replica knows is
    # refused at submit, rather than left waiting for code that is not there.
    Column("kinds", ARRAY(Text), nullable=False, server_default=text("'{}'")),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_heartbeat", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# The enqueue side of a (kind, object)'s window: the next slot a new job of it may take.
# Only enqueue writes here, so a burst of submits locks this row and not `object_starts`.
object_slots = Table(
    "object_slots",
    metadata,
    Column("kind", Text, nullable=False, server_default=text("'default'")),
    Column("object_id", BigInteger, nullable=False, autoincrement=False),
    Column("next_slot", DateTime(timezone=True), nullable=False),
    # How far the one-statement enqueue may go: it places a job at GREATEST(next_slot, now())
    # only if that slot plus the window is at most this. 'infinity': nothing reserved beyond
    # next_slot. A time: the first slot reserved past a gap (a job with not_before), which the
    # new job must not crowd. '-infinity': the key is planned in Python only (it is paused,
    # or its limit just changed and the planner has not placed its next job yet).
    Column(
        "open_until", DateTime(timezone=True), nullable=False, server_default=text("'infinity'")
    ),
    # Under N > 1 starts per window: the key's reservations (slots and starts) within a window
    # of the last slot placed, in order (at most N), which the next slot depends on
    # (migration 0015). NULL under one start per window: next_slot says it all.
    Column("recent", ARRAY(DateTime(timezone=True))),
    # The limit next_slot and recent were worked out under. The one-statement enqueue extends
    # the row only under that same limit; NULL (a row made as "free now" to be locked, or one
    # written before migration 0015) leaves the next job to the exact planner.
    Column("window_seconds", Double),
    Column("per_window", Integer),
    # paceline_bucket(kind, object_id) on a Citus cluster, which distributes the table on it
    # (migration 0013, paceline.db.citus); NULL and unused on one PostgreSQL server.
    Column("bucket", SmallInteger),
    PrimaryKeyConstraint("kind", "object_id"),
)

# The claim side of a (kind, object)'s window: when the object last actually started a run.
# The claim reads it to keep starts W apart even when workers fall behind (I1), and
# it outlives the jobs themselves, so pruning history cannot shorten a window.
object_starts = Table(
    "object_starts",
    metadata,
    Column("kind", Text, nullable=False, server_default=text("'default'")),
    Column("object_id", BigInteger, nullable=False, autoincrement=False),
    Column("last_started_at", DateTime(timezone=True), nullable=False),
    # paceline_bucket(kind, object_id) on a Citus cluster, which distributes the table on it
    # (migration 0013, paceline.db.citus); NULL and unused on one PostgreSQL server.
    Column("bucket", SmallInteger),
    PrimaryKeyConstraint("kind", "object_id"),
)


# Idempotency-Key of POST /jobs: the same key and request return the same job for 24 hours.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key", Text, primary_key=True),
    # sha256 of the request's meaning (object_id and policy, or a batch's object ids), to refuse
    # a reused key.
    Column("fingerprint", Text, nullable=False),
    # The job of a single request (pruned with it), or every job of a batch, in request order.
    Column("job_id", BigInteger, ForeignKey("jobs.id", ondelete="CASCADE")),
    Column("job_ids", ARRAY(BigInteger)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_idempotency_keys_created_at", "created_at"),
)


def _limit_columns() -> list[Column[object]]:
    # NULL: inherited (a key from its kind, a kind from the `default` kind).
    return [
        # W: no interval of this many seconds holds more than `per_window` starts of one key.
        Column("window_seconds", Double),
        Column("per_window", Integer),
        # M: at most this many jobs of one key run at once.
        Column("max_running", Integer),
        # A paused key starts nothing; its pending jobs wait with run_at 'infinity'.
        Column("paused", Boolean, nullable=False, server_default=text("false")),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ]


def _limit_checks() -> list[CheckConstraint]:
    return [
        CheckConstraint("window_seconds IS NULL OR window_seconds > 0", name="window_seconds"),
        CheckConstraint("per_window IS NULL OR per_window >= 1", name="per_window"),
        CheckConstraint("max_running IS NULL OR max_running >= 1", name="max_running"),
    ]


# A kind's limit. The `default` kind's row is complete and is what kinds without a row of
# their own use; PACELINE_RATE_WINDOW seeds it on a fresh database. The SQL function
# paceline_limit(kind, object_id) (migration 0009) resolves a key's limit field by field:
# its override, its kind, the default kind.
kind_limits = Table(
    "kind_limits",
    metadata,
    Column("kind", Text, primary_key=True),
    *_limit_columns(),
    *_limit_checks(),
    CheckConstraint(
        "kind <> 'default' OR (window_seconds IS NOT NULL AND per_window IS NOT NULL "
        "AND max_running IS NOT NULL)",
        name="default_complete",
    ),
)

# One key's override of its kind's limit (a customer's tier, a paused key). The one-statement
# enqueue reads it with the kind's limit (paceline_limit): one primary-key probe.
key_limits = Table(
    "key_limits",
    metadata,
    Column("kind", Text, nullable=False),
    Column("object_id", BigInteger, nullable=False, autoincrement=False),
    *_limit_columns(),
    *_limit_checks(),
    PrimaryKeyConstraint("kind", "object_id"),
    # The paused keys (the dashboard lists them, /metrics counts them): few among many.
    Index("ix_key_limits_paused", "kind", "object_id", postgresql_where=text("paused")),
)

# What the replicas agree on across restarts (a name, a value). Until 0009 it held the window
# the pending slots were planned with; the limits tables hold that now. From 0011 it holds
# `session_key`: the random key (hex) of the sessions' token fingerprints and the pages' form
# tokens, the same for every replica (they share nothing but the database).
service_state = Table(
    "service_state",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# The page's sign-ins (migration 0011). The browser holds a random value; the row is found by
# its SHA-256, so the table alone cannot sign anyone in. `token_fingerprint` is HMAC-SHA256 of
# the token signed in with, keyed by `session_key`: never the token, and a session whose token
# was taken out of PACELINE_TOKENS is refused. Sign-out deletes the row.
sessions = Table(
    "sessions",
    metadata,
    Column("id", LargeBinary, primary_key=True),
    Column("scope", Text, nullable=False),
    Column("token_fingerprint", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("scope IN ('submit', 'read', 'admin')", name="scope"),
    # The janitor deletes expired rows in this order.
    Index("ix_sessions_expires_at", "expires_at"),
)
