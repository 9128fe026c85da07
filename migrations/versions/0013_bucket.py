"""A bucket per key: the column a Citus cluster distributes the per-key tables on.

- `paceline_bucket(kind, object_id)`: 0..1023, a hash of the key (IMMUTABLE, so a statement
  that names a key's bucket as this function of its parameters is routed by Citus to one shard).
- `bucket smallint` on `jobs`, `job_attempts`, `object_slots` and `object_starts`: nullable,
  no default. On one PostgreSQL server nothing writes or reads it: a NULL costs a bit in the
  row's null bitmap and no statement of the plain path changes (nor gets slower). On a server
  with the citus extension, `paceline migrate` then fills it, makes it NOT NULL, puts it into
  the tables' keys and distributes the tables on it (`paceline.db.citus`), and the service's
  statements name it there.

A generated column would have filled it on every server at no statement's cost, but Citus
refuses to distribute on one; a default cannot read the row's other columns; a trigger would
cost every insert of the plain path. So only a cluster pays for the column.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYED_TABLES = ("jobs", "job_attempts", "object_slots", "object_starts")

# hashtextextended seeds a 64-bit hash of the kind with the object id: one call, no string
# built; the low 10 bits are the bucket. The same on every server of a PostgreSQL major
# version, which is what a cluster needs (its nodes run one version).
BUCKET_FUNCTION = """
CREATE OR REPLACE FUNCTION paceline_bucket(p_kind text, p_object_id bigint)
RETURNS smallint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT (hashtextextended(p_kind, p_object_id) & 1023)::smallint
$$
"""


def upgrade() -> None:
    op.execute(BUCKET_FUNCTION)
    for table in KEYED_TABLES:
        # IF NOT EXISTS: a run interrupted between DDL and the version stamp cannot happen
        # (one transaction), but a database distributed by hand before this migration may
        # already have the column.
        op.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS bucket smallint")


def downgrade() -> None:
    for table in KEYED_TABLES:
        op.drop_column(table, "bucket")
    op.execute("DROP FUNCTION paceline_bucket(text, bigint)")
