"""The HTML pages: the queue dashboard `/` and an object's timeline `/objects/{object_id}`.

They are shells: the browser fills them from the JSON routes (and the overview's event
stream), writing every value with textContent. Every URL they use is built here from its
route name.
"""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from paceline.contract import DEFAULT_KIND
from paceline.db.pool import is_unavailable
from paceline.observability.overview import (
    LIMITS_COUNT_CAP,
    MINUTES,
    OVERRIDES_SHOWN,
    PAUSED_SHOWN,
)
from paceline.observability.timeline import limit_sentence
from paceline.queue.jobs import Status
from paceline.queue.scheduling import read_limit
from paceline.web.keys import KINDS, OVERVIEW, POOL
from paceline.web.validation import kind_value, parse_object_id

routes = web.RouteTableDef()

# Stands for the id in URL templates the page fills in (unreserved characters: never encoded).
ID_PLACEHOLDER = "__object_id__"
# contract.KIND_PATTERN as an HTML pattern attribute (the whole value must match; browsers
# compile it with the `v` flag, under which a literal "-" in a class is escaped).
KIND_INPUT_PATTERN = r"[a-z0-9_.\-]{1,64}"


@routes.get("/", name="index")
@aiohttp_jinja2.template("index.html")
async def index(request: web.Request) -> dict[str, Any]:
    """The dashboard: submit, look up, the queue now, the limits, failures, replicas, and the
    job list."""
    router = request.app.router
    return {
        **await _common(request),
        **await _limits(request),
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
    """One (kind, object)'s timeline (`?kind=`, default `default`): its limit, past runs,
    reserved slots, and why each waiting job waits."""
    object_id = parse_object_id(request.match_info["object_id"])
    kind = kind_value(request.query.get("kind"), status=400)
    router = request.app.router
    try:
        limit_text = limit_sentence(kind, await read_limit(request.app[POOL], kind, object_id))
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        # The page still opens; its script fills the limit in once the database answers.
        limit_text = None
    return {
        **await _common(request),
        "object_id": str(object_id),
        "kind": kind,
        "limit_text": limit_text,
        "object_url": str(router["object"].url_for(object_id=str(object_id))),
        "timeline_url": str(
            router["timeline"].url_for(object_id=str(object_id)).with_query(kind=kind)
        ),
        "index_url": str(router["index"].url_for()),
    }


async def _limits(request: web.Request) -> dict[str, Any]:
    """The limits in force, as the overview read them: each kind's, the first overrides and
    paused keys (each with its object page's URL); None while the database is unreachable."""
    try:
        snapshot = await request.app[OVERVIEW].get()
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        return {"limits": None}

    def key_url(kind: str, object_id: int) -> str:
        url = request.app.router["object"].url_for(object_id=str(object_id))
        return str(url.with_query(kind=kind))

    return {
        "limits": {
            "kinds": snapshot.limits,
            "overrides": [(key, key_url(key.kind, key.object_id)) for key in snapshot.overrides],
            "paused_keys": [
                (key, key_url(key.kind, key.object_id)) for key in snapshot.paused_keys
            ],
            "count_cap": LIMITS_COUNT_CAP,
            "overrides_shown": OVERRIDES_SHOWN,
            "paused_shown": PAUSED_SHOWN,
        }
    }


async def _common(request: web.Request) -> dict[str, Any]:
    """What every page's header and scripts need."""
    return {
        "object_url_template": str(request.app.router["object"].url_for(object_id=ID_PLACEHOLDER)),
        "default_kind": DEFAULT_KIND,
        # Suggested in the kind fields; any well-formed kind may be typed (old jobs' too).
        "known_kinds": await request.app[KINDS].known(),
        "kind_pattern": KIND_INPUT_PATTERN,
    }
