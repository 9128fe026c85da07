"""object_slots learns N starts per window: the one-statement enqueue for every key.

Until now the one-statement enqueue (jobs.sql, `enqueue` and `enqueue_batch`) placed only keys
under one start per window W with no override: the slot row's next_slot (the last slot plus
W) said all it needed. A key under N starts per W, or with an override, took the exact
planner: a transaction of about eight round trips under the key's lock (POST at N = 10: a
third of the plain rate). Three columns let one statement place the next job of any key that
is not paused:

- `recent`: under N > 1, the reservations the next slot depends on (the key's slots and
  starts within a window of the last one placed, in order, at most N). NULL under N = 1.
- `window_seconds`, `per_window`: the limit next_slot and recent were worked out under. The
  statement extends a row only under that same limit (it reads the key's limit, override
  included, with paceline_limit); a row planned under another limit, or written before this
  migration (NULL), is left to the exact planner, which writes it anew.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Where a key's row points once jobs were placed from `p_first` on (the first one's slot,
# GREATEST(next_slot, now())), under N = `p_per_window` starts per `p_window` seconds;
# `p_recent` the row's reservations before. Under N = 1 the jobs go a window apart and the
# next one `p_advance` after the first (n jobs: n windows). Under N > 1 one job goes at
# p_first and joins the reservations within a window of it; the next may start at once while
# those are fewer than N, else a window after the N-th last. An SQL function, which
# PostgreSQL inlines where it is called (jobs.sql, enqueue and enqueue_batch).
_NEXT_SLOTS = """
CREATE OR REPLACE FUNCTION paceline_next_slots(
    p_first timestamptz, p_recent timestamptz[], p_advance interval, p_window float8,
    p_per_window int
) RETURNS TABLE (next_slot timestamptz, recent timestamptz[])
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
               WHEN p_per_window = 1 THEN p_first + p_advance
               WHEN cardinality(r.recent) < p_per_window THEN p_first
               ELSE GREATEST(p_first, r.recent[cardinality(r.recent) - p_per_window + 1]
                                      + make_interval(secs => p_window))
           END,
           r.recent
    FROM (
        SELECT CASE WHEN p_per_window > 1 THEN ARRAY(
                   SELECT e FROM unnest(p_recent) AS e
                   WHERE e > p_first - make_interval(secs => p_window)
                   ORDER BY e
               ) || p_first END AS recent
    ) AS r
$$
"""


# On a Citus cluster the columns and the UPDATE below touch every shard, in parallel by
# default; a function command (CREATE or DROP FUNCTION, which Citus propagates) may then not
# follow in the same transaction. One shard at a time, it may. A plain server takes the
# setting as a placeholder and ignores it.
_ONE_SHARD_AT_A_TIME = "SET LOCAL citus.multi_shard_modify_mode TO 'sequential'"


def upgrade() -> None:
    op.execute(_ONE_SHARD_AT_A_TIME)
    # Nullable columns without a default: a catalog change only, no table rewrite, and the
    # same on a Citus cluster (it propagates the ALTER to every shard).
    op.add_column(
        "object_slots",
        sa.Column("recent", postgresql.ARRAY(sa.DateTime(timezone=True)), nullable=True),
    )
    op.add_column("object_slots", sa.Column("window_seconds", sa.Double(), nullable=True))
    op.add_column("object_slots", sa.Column("per_window", sa.Integer(), nullable=True))
    op.execute(_NEXT_SLOTS)
    # A row the code before kept open (not '-infinity') was worked out under its kind's limit
    # of one start per window, no override, not paused (a change of limit or a pause marks
    # the rows). Saying so keeps the keys in use on the one-statement path across the upgrade.
    # One UPDATE of constants per kind (a few kinds): what a Citus cluster runs as it is.
    conn = op.get_bind()
    kinds = conn.execute(
        sa.text("SELECT DISTINCT kind FROM object_slots WHERE open_until <> '-infinity'")
    ).scalars()
    for kind in list(kinds):
        # The kind's limit as paceline_limit reads it for a key without an override. Not
        # through that function: Citus refuses a parameterized call of an SQL function that
        # reads its (reference) tables.
        window = conn.execute(
            sa.text(
                "SELECT COALESCE(k.window_seconds, d.window_seconds, 300.0) "
                "FROM (VALUES (1)) AS one (x) "
                "LEFT JOIN kind_limits AS d ON d.kind = 'default' "
                "LEFT JOIN kind_limits AS k ON k.kind = :kind "
                "WHERE COALESCE(k.per_window, d.per_window, 1) = 1 "
                "AND NOT COALESCE(k.paused, false)"
            ),
            {"kind": kind},
        ).scalar()
        if window is not None:
            conn.execute(
                sa.text(
                    "UPDATE object_slots SET window_seconds = :window, per_window = 1 "
                    "WHERE kind = :kind AND open_until <> '-infinity'"
                ),
                {"kind": kind, "window": window},
            )


def downgrade() -> None:
    op.execute(_ONE_SHARD_AT_A_TIME)
    # The code before this placed only N = 1 keys without an override in one statement, and
    # kept every other key's row at '-infinity' (the exact planner's): so they go back to it.
    op.execute(
        "UPDATE object_slots AS s SET open_until = '-infinity' "
        "WHERE s.per_window IS DISTINCT FROM 1 "
        "OR EXISTS (SELECT 1 FROM key_limits AS o "
        "WHERE o.kind = s.kind AND o.object_id = s.object_id)"
    )
    op.execute(
        "DROP FUNCTION paceline_next_slots(timestamptz, timestamptz[], interval, float8, int)"
    )
    op.drop_column("object_slots", "per_window")
    op.drop_column("object_slots", "window_seconds")
    op.drop_column("object_slots", "recent")
