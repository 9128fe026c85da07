"""Named SQL: every `*.sql` file here (one per concern), split on `-- name: x` lines, as one
read-only mapping. Names are unique across files."""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType

# finish_jobs and renew_leases find each row's own values with array_position, a linear search
# of the arrays: a statement's cost grows with the square of its length. Callers send at most
# this many ids per statement (docs/performance-notes.md).
MAX_IDS_PER_STATEMENT = 500

_NAME_LINE = re.compile(r"^-- name: (?P<name>\w+)\s*$", re.MULTILINE)

# The columns of a job row, in the order `paceline.queue.jobs.Job` has them: every query that
# returns jobs says `{job_columns}`, so the list is written once.
JOB_COLUMNS = (
    "id, object_id, status, created_at, run_at, started_at, finished_at, duration, attempts, "
    "error, kind, payload, result, not_before, attempts_at_retry"
)
_FRAGMENTS = {"{job_columns}": JOB_COLUMNS}


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
        for fragment, expansion in _FRAGMENTS.items():
            sql = sql.replace(fragment, expansion)
        found[name] = sql
    return found


def _load() -> Mapping[str, str]:
    found: dict[str, str] = {}
    files = sorted(
        (
            entry
            for entry in resources.files("paceline.db").iterdir()
            if entry.name.endswith(".sql")
        ),
        key=lambda entry: entry.name,
    )
    for entry in files:
        for name, sql in parse(entry.read_text(encoding="utf-8")).items():
            if name in found:
                raise ValueError(f"query {name!r} is defined in two files")
            found[name] = sql
    return MappingProxyType(found)


QUERIES: Mapping[str, str] = _load()
