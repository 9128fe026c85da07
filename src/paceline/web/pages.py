"""The HTML page: submit a job, look one up, watch recent jobs update."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from paceline.web.keys import SETTINGS

routes = web.RouteTableDef()


@routes.get("/", name="index")
@aiohttp_jinja2.template("index.html")
async def index(request: web.Request) -> dict[str, Any]:
    """The page itself; it talks to the JSON API from the browser."""
    router = request.app.router
    return {
        "jobs_url": str(router["jobs"].url_for()),
        "rate_window": request.app[SETTINGS].rate_window,
    }
