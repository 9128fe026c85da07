"""Each attempt records the limit it started under.

`job_attempts.window_seconds`, `per_window`, `max_running`: the key's limit in force when the
claim started the attempt, as the claim read it. The limit auditor judges each start by the
limit it was made under; it used the one in force when it looked, so a start made under a
looser limit shortly before a tightening counted as a violation that never was. NULL on
attempts made before this migration: those are judged by the limit in force, as before.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job_attempts", sa.Column("window_seconds", sa.Double(), nullable=True))
    op.add_column("job_attempts", sa.Column("per_window", sa.Integer(), nullable=True))
    op.add_column("job_attempts", sa.Column("max_running", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("job_attempts", "max_running")
    op.drop_column("job_attempts", "per_window")
    op.drop_column("job_attempts", "window_seconds")
