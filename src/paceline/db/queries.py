"""Named SQL: every `*.sql` file here (one per concern), split on `-- name: x` lines, as one
read-only mapping. Names are unique across files.

A statement that a Citus cluster runs differently says so in place, so the two stay one text:
a line ending in `-- citus: <sql>` gets `<sql>` added on a cluster (typically the key's bucket,
which routes the statement to one shard), and a line ending in `-- citus-instead: <sql>` is
`<sql>` there. On one server those are comments: its statements are what they were. A
statement the cluster runs quite differently is a block of its own, `-- name: <name> citus`
(usually a call of a function `paceline migrate` made on the cluster, `citus.sql`). Which
of the two a process uses is chosen once, when it learns what its database is
(`use_citus`): a process serves one database.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from importlib import resources
from types import MappingProxyType

# finish_jobs and renew_leases find each row's own values with array_position, a linear search
# of the arrays: a statement's cost grows with the square of its length. Callers send at most
# this many ids per statement (docs/performance-notes.md).
MAX_IDS_PER_STATEMENT = 500

_NAME_LINE = re.compile(r"^-- name: (?P<name>\w+(?: citus)?)\s*$", re.MULTILINE)
_CITUS_VARIANT = " citus"
_CITUS_LINE = re.compile(
    r"^(?P<indent>\s*)(?P<code>.*?)\s*-- citus(?P<instead>-instead)?: (?P<sql>.*)$"
)
# In a cluster block, `{citus_body:<name> $1=<param> ...}` is the cluster's form of the statement
# <name> with its parameters renamed (a function's body that runs that statement).
_CITUS_BODY = re.compile(r"\{citus_body:(?P<name>\w+)(?P<renames>(?: \$\d+=\w+)*)\}")
_RENAME = re.compile(r"\$(?P<number>\d+)=(?P<to>\w+)")

# The columns of a job row, in the order `paceline.queue.jobs.Job` has them: every query that
# returns jobs says `{job_columns}`, so the list is written once.
JOB_COLUMNS = (
    "id, object_id, status, created_at, run_at, started_at, finished_at, duration, attempts, "
    "error, kind, payload, result, not_before, attempts_at_retry"
)
_FRAGMENTS = {"{job_columns}": JOB_COLUMNS}


# Citus refuses a statement that calls a SQL function reading distributed (here: reference)
# tables with the statement's parameters, which paceline_limit() is; its body, inlined, is
# what PostgreSQL makes of the call anyway.
# A quoted name is the function's signature (create_distributed_function), not a call.
_LIMIT_CALL = re.compile(r"(?<!')paceline_limit\((?P<kind>[\w.$]+), (?P<object_id>[\w.$]+)\)")
# Its aliases are the function's own (limit_*): the arguments are the caller's expressions,
# and a caller's `k.kind` must not be read as the body's `k` (short aliases there made every
# kind's limit the first kind row's on the cluster's page and in its limit reads).
_LIMIT_BODY = """(
    SELECT COALESCE(limit_o.window_seconds, limit_k.window_seconds, limit_d.window_seconds,
                    300.0) AS window_seconds,
           COALESCE(limit_o.per_window, limit_k.per_window, limit_d.per_window, 1) AS per_window,
           COALESCE(limit_o.max_running, limit_k.max_running, limit_d.max_running, 1)
               AS max_running,
           COALESCE(limit_o.paused, false) OR COALESCE(limit_k.paused, false) AS paused
    FROM (VALUES (1)) AS limit_one (x)
    LEFT JOIN kind_limits AS limit_d ON limit_d.kind = 'default'
    LEFT JOIN kind_limits AS limit_k ON limit_k.kind = {kind}
    LEFT JOIN key_limits AS limit_o
        ON limit_o.kind = {kind} AND limit_o.object_id = {object_id})"""


# Citus refuses a VOLATILE function in an UPDATE of a distributed table: a finish time written
# with clock_timestamp() is the statement's start there (the same to a few milliseconds).
_VOLATILE_FINISH = "finished_at = clock_timestamp()"


def inline_limits(sql: str) -> str:
    """Every paceline_limit() call of `sql` replaced by the function's body."""
    return _LIMIT_CALL.sub(
        lambda call: _LIMIT_BODY.format(kind=call["kind"], object_id=call["object_id"]), sql
    )


def for_citus(sql: str) -> str:
    """The statement as a Citus cluster runs it: its `-- citus` lines applied."""
    sql = inline_limits(sql.replace(_VOLATILE_FINISH, "finished_at = statement_timestamp()"))
    lines = []
    for line in sql.splitlines():
        marked = _CITUS_LINE.match(line)
        if marked is None:
            lines.append(line)
        elif marked["instead"]:
            lines.append(marked["indent"] + marked["sql"])
        else:
            lines.append(f"{marked['indent']}{marked['code']} {marked['sql']}".rstrip())
    return "\n".join(lines)


def _body(sql: str, renames: str) -> str:
    """`sql` (a cluster's statement) with its `$n` parameters renamed as `renames` says
    (" $1=p_kinds $2=p_buckets"), without its final semicolon."""
    names = {match["number"]: match["to"] for match in _RENAME.finditer(renames)}
    renamed = re.sub(r"\$(\d+)\b", lambda param: names.get(param[1], param[0]), sql)
    return renamed.rstrip().removesuffix(";")


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


class _Registry(Mapping[str, str]):
    """The statements of the database this process serves: one server's, or a cluster's."""

    def __init__(self, parsed: Mapping[str, str]) -> None:
        plain = {name: sql for name, sql in parsed.items() if not name.endswith(_CITUS_VARIANT)}
        citus = {name: for_citus(sql) for name, sql in plain.items()}
        for name, sql in parsed.items():
            if name.endswith(_CITUS_VARIANT):
                citus[name.removesuffix(_CITUS_VARIANT)] = inline_limits(
                    _CITUS_BODY.sub(lambda body: _body(citus[body["name"]], body["renames"]), sql)
                )
        self._plain: Mapping[str, str] = MappingProxyType(plain)
        self._citus: Mapping[str, str] = MappingProxyType(citus)
        self._current: Mapping[str, str] = self._plain

    def use_citus(self, citus: bool) -> None:
        self._current = self._citus if citus else self._plain

    def cluster(self, name: str) -> str:
        """A cluster's statement, whichever database this process serves (for the steps that
        find out what the database is and make it a cluster)."""
        return self._citus[name]

    @property
    def citus(self) -> bool:
        return self._current is self._citus

    def __getitem__(self, name: str) -> str:
        return self._current[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current)

    def __len__(self) -> int:
        return len(self._current)


QUERIES = _Registry(_load())


def use_citus(citus: bool) -> None:
    """Run the cluster's statements from now on (True), or one server's (False)."""
    QUERIES.use_citus(citus)
