"""An Idempotency-Key may cover a batch: the key remembers every job the batch created.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable and without a default: adding it rewrites nothing.
    op.add_column(
        "idempotency_keys", sa.Column("job_ids", postgresql.ARRAY(sa.BigInteger()), nullable=True)
    )


def downgrade() -> None:
    # Keys of batches mean nothing to the older code, which took keys for single jobs only.
    op.execute("DELETE FROM idempotency_keys WHERE job_ids IS NOT NULL")
    op.drop_column("idempotency_keys", "job_ids")
