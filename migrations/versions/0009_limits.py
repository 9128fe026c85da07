"""Limits in the database: N starts per window and M running per key, per kind and per key,
pause, and a client-chosen earliest start (`not_before`).

A database in use keeps its pending slots: the default kind's limit is seeded from the window
they were planned with (`service_state.rate_window`, written by every `serve` so far). A fresh
database gets no row here: the first `serve` seeds it from PACELINE_RATE_WINDOW.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PENDING = sa.text("status = 'PENDING'")

# The one definition of "the limit of a key", used by the claim, next-due and the planner.
# A set-returning SQL function of one SELECT: PostgreSQL inlines it into the calling query,
# so each call is three primary-key probes planned with the caller's settings.
LIMIT_FUNCTION = """
CREATE OR REPLACE FUNCTION paceline_limit(p_kind text, p_object_id bigint)
RETURNS TABLE (window_seconds float8, per_window int, max_running int, paused boolean)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT COALESCE(o.window_seconds, k.window_seconds, d.window_seconds, 300.0),
           COALESCE(o.per_window, k.per_window, d.per_window, 1),
           COALESCE(o.max_running, k.max_running, d.max_running, 1),
           COALESCE(o.paused, false) OR COALESCE(k.paused, false)
    FROM (VALUES (1)) AS one (x)
    LEFT JOIN kind_limits AS d ON d.kind = 'default'
    LEFT JOIN kind_limits AS k ON k.kind = p_kind
    LEFT JOIN key_limits AS o ON o.kind = p_kind AND o.object_id = p_object_id
$$
"""


def _limit_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("window_seconds", sa.Double(), nullable=True),
        sa.Column("per_window", sa.Integer(), nullable=True),
        sa.Column("max_running", sa.Integer(), nullable=True),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    ]


def _limit_checks(table: str) -> list[sa.CheckConstraint]:
    return [
        sa.CheckConstraint(
            "window_seconds IS NULL OR window_seconds > 0", name=op.f(f"ck_{table}_window_seconds")
        ),
        sa.CheckConstraint(
            "per_window IS NULL OR per_window >= 1", name=op.f(f"ck_{table}_per_window")
        ),
        sa.CheckConstraint(
            "max_running IS NULL OR max_running >= 1", name=op.f(f"ck_{table}_max_running")
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "kind_limits",
        sa.Column("kind", sa.Text(), nullable=False),
        *_limit_columns(),
        sa.PrimaryKeyConstraint("kind", name=op.f("pk_kind_limits")),
        sa.CheckConstraint(
            "kind <> 'default' OR (window_seconds IS NOT NULL AND per_window IS NOT NULL "
            "AND max_running IS NOT NULL)",
            name=op.f("ck_kind_limits_default_complete"),
        ),
        *_limit_checks("kind_limits"),
    )
    op.create_table(
        "key_limits",
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("object_id", sa.BigInteger(), nullable=False, autoincrement=False),
        *_limit_columns(),
        sa.PrimaryKeyConstraint("kind", "object_id", name=op.f("pk_key_limits")),
        *_limit_checks("key_limits"),
    )
    # The paused keys (the dashboard lists them, /metrics counts them): few among many
    # overrides, so listing and counting them reads only those.
    op.create_index(
        "ix_key_limits_paused",
        "key_limits",
        ["kind", "object_id"],
        postgresql_where=sa.text("paused"),
    )
    op.execute(LIMIT_FUNCTION)
    # The window the pending slots were planned with becomes the default kind's limit.
    op.execute(
        """
        INSERT INTO kind_limits (kind, window_seconds, per_window, max_running)
        SELECT 'default', value::float8, 1, 1 FROM service_state WHERE name = 'rate_window'
        """
    )
    op.execute("DELETE FROM service_state WHERE name = 'rate_window'")

    op.add_column("jobs", sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
    # A key's pending jobs in slot order: the claim's "is this the key's first job?" probe.
    op.create_index(
        "ix_jobs_pending_kind_object_id_run_at_id",
        "jobs",
        ["kind", "object_id", "run_at", "id"],
        postgresql_where=_PENDING,
    )
    op.drop_index("ix_jobs_pending_kind_object_id_id", table_name="jobs")
    op.create_index(
        "ix_jobs_running_kind_object_id",
        "jobs",
        ["kind", "object_id"],
        postgresql_where=sa.text("status = 'PROCESSING'"),
    )
    op.add_column(
        "object_slots",
        sa.Column(
            "open_until",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("'infinity'"),
        ),
    )


def downgrade() -> None:
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM jobs WHERE not_before IS NOT NULL AND status = 'PENDING')
               OR EXISTS (SELECT 1 FROM key_limits)
               OR EXISTS (SELECT 1 FROM kind_limits
                          WHERE per_window <> 1 OR max_running <> 1 OR paused
                             OR kind <> 'default') THEN
                RAISE EXCEPTION 'limits, overrides or scheduled jobs exist; '
                                'the older code would ignore them';
            END IF;
        END $$
        """
    )
    op.execute(
        """
        INSERT INTO service_state (name, value)
        SELECT 'rate_window', window_seconds::text FROM kind_limits WHERE kind = 'default'
        ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value
        """
    )
    op.drop_column("object_slots", "open_until")
    op.create_index(
        "ix_jobs_pending_kind_object_id_id",
        "jobs",
        ["kind", "object_id", "id"],
        postgresql_where=_PENDING,
    )
    op.drop_index("ix_jobs_running_kind_object_id", table_name="jobs")
    op.drop_index("ix_jobs_pending_kind_object_id_run_at_id", table_name="jobs")
    op.drop_column("jobs", "not_before")
    op.execute("DROP FUNCTION paceline_limit(text, bigint)")
    op.drop_table("key_limits")
    op.drop_table("kind_limits")
