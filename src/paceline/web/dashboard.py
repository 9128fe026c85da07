"""What the pages read: the queue overview (once, or as a stream of server-sent events), an
object's timeline, and the replicas. All JSON, all cheap to read (see db/dashboard.sql)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from paceline.db.pool import is_unavailable
from paceline.observability.overview import OverviewCache, read_replicas
from paceline.observability.timeline import read_timeline
from paceline.web.api import json_response
from paceline.web.keys import CLOSING, OVERVIEW, POOL
from paceline.web.validation import kind_value, parse_object_id

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

# A stream sends the overview this often; the page re-reads its job list on each.
STREAM_INTERVAL = 1.0
# How long a browser waits before reconnecting a dropped stream (milliseconds).
RECONNECT_MS = 2000


def setup(app: web.Application) -> None:
    """Share one overview reader between all viewers; end the streams when shutting down."""
    app[CLOSING] = asyncio.Event()

    async def overview_ctx(app: web.Application) -> AsyncIterator[None]:
        app[OVERVIEW] = OverviewCache(app[POOL])
        yield

    async def close_streams(app: web.Application) -> None:
        app[CLOSING].set()

    app.cleanup_ctx.append(overview_ctx)
    app.on_shutdown.append(close_streams)


@routes.get("/overview", name="overview")
async def overview(request: web.Request) -> web.Response:
    """The queue now: counts, due vs. waiting, the oldest wait, the last minutes, failures."""
    snapshot = await request.app[OVERVIEW].get()
    return json_response(snapshot.to_json())


@routes.get("/overview/events", name="overview_events")
async def overview_events(request: web.Request) -> web.StreamResponse:
    """The overview as server-sent events, one `overview` event a second, until the viewer
    leaves or the server stops. All viewers share one database read per interval."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            # A buffering proxy would hold the events back.
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    closing = request.app[CLOSING]
    with contextlib.suppress(ConnectionResetError):
        await response.write(f"retry: {RECONNECT_MS}\n\n".encode())
        while not closing.is_set():
            await response.write(await _next_event(request.app))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), STREAM_INTERVAL)
    return response


async def _next_event(app: web.Application) -> bytes:
    try:
        snapshot = await app[OVERVIEW].get()
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        # The stream stays open: the page says so and recovers by itself with the database.
        detail = {"detail": "The database is unreachable right now; retrying."}
        return b"event: problem\ndata: " + orjson.dumps(detail) + b"\n\n"
    return b"event: overview\ndata: " + orjson.dumps(snapshot.to_json()) + b"\n\n"


@routes.get("/objects/{object_id}/timeline", name="timeline")
async def timeline(request: web.Request) -> web.Response:
    """One (kind, object)'s limit, past runs and reserved slots, with why each waiting job waits
    (`?kind=`, default `default`)."""
    object_id = parse_object_id(request.match_info["object_id"])
    kind = kind_value(request.query.get("kind"), status=400)
    found = await read_timeline(request.app[POOL], object_id, kind)
    return json_response(found.to_json())


@routes.get("/workers", name="workers")
async def workers(request: web.Request) -> web.Response:
    """The replicas with workers: host, pid, started, last heartbeat, jobs running, alive."""
    replicas = await read_replicas(request.app[POOL])
    return json_response({"workers": [replica.to_json() for replica in replicas]})
