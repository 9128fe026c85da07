"""The HTML pages: the queue dashboard `/` and an object's timeline `/objects/{object_id}`.

They are shells: the browser fills them from the JSON routes (and the overview's event
stream), writing every value with textContent. Every URL they use is built here from its
route name.
"""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from paceline.observability.overview import MINUTES
from paceline.queue.jobs import Status
from paceline.web.dashboard import parse_object_id
from paceline.web.keys import SETTINGS

routes = web.RouteTableDef()

# Stands for the id in URL templates the page fills in (unreserved characters: never encoded).
ID_PLACEHOLDER = "__object_id__"


@routes.get("/", name="index")
@aiohttp_jinja2.template("index.html")
async def index(request: web.Request) -> dict[str, Any]:
    """The dashboard: submit, look up, the queue now, failures, replicas, and the job list."""
    router = request.app.router
    return {
        **_common(request),
        "jobs_url": str(router["jobs"].url_for()),
        "overview_url": str(router["overview"].url_for()),
        "events_url": str(router["overview_events"].url_for()),
        "metrics_url": str(router["metrics"].url_for()),
        "workers_url": str(router["workers"].url_for()),
        "statuses": list(Status),
        "minutes": MINUTES,
    }


@routes.get("/objects/{object_id}", name="object")
@aiohttp_jinja2.template("object.html")
async def object_page(request: web.Request) -> dict[str, Any]:
    """One object's timeline: past runs, reserved slots, and why each waiting job waits."""
    object_id = parse_object_id(request.match_info["object_id"])
    router = request.app.router
    return {
        **_common(request),
        "object_id": str(object_id),
        "timeline_url": str(router["timeline"].url_for(object_id=str(object_id))),
        "index_url": str(router["index"].url_for()),
    }


def _common(request: web.Request) -> dict[str, Any]:
    """What every page's header and scripts need."""
    return {
        "rate_window": request.app[SETTINGS].rate_window,
        "object_url_template": str(request.app.router["object"].url_for(object_id=ID_PLACEHOLDER)),
    }
