"""Apply Alembic migrations from code: `paceline migrate`, `paceline serve` and the tests."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from paceline.db import citus
from paceline.resources import migrations_dir

# Key of the transaction-scoped advisory lock every migration run takes first, so that
# replicas starting at once migrate one after the other (the later ones find nothing to do).
MIGRATION_LOCK_KEY = 7_421_093_118


def alembic_config(dsn: str) -> Config:
    """An Alembic config for `dsn`, without needing an alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["dsn"] = dsn
    return config


def upgrade(dsn: str, revision: str = "head") -> None:
    """Migrate the database at `dsn` up to `revision`, then, on a database with the citus
    extension at the head, distribute its per-key tables (once). Blocking; runs its own loop."""
    command.upgrade(alembic_config(dsn), revision)
    # After Alembic, not in a revision: an existing database that gets the extension later
    # (an upgrade from one server to a cluster) is distributed by its next `paceline migrate`.
    if revision == "head":
        citus.distribute(dsn, lock_key=MIGRATION_LOCK_KEY)


def downgrade(dsn: str, revision: str) -> None:
    """Migrate the database at `dsn` down to `revision`. Blocking; runs its own event loop."""
    command.downgrade(alembic_config(dsn), revision)


def known_revisions() -> list[str]:
    """Every migration this code ships, oldest first (the last one is the head)."""
    script = ScriptDirectory.from_config(alembic_config(""))
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]
