"""job_attempts without its foreign key to jobs, on one PostgreSQL server.

The claim writes every attempt in the statement that starts its job (jobs.sql,
claim_due_jobs), so the reference holds by construction; the foreign key's check, a query per
inserted attempt that locks the job row the claim has just updated, was 27% of a claim's time
(256 jobs: 20 -> 15 ms, PostgreSQL 15, 100k due jobs, median of 15 claims rolled back). Its
cascade is replaced where jobs are deleted: retention deletes a pruned job's attempts in the
same statement (jobs.sql, prune_finished_jobs).

A Citus cluster keeps the foreign key it made when it distributed the tables (on (bucket,
job_id), paceline.db.citus): its prune relies on the cascade, and its claim is a function on the
shard. This migration leaves a distributed `jobs` alone.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# pg_dist_partition exists only with the citus extension: read through EXECUTE, so a server
# without it never plans a statement naming it.
_UNLESS_DISTRIBUTED = """
DO $$
DECLARE
    distributed boolean := false;
BEGIN
    IF to_regclass('pg_dist_partition') IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_dist_partition '
            'WHERE logicalrelid = ''jobs''::regclass)' INTO distributed;
    END IF;
    IF NOT distributed THEN
        {statements}
    END IF;
END
$$
"""


def upgrade() -> None:
    op.execute(
        _UNLESS_DISTRIBUTED.format(
            statements="ALTER TABLE job_attempts DROP CONSTRAINT IF EXISTS "
            "fk_job_attempts_job_id_jobs;"
        )
    )


def downgrade() -> None:
    # Attempts of jobs deleted by hand since would refuse the key: they go first.
    op.execute(
        _UNLESS_DISTRIBUTED.format(
            statements="DELETE FROM job_attempts AS a WHERE NOT EXISTS "
            "(SELECT 1 FROM jobs AS j WHERE j.id = a.job_id); "
            "ALTER TABLE job_attempts ADD CONSTRAINT fk_job_attempts_job_id_jobs "
            "FOREIGN KEY (job_id) REFERENCES jobs (id) ON DELETE CASCADE;"
        )
    )
