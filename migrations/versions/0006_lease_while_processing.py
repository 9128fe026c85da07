"""A job holds a lease exactly while it is PROCESSING.

The code always kept it so; the constraint lets the worker's batched writes (finish_jobs,
renew_leases) test "still running" through the lease, which no index of running jobs can
answer, so the planner keeps to the primary key (see the runtime SQL).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONSTRAINT = "ck_jobs_lease_while_processing"


def upgrade() -> None:
    # Rows from before leases existed (0002) may run without one: an expired lease sends them
    # to the reaper, which is what should happen to a job nobody is known to hold.
    op.execute(
        "UPDATE jobs SET lease_expires_at = now() "
        "WHERE status = 'PROCESSING' AND lease_expires_at IS NULL"
    )
    op.execute(
        "UPDATE jobs SET lease_expires_at = NULL "
        "WHERE status <> 'PROCESSING' AND lease_expires_at IS NOT NULL"
    )
    # NOT VALID, then VALIDATE: the check of existing rows does not block writers.
    op.execute(
        f"ALTER TABLE jobs ADD CONSTRAINT {CONSTRAINT} "
        "CHECK ((status = 'PROCESSING') = (lease_expires_at IS NOT NULL)) NOT VALID"
    )
    op.execute(f"ALTER TABLE jobs VALIDATE CONSTRAINT {CONSTRAINT}")


def downgrade() -> None:
    op.drop_constraint(op.f(CONSTRAINT), "jobs", type_="check")
