"""Retrying finished jobs by hand, and searching jobs by payload.

- `jobs.attempts_at_retry`: how many attempts the job had made when it was last retried by
  hand (`POST /jobs/{id}/retry`; 0 if never). `attempts` keeps counting every attempt of the
  job's life, so the attempt numbers of `job_attempts` (its primary key is (job_id, attempt))
  keep increasing and the history stays whole; the retry policy and the reaper count
  `attempts - attempts_at_retry` against PACELINE_MAX_ATTEMPTS, so a retried job gets its
  whole budget again. A constant default: PostgreSQL 11+ adds it without rewriting the table.
- `ix_jobs_payload`: a GIN index (`jsonb_path_ops`) for `payload @> '{"customer": 42}'`,
  the payload search of `GET /jobs` and `POST /jobs/retry`, over the jobs that have a
  payload (GIN keeps an entry for a NULL too: a full index doubled the cost of inserting
  payload-less jobs, the plain submit's).

Why a plain CREATE INDEX, in the migration's transaction, and not CONCURRENTLY: paceline
migrates in one transaction per run under an advisory lock (migrations/env.py), so replicas
starting at once take turns and a run either applies completely or not at all. CREATE INDEX
CONCURRENTLY cannot run in a transaction; Alembic's autocommit block would commit first, which
releases that lock (a second replica could then run this revision at the same time), and a
concurrent build that fails leaves an INVALID index behind which a later IF NOT EXISTS would
take for done. A plain build takes a SHARE lock on `jobs`: reads go on, writes (submits,
claims, outcomes) wait until it ends. Measured on PostgreSQL 15, 2 shared cores: 4.4-9.8 s
for 1M jobs with small object payloads (benchmarks/scenarios/search.py prints it). Where that
pause is too long, build the index beforehand, outside any transaction, with exactly this
definition:

    CREATE INDEX CONCURRENTLY ix_jobs_payload ON jobs USING gin (payload jsonb_path_ops)
        WHERE payload IS NOT NULL;

This migration then keeps it (IF NOT EXISTS), and builds it again only if it is INVALID (a
concurrent build that failed).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column("attempts_at_retry", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    # A concurrent build that failed leaves an INVALID index of this name: built again here.
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_index AS i
                       WHERE i.indexrelid = to_regclass('ix_jobs_payload')
                         AND NOT i.indisvalid) THEN
                DROP INDEX ix_jobs_payload;
            END IF;
        END $$
        """
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_jobs_payload ON jobs USING gin (payload jsonb_path_ops) "
        "WHERE payload IS NOT NULL"
    )


def downgrade() -> None:
    # The older code counts every attempt against PACELINE_MAX_ATTEMPTS: a job retried by hand
    # that waits or runs would get fewer tries than it was promised, or none.
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM jobs
                       WHERE attempts_at_retry > 0 AND status IN ('PENDING', 'PROCESSING')) THEN
                RAISE EXCEPTION 'jobs retried by hand are pending or running; '
                                'the older code would count their earlier attempts';
            END IF;
        END $$
        """
    )
    op.drop_index("ix_jobs_payload", table_name="jobs")
    op.drop_column("jobs", "attempts_at_retry")
