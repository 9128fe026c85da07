"""Named SQL: `queries.sql` split on its `-- name: x` lines into a read-only mapping."""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType

_NAME_LINE = re.compile(r"^-- name: (?P<name>\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Split a queries file into {name: sql}; the text before the first name is a preamble."""
    parts = _NAME_LINE.split(text)
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in found:
            raise ValueError(f"query {name!r} is defined twice")
        sql = body.strip()
        if not sql:
            raise ValueError(f"query {name!r} is empty")
        found[name] = sql
    return found


def _load() -> Mapping[str, str]:
    text = resources.files("paceline.db").joinpath("queries.sql").read_text(encoding="utf-8")
    return MappingProxyType(parse(text))


QUERIES: Mapping[str, str] = _load()
