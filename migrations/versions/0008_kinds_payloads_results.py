"""Jobs carry work: a kind (routed to its handler), a payload, a result; windows per (kind, object).

Every existing job, window row and attempt becomes kind `default`, the kind PACELINE_HANDLER
runs, so a database upgrades in place and its pending jobs keep their slots.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PENDING = sa.text("status = 'PENDING'")
_DEFAULT_KIND = sa.text("'default'")


def _kind() -> sa.Column[str]:
    # A constant default: PostgreSQL 11+ adds the column without rewriting the table.
    return sa.Column("kind", sa.Text(), nullable=False, server_default=_DEFAULT_KIND)


def upgrade() -> None:
    op.add_column("jobs", _kind())
    op.add_column("jobs", sa.Column("payload", postgresql.JSONB(), nullable=True))
    op.add_column("jobs", sa.Column("result", postgresql.JSONB(), nullable=True))
    op.add_column("jobs", sa.Column("absorbed", sa.Integer(), nullable=True))
    # Every existing row has the default kind: the check reads the table once, quickly.
    op.execute("ALTER TABLE jobs ADD CONSTRAINT ck_jobs_kind CHECK (kind ~ '^[a-z0-9_.-]{1,64}$')")
    op.create_index(
        "ix_jobs_pending_kind_object_id_id",
        "jobs",
        ["kind", "object_id", "id"],
        postgresql_where=_PENDING,
    )
    op.drop_index("ix_jobs_pending_object", table_name="jobs")
    op.create_index("ix_jobs_kind_id", "jobs", ["kind", sa.text("id DESC")])

    op.add_column("job_attempts", _kind())
    op.create_index(
        "ix_job_attempts_kind_object_id_started_at",
        "job_attempts",
        ["kind", "object_id", "started_at"],
    )
    op.drop_index("ix_job_attempts_object_id_started_at", table_name="job_attempts")

    for table in ("object_slots", "object_starts"):
        op.add_column(table, _kind())
        op.drop_constraint(f"pk_{table}", table, type_="primary")
        op.create_primary_key(f"pk_{table}", table, ["kind", "object_id"])

    op.add_column(
        "workers",
        sa.Column(
            "kinds", postgresql.ARRAY(sa.Text()), nullable=False, server_default=sa.text("'{}'")
        ),
    )


def downgrade() -> None:
    # The older code knows one kind: jobs of other kinds would run by the default handler with
    # their payloads ignored, so they are refused here rather than silently changed.
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM jobs WHERE kind <> 'default') THEN
                RAISE EXCEPTION 'jobs of kinds other than default exist; '
                                'downgrading would run them by the wrong handler';
            END IF;
        END $$
        """
    )
    op.drop_column("workers", "kinds")
    for table in ("object_slots", "object_starts"):
        op.execute(f"DELETE FROM {table} WHERE kind <> 'default'")
        op.drop_constraint(f"pk_{table}", table, type_="primary")
        op.drop_column(table, "kind")
        op.create_primary_key(f"pk_{table}", table, ["object_id"])
    op.create_index(
        "ix_job_attempts_object_id_started_at", "job_attempts", ["object_id", "started_at"]
    )
    op.drop_index("ix_job_attempts_kind_object_id_started_at", table_name="job_attempts")
    op.drop_column("job_attempts", "kind")
    op.create_index(
        "ix_jobs_pending_object", "jobs", ["object_id", "id"], postgresql_where=_PENDING
    )
    op.drop_index("ix_jobs_kind_id", table_name="jobs")
    op.drop_index("ix_jobs_pending_kind_object_id_id", table_name="jobs")
    op.drop_constraint(op.f("ck_jobs_kind"), "jobs", type_="check")
    for column in ("absorbed", "result", "payload", "kind"):
        op.drop_column("jobs", column)
