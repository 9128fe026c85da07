"""Health checks for load balancers and compose: alive, and ready (database reachable)."""

from __future__ import annotations

from aiohttp import web

from paceline.db.queries import QUERIES
from paceline.web.api import json_response
from paceline.web.keys import POOL

routes = web.RouteTableDef()


@routes.get("/healthz", name="healthz")
async def healthz(request: web.Request) -> web.Response:
    """The process is up and serving."""
    return json_response({"status": "ok"})


@routes.get("/readyz", name="readyz")
async def readyz(request: web.Request) -> web.Response:
    """The database answers; 503 (via the problem middleware) when it does not."""
    await request.app[POOL].fetchval(QUERIES["ping"])
    return json_response({"status": "ready"})
