"""Sessions of the page's sign-in, and the key that fingerprints tokens.

- `sessions`: one row per sign-in. The browser's cookie holds a random 32-byte value; the row's
  id is its SHA-256, so a copy of the table signs nobody in. `token_fingerprint` is
  HMAC-SHA256 of the token the session signed in with (never the token): a session whose
  token is no longer configured (rotated out of PACELINE_TOKENS) is refused at once, on every
  replica. `expires_at` (PACELINE_SESSION_SECONDS after sign-in) is indexed for the janitor,
  which deletes expired rows; sign-out deletes its row.
- `service_state.session_key`: the random HMAC key of those fingerprints and of the pages'
  form tokens. Replicas share only PostgreSQL, so the key lives here, made once by this
  migration (a database restored without it gets a new one at the first sign-in).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-12
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.LargeBinary(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("token_fingerprint", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("scope IN ('submit', 'read', 'admin')", name=op.f("ck_sessions_scope")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    op.create_index(op.f("ix_sessions_expires_at"), "sessions", ["expires_at"])
    op.execute(
        sa.text(
            "INSERT INTO service_state (name, value) VALUES ('session_key', :key) "
            "ON CONFLICT (name) DO NOTHING"
        ).bindparams(key=secrets.token_hex(32))
    )


def downgrade() -> None:
    # Every page session ends: the older code's cookie is a value derived from the token.
    op.drop_index("ix_sessions_expires_at", table_name="sessions")
    op.drop_table("sessions")
    op.execute("DELETE FROM service_state WHERE name = 'session_key'")
