"""Health checks for load balancers and compose: alive, and ready (database reachable and
migrated as far as this code needs)."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from paceline.db import dashboard, migrate
from paceline.web.api import json_response
from paceline.web.keys import MIGRATIONS, POOL
from paceline.web.problems import Problem

routes = web.RouteTableDef()


def setup(app: web.Application) -> None:
    """Learn, once at start-up, which migrations this code ships."""
    app[MIGRATIONS] = migrate.known_revisions()


@routes.get("/healthz", name="healthz")
async def healthz(request: web.Request) -> web.Response:
    """The process is up and serving."""
    return json_response({"status": "ok"})


@routes.get("/readyz", name="readyz")
async def readyz(request: web.Request) -> web.Response:
    """The database answers and has this code's newest migration; 503 saying what is missing.

    An unreachable database becomes a 503 in the problem middleware.
    """
    known = request.app[MIGRATIONS]
    try:
        applied = await dashboard.schema_revisions(request.app[POOL])
    except asyncpg.UndefinedTableError:
        applied = set()  # never migrated
    head = known[-1]
    if head in applied:
        return json_response({"status": "ready", "migration": head})
    newer = sorted(applied - set(known))
    if newer:
        # A newer release migrated the database (a rolling deploy); migrations only add, so
        # this replica keeps serving until it is replaced.
        return json_response({"status": "ready", "migration": newer[-1], "code_migration": head})
    missing = _missing(known, applied)
    at = ", ".join(sorted(applied)) or "no migration at all"
    raise Problem(
        503,
        "Not ready",
        f"The database lacks migration {', '.join(missing)} (it is at {at}; this paceline needs "
        f"{head}). `paceline migrate` applies it; so does `paceline serve` at start-up.",
        headers={"Retry-After": "5"},
        missing_migrations=missing,
    )


def _missing(known: list[str], applied: set[str]) -> list[str]:
    """The migrations after the newest one applied, in the order they apply."""
    reached = max((known.index(revision) for revision in applied), default=-1)
    return known[reached + 1 :]
