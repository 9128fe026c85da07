"""The HTML pages: the queue dashboard `/`, an object's timeline `/objects/{object_id}`, a
job's page `/job/{job_id}` and the limits `/limits-view`.

The dashboard and the timeline are shells: the browser fills them from the JSON routes (and
the overview's event stream), writing every value with textContent. The job and limits pages,
and every confirmation, are rendered here, so they work without script. Every URL they use is
built here from its route name; their actions (web/actions.py) are form POSTs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp_jinja2
import jinja2
import msgspec
from aiohttp import web

from paceline.contract import DEFAULT_KIND
from paceline.db import dashboard
from paceline.db.pool import is_unavailable
from paceline.observability.board import (
    BAR_MINUTES,
    BUSIEST_READ_CAP,
    CHART_HEIGHT,
    CHART_WIDTH,
    read_busiest,
    read_charts,
)
from paceline.observability.overview import (
    LIMITS_COUNT_CAP,
    MINUTES,
    OVERRIDES_SHOWN,
    PAUSED_SHOWN,
    KeyOverride,
    PausedKey,
)
from paceline.observability.timeline import job_wait, limit_sentence, replica_name
from paceline.queue import jobs, limits
from paceline.queue.jobs import Status, isoformat
from paceline.web import forms
from paceline.web.credentials import PRINCIPAL, Principal
from paceline.web.keys import KINDS, OVERVIEW, POOL
from paceline.web.validation import kind_value, parse_job_id, parse_object_id

routes = web.RouteTableDef()

# Stands for the id in URL templates the page fills in (unreserved characters: never encoded).
ID_PLACEHOLDER = "__object_id__"
# contract.KIND_PATTERN as an HTML pattern attribute (the whole value must match; browsers
# compile it with the `v` flag, under which a literal "-" in a class is escaped).
KIND_INPUT_PATTERN = r"[a-z0-9_.\-]{1,64}"
# The limits page lists this many overrides and paused keys (the JSON API pages through all).
LIMITS_PAGE_SHOWN = 100
# The job list's filters, as GET /jobs names them; "retry all shown" retries what they match.
FILTERS = ("status", "kind", "object_id", "payload")


def setup(env: jinja2.Environment) -> None:
    """The templates' time filters."""
    env.filters["utc"] = utc
    env.filters["utc_text"] = lambda text: utc(datetime.fromisoformat(text)) if text else ""
    env.filters["iso"] = isoformat


def utc(moment: datetime | None) -> str:
    """A time as the server-rendered pages show it: in UTC, to the second."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@routes.get("/", name="index")
@aiohttp_jinja2.template("index.html")
async def index(request: web.Request) -> dict[str, Any]:
    """The dashboard: submit, look up, the queue now, the limits, failures, replicas, and the
    job list."""
    router = request.app.router
    try:
        charts = await read_charts(request.app[POOL])
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        charts = None
    return {
        **await common_context(request),
        **await _limits(request),
        "charts": charts,
        # The filter in the address: what "retry all shown" retries (the script keeps it
        # current as the filter changes without a reload).
        "filter": {name: request.query.get(name, "") for name in FILTERS},
        "retry_statuses": [Status.FAILED.value, Status.CANCELLED.value],
        "retry_shown_url": str(router["page_retry_jobs"].url_for()),
        "this_url": request.path_qs,
        "chart_width": CHART_WIDTH,
        "chart_height": CHART_HEIGHT,
        "bar_minutes": BAR_MINUTES,
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
        # Its limit in force, and whether it is its own (an override): the page's forms.
        limit = await limits.view(request.app[POOL], kind, object_id)
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        # The page still opens; its script fills the limit in once the database answers.
        limit = None
    return {
        **await common_context(request),
        "object_id": str(object_id),
        "kind": kind,
        "limit": limit,
        "limit_text": None if limit is None else limit_sentence(kind, limit.effective),
        "change_url": str(router["page_change_limit"].url_for()),
        "this_url": request.path_qs,
        "object_url": str(router["object"].url_for(object_id=str(object_id))),
        "timeline_url": str(
            router["timeline"].url_for(object_id=str(object_id)).with_query(kind=kind)
        ),
    }


@routes.get("/job/{job_id}", name="job_page")
async def job_page(request: web.Request) -> web.Response:
    """One job: its payload and result, every attempt, why it waits, and its actions. (The
    API's `GET /jobs/{job_id}` stays JSON.)"""
    job_id = parse_job_id(request.match_info["job_id"])
    pool = request.app[POOL]
    job = await jobs.get_job(pool, job_id)
    if job is None:
        return aiohttp_jinja2.render_template(
            "message.html",
            request,
            {
                **await common_context(request),
                "title": f"No job {job_id}",
                "detail": f"There is no job {job_id}; it never existed or was pruned.",
                "back_url": str(request.app.router["index"].url_for()),
            },
            status=404,
        )
    attempts = await dashboard.job_attempts(pool, job_id=job_id)
    return aiohttp_jinja2.render_template(
        "job.html",
        request,
        {
            **await common_context(request),
            "job": job,
            "payload": _pretty(job.payload_json),
            "result": _pretty(job.result_json),
            "attempts": [
                {**dict(row), "outcome": row["outcome"] or "RUNNING", "replica": replica_name(row)}
                for row in attempts
            ],
            "wait": await job_wait(pool, job),
            "object_page_url": object_url(request, job.kind, job.object_id),
            "this_url": request.path,
        },
    )


@routes.get("/limits-view", name="limits_page")
@aiohttp_jinja2.template("limits.html")
async def limits_page(request: web.Request) -> dict[str, Any]:
    """Each kind's limit, the overrides, paused keys and the longest backlogs, with the forms
    that change them (each shows its dry run first)."""
    pool = request.app[POOL]
    kinds = await limits.kinds_view(pool, await request.app[KINDS].known())
    overrides = [
        KeyOverride(**dict(row))
        for row in await dashboard.overview_overrides(pool, limit=LIMITS_PAGE_SHOWN)
    ]
    paused = [
        PausedKey(**dict(row))
        for row in await dashboard.overview_paused_keys(
            pool, limit=LIMITS_PAGE_SHOWN, count_cap=LIMITS_COUNT_CAP
        )
    ]
    busiest = await read_busiest(pool)
    return {
        **await common_context(request),
        "kinds": kinds,
        "overrides": [(key, object_url(request, key.kind, key.object_id)) for key in overrides],
        "overrides_shown": LIMITS_PAGE_SHOWN,
        "paused_keys": [(key, object_url(request, key.kind, key.object_id)) for key in paused],
        "paused_shown": LIMITS_PAGE_SHOWN,
        "count_cap": LIMITS_COUNT_CAP,
        "busiest": [(key, object_url(request, key.kind, key.object_id)) for key in busiest],
        "busiest_cap": BUSIEST_READ_CAP,
        "change_url": str(request.app.router["page_change_limit"].url_for()),
        "this_url": request.path,
    }


def object_url(request: web.Request, kind: str, object_id: int) -> str:
    """An object's page; the default kind needs no query."""
    url = request.app.router["object"].url_for(object_id=str(object_id))
    return str(url if kind == DEFAULT_KIND else url.with_query(kind=kind))


def _pretty(text: str | None) -> str | None:
    """JSON text indented, its numbers exactly as stored (reformatted, never decoded)."""
    return None if text is None else msgspec.json.format(text, indent=2)


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


async def common_context(request: web.Request) -> dict[str, Any]:
    """What every page's header, forms and scripts need."""
    router = request.app.router
    return {
        "flash": forms.read_flash(request),
        "csrf_token": await forms.form_token(request),
        # A `read` session sees the pages without their action forms and submit box.
        "may_act": forms.may_act(request),
        "may_submit": forms.may_submit(request),
        # Signed in to the page (a sign-out button), with which scope.
        "session_scope": _session_scope(request),
        "sign_out_url": str(router["logout"].url_for()),
        "index_url": str(router["index"].url_for()),
        "limits_page_url": str(router["limits_page"].url_for()),
        "job_page_template": str(router["job_page"].url_for(job_id=ID_PLACEHOLDER)),
        "object_url_template": str(router["object"].url_for(object_id=ID_PLACEHOLDER)),
        "default_kind": DEFAULT_KIND,
        # Suggested in the kind fields; any well-formed kind may be typed (old jobs' too).
        "known_kinds": await request.app[KINDS].known(),
        "kind_pattern": KIND_INPUT_PATTERN,
    }


def _session_scope(request: web.Request) -> str | None:
    """The scope of this visitor's page session; None without one (open, or a bearer token)."""
    principal: Principal | None = request.get(PRINCIPAL)
    if principal is None or principal.session_id is None:
        return None
    return principal.scope
