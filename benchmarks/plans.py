"""paceline's own hot-path SQL (from `paceline.db.queries`), explained and timed in place.

The queries are read from the package at run time, so the plans are those of the code under
test. Their parameters are not known in general, so each hot path lists the argument lists the
benchmark knows how to fill; one is used when its length and types fit what PostgreSQL infers
for the statement, otherwise the query is reported as not measurable (its signature changed).
Every statement runs inside a transaction that is rolled back: nothing it writes stays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import re
import statistics
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from paceline.db.queries import QUERIES

# A revision from before per-call planning (PYTHONPATH=/tmp/rev/src) has no paceline.db.plans.
_PLANS = importlib.util.find_spec("paceline.db.plans")

_COMPATIBLE: dict[type, frozenset[str]] = {
    int: frozenset({"int2", "int4", "int8", "float8", "numeric"}),
    float: frozenset({"float4", "float8", "numeric"}),
    str: frozenset({"text", "varchar", "bpchar", "name"}),
    uuid.UUID: frozenset({"uuid"}),
}


def sample_args(
    window: float, *, job_id: int = 1, object_id: int = 1, kind: str = "default"
) -> dict[str, list[tuple[Any, ...]]]:
    """Known argument lists of the hot paths, newest signature last (kinds and payloads: the
    kind's jobs without a payload)."""
    worker = uuid.UUID(int=1)
    return {
        # Since the limits (0009) the window is read from the database, not passed.
        "enqueue": [
            (object_id, window),
            (kind, object_id, window, None, None),
            (kind, object_id, None, None),
        ],
        "claim_due_jobs": [
            (8, window),
            (8, window, 30.0, worker),
            (8, window, 30.0, worker, [kind]),
            (8, 30.0, worker, [kind]),
        ],
        "seconds_until_next_due": [(window,), (window, [kind]), ([kind],)],
        "finish_jobs": [
            ([job_id], [1], ["SUCCESS"], [0.001], [None]),
            ([job_id], [1], ["SUCCESS"], [0.001], [None], [None]),
        ],
        "get_job": [(job_id,)],
    }


@dataclasses.dataclass(frozen=True)
class Explained:
    """One statement's plans and its execution time (median of the timed runs)."""

    name: str
    custom_plan: str
    generic_plan: str
    execution_ms: float
    planning_ms: float


async def fitting_args(
    conn: asyncpg.Connection, sql: str, candidates: Sequence[tuple[Any, ...]]
) -> tuple[Any, ...] | str:
    """The first candidate whose arity and types fit the statement, or why none does."""
    statement = await conn.prepare(sql)
    types = [parameter.name for parameter in statement.get_parameters()]
    for args in candidates:
        if len(args) == len(types) and all(
            _fits(value, pg) for value, pg in zip(args, types, strict=True)
        ):
            return args
    return f"n/a: parameters ({', '.join(types)}) unknown to the benchmark"


def _fits(value: Any, pg: str) -> bool:
    """Whether `value` can be passed as a parameter of type `pg` (a list: an array, which
    asyncpg names by its element type, `text[]`)."""
    if value is None:
        return True
    if isinstance(value, list):
        return pg.endswith("[]") and all(_fits(item, pg[:-2]) for item in value)
    return pg in _COMPATIBLE.get(type(value), frozenset())


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        # An array literal, '{1,NULL,"SUCCESS"}': EXECUTE casts it to the parameter's type.
        return _literal("{" + ",".join(_element(item) for item in value) + "}")
    return "'" + str(value).replace("'", "''") + "'"


def _element(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


# The statements paceline runs with cached plans and the planner's defaults (POST /jobs); every
# other hot path runs planned per call out of index paths only, and is explained that way.
PLANNED_AS_CACHED = frozenset({"enqueue", "enqueue_batch", "list_jobs_by_payload"})


async def explain(
    conn: asyncpg.Connection, name: str, args: tuple[Any, ...], *, timed_runs: int = 1
) -> Explained:
    """EXPLAIN ANALYZE `name` with `args`, as a custom and as a generic plan (rolled back)."""
    sql = QUERIES[name]
    execute = f"EXECUTE bench_{name}({', '.join(_literal(arg) for arg in args)})"
    plans: dict[str, str] = {}
    times: list[tuple[float, float]] = []
    for mode in ("force_custom_plan", "force_generic_plan"):
        runs = timed_runs if mode == "force_custom_plan" else 1
        for _ in range(runs):
            text = await _explain_once(conn, name, sql, execute, mode)
            plans[mode] = text
            if mode == "force_custom_plan":
                times.append((_ms(text, "Execution Time"), _ms(text, "Planning Time")))
    return Explained(
        name=name,
        custom_plan=plans["force_custom_plan"],
        generic_plan=plans["force_generic_plan"],
        execution_ms=statistics.median(t[0] for t in times),
        planning_ms=statistics.median(t[1] for t in times),
    )


async def _explain_once(
    conn: asyncpg.Connection, name: str, sql: str, execute: str, mode: str
) -> str:
    transaction = conn.transaction()
    await transaction.start()
    try:
        if _PLANS is not None and name not in PLANNED_AS_CACHED:
            # As the worker runs it: index paths only (paceline.db.plans); the mode below then
            # shows the plan made for the call and the one a cache would keep.
            plans = importlib.import_module("paceline.db.plans")
            await plans.plan_per_call(conn)
        await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
        await conn.execute(f"PREPARE bench_{name} AS {sql}")
        rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {execute}")
        return "\n".join(row[0] for row in rows)
    finally:
        await transaction.rollback()
        # PREPARE is not transactional: the statement outlives the rollback.
        with contextlib.suppress(asyncpg.PostgresError):
            await conn.execute(f"DEALLOCATE bench_{name}")


def _ms(plan: str, label: str) -> float:
    found = re.search(rf"{label}: ([\d.]+) ms", plan)
    return float(found.group(1)) if found else 0.0


async def hot_paths(
    conn: asyncpg.Connection, window: float, *, job_id: int = 1, timed_runs: int = 1
) -> list[Explained | str]:
    """Every hot path that exists and whose signature is known: explained; else why not."""
    found: list[Explained | str] = []
    for name, candidates in sample_args(window, job_id=job_id).items():
        if name not in QUERIES:
            found.append(f"{name}: n/a: no such named query any more")
            continue
        args = await fitting_args(conn, QUERIES[name], candidates)
        if isinstance(args, str):
            found.append(f"{name}: {args}")
            continue
        found.append(await explain(conn, name, args, timed_runs=timed_runs))
    return found


def format_plans(found: list[Explained | str]) -> str:
    """All plans as one text block."""
    blocks = []
    for item in found:
        if isinstance(item, str):
            blocks.append(item)
            continue
        blocks.append(
            f"--- {item.name}: execution {item.execution_ms:.3f} ms, "
            f"planning {item.planning_ms:.3f} ms (custom plan)\n{item.custom_plan}\n"
            f"--- {item.name}: generic plan (what a prepared statement may switch to)\n"
            f"{item.generic_plan}"
        )
    return "\n\n".join(blocks)
