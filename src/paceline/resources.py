"""Where the migrations and templates are: inside an installed wheel, or at the repository top."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent.parent


def _locate(packaged: str, top_level: str) -> Path:
    for candidate in (_PACKAGE / packaged, _CHECKOUT / top_level):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"paceline cannot find its {top_level}/ directory")


def migrations_dir() -> Path:
    """The Alembic script directory."""
    return _locate("_migrations", "migrations")


def templates_dir() -> Path:
    """The Jinja2 templates of the HTML page."""
    return _locate("_templates", "templates")
