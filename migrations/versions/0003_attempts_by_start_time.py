"""Attempts by start time, for the window auditor.

The auditor checks every start against the previous start of its object; it finds the
starts of the last few seconds, across all objects, through this index.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_job_attempts_started_at", "job_attempts", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_job_attempts_started_at", table_name="job_attempts")
