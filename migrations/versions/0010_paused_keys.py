"""The paused keys, for the dashboard and /metrics: a partial index of the overrides that pause
their key, so listing and counting them reads only those, however many overrides there are.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
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
    op.create_index(
        "ix_key_limits_paused",
        "key_limits",
        ["kind", "object_id"],
        postgresql_where=sa.text("paused"),
    )


def downgrade() -> None:
    op.drop_index("ix_key_limits_paused", table_name="key_limits")
