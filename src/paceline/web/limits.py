"""The limits API: read, set, drop, pause and resume a kind's limit or one object's override.

Every change answers what it moved (`paceline.queue.limits.Replanned`); `?dry_run=true` shows
the same without writing anything. The rules themselves are in docs/design.md ("Limits").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from aiohttp import web

from paceline import contract
from paceline.contract import INT64_MAX, INT64_MIN
from paceline.queue import limits
from paceline.queue.limits import LimitError, LimitFields, Replanned
from paceline.shapes import LimitRequest
from paceline.web.api import json_response
from paceline.web.keys import KINDS, POOL
from paceline.web.problems import Problem, invalid, not_found
from paceline.web.validation import (
    check_json_content_type,
    dry_run_param,
    int_param,
    json_integer,
    parse_json,
    parse_object_id,
    read_body,
    refuse_repeated_keys,
    refuse_unknown_params,
)

routes = web.RouteTableDef()

_FIELDS = tuple(LimitRequest.__struct_fields__)
_EXAMPLE = 'send {"window": <seconds>, "limit": <starts per window>, "max_running": <jobs>}'
_CHANGE_PARAMS = frozenset({"dry_run"})
_OVERRIDE_PARAMS = frozenset({"after", "limit"})
_KIND_NAME = re.compile(contract.KIND_PATTERN)


@routes.get("/limits", name="limits")
async def list_limits(request: web.Request) -> web.Response:
    """Every kind's limit: those with a row of their own and those the replicas run."""
    kinds = await request.app[KINDS].known()
    shown = await limits.kinds_view(request.app[POOL], kinds)
    return json_response({"limits": [limit.to_json() for limit in shown]})


@routes.get("/limits/{kind}", name="kind_limit")
async def read_kind_limit(request: web.Request) -> web.Response:
    """A kind's limit, as its objects without an override have it."""
    kind = _kind(request)
    return json_response((await limits.view(request.app[POOL], kind)).to_json())


@routes.put("/limits/{kind}")
async def put_kind_limit(request: web.Request) -> web.Response:
    """Set a kind's limit; its pending jobs' slots follow at once."""
    kind, dry_run = _kind(request), _dry_run(request.query)
    fields = await _limit_body(request)
    try:
        done = await limits.set_limit(request.app[POOL], kind, None, fields, dry_run=dry_run)
    except LimitError as refused:  # the default kind's first limit without a window
        raise invalid(str(refused), name="window") from None
    return _changed(done)


@routes.delete("/limits/{kind}")
async def delete_kind_limit(request: web.Request) -> web.Response:
    """Drop a kind's own limit: it inherits the default kind's again."""
    kind, dry_run = _kind(request), _dry_run(request.query)
    try:
        done = await limits.drop_limit(request.app[POOL], kind, None, dry_run=dry_run)
    except LimitError as refused:
        raise Problem(409, "Conflict", str(refused)) from None
    if done is None:
        raise not_found(f"The kind {kind!r} has no limit of its own; it inherits the default.")
    return _changed(done)


@routes.post("/limits/{kind}/pause")
async def pause_kind(request: web.Request) -> web.Response:
    """Pause a kind: none of its jobs starts (running ones finish); submits wait for resume."""
    kind, dry_run = _kind(request), _dry_run(request.query)
    await _no_body(request)
    return _changed(await limits.pause(request.app[POOL], kind, None, dry_run=dry_run))


@routes.post("/limits/{kind}/resume")
async def resume_kind(request: web.Request) -> web.Response:
    """Resume a kind: its waiting jobs are planned from now, spaced by the limit."""
    kind, dry_run = _kind(request), _dry_run(request.query)
    await _no_body(request)
    return _changed(await limits.resume(request.app[POOL], kind, None, dry_run=dry_run))


@routes.get("/limits/{kind}/objects", name="limit_overrides")
async def list_overrides(request: web.Request) -> web.Response:
    """A kind's per-object overrides in object order, a page at a time (`after`, `limit`)."""
    kind = _kind(request)
    after, page_size = _override_query(request.query)
    found = await limits.overrides(request.app[POOL], kind, after=after, limit=page_size + 1)
    page, more = found[:page_size], len(found) > page_size
    next_cursor = page[-1].object_id if more else None
    return json_response(
        {"overrides": [limit.to_json() for limit in page], "next_cursor": next_cursor}
    )


@routes.get("/limits/{kind}/objects/{object_id}", name="key_limit")
async def read_key_limit(request: web.Request) -> web.Response:
    """One (kind, object)'s limit: its override over its kind's."""
    kind, object_id = _kind(request), _object_id(request)
    return json_response((await limits.view(request.app[POOL], kind, object_id)).to_json())


@routes.put("/limits/{kind}/objects/{object_id}")
async def put_key_limit(request: web.Request) -> web.Response:
    """Override one object's limit; its pending jobs' slots follow at once."""
    kind, object_id, dry_run = _kind(request), _object_id(request), _dry_run(request.query)
    fields = await _limit_body(request)
    done = await limits.set_limit(request.app[POOL], kind, object_id, fields, dry_run=dry_run)
    return _changed(done)


@routes.delete("/limits/{kind}/objects/{object_id}")
async def delete_key_limit(request: web.Request) -> web.Response:
    """Drop one object's override: it has its kind's limit again."""
    kind, object_id, dry_run = _kind(request), _object_id(request), _dry_run(request.query)
    done = await limits.drop_limit(request.app[POOL], kind, object_id, dry_run=dry_run)
    if done is None:
        raise not_found(f"Object {object_id} of {kind!r} has no override; it has its kind's.")
    return _changed(done)


@routes.post("/limits/{kind}/objects/{object_id}/pause")
async def pause_key(request: web.Request) -> web.Response:
    """Pause one (kind, object): nothing of it starts; its kind's other objects go on."""
    kind, object_id, dry_run = _kind(request), _object_id(request), _dry_run(request.query)
    await _no_body(request)
    return _changed(await limits.pause(request.app[POOL], kind, object_id, dry_run=dry_run))


@routes.post("/limits/{kind}/objects/{object_id}/resume")
async def resume_key(request: web.Request) -> web.Response:
    """Resume one (kind, object): its waiting jobs are planned from now, spaced by the limit."""
    kind, object_id, dry_run = _kind(request), _object_id(request), _dry_run(request.query)
    await _no_body(request)
    return _changed(await limits.resume(request.app[POOL], kind, object_id, dry_run=dry_run))


def _changed(done: Replanned) -> web.Response:
    return json_response(done.to_json())


def _kind(request: web.Request) -> str:
    """The kind in the path; a name no kind can have is simply not found."""
    kind = request.match_info["kind"]
    if not _KIND_NAME.fullmatch(kind):
        raise not_found(
            f"There is no kind {kind!r}: kinds are 1 to 64 characters from a-z, 0-9, _, . and -."
        )
    return kind


def _object_id(request: web.Request) -> int:
    return parse_object_id(request.match_info["object_id"])


def _dry_run(query: Mapping[str, str]) -> bool:
    refuse_unknown_params(query, _CHANGE_PARAMS)
    return dry_run_param(query)


def _override_query(query: Mapping[str, str]) -> tuple[int, int]:
    refuse_unknown_params(query, _OVERRIDE_PARAMS)
    after = int_param(query, "after", INT64_MIN, INT64_MAX) if "after" in query else INT64_MIN
    page = contract.DEFAULT_PAGE
    if "limit" in query:
        page = int_param(query, "limit", 1, contract.MAX_PAGE)
    return after, page


async def _no_body(request: web.Request) -> None:
    """Pause and resume take nothing but the path: a body is a mistake worth saying."""
    if request.can_read_body and (await read_body(request)).strip():
        raise invalid("pause and resume take no body.", status=400)


async def _limit_body(request: web.Request) -> LimitFields:
    """PUT's body: the numbers of the row, each within its bound; anything else is a 4xx."""
    check_json_content_type(request.content_type)
    document = parse_json(await read_body(request), example=_EXAMPLE)
    if not isinstance(document, dict):
        raise invalid(f"The body must be a JSON object; {_EXAMPLE}.")
    refuse_repeated_keys(document)
    unknown = sorted(set(document) - set(_FIELDS))
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise invalid(
            f"Unknown field(s) {names}: a limit takes {', '.join(_FIELDS)}.", name=unknown[0]
        )
    window = window_value(document.get("window"))
    per_window = bounded_integer(document, "limit", contract.MAX_PER_WINDOW)
    max_running = bounded_integer(document, "max_running", contract.MAX_RUNNING_LIMIT)
    return LimitFields(window, per_window, max_running)


def window_value(value: Any) -> float | None:
    if value is None:
        return None
    low, high = contract.MIN_WINDOW_SECONDS, contract.MAX_WINDOW_SECONDS
    # A JSON number is an int or (with a fraction or exponent) a Decimal; 1e999 is past high.
    number = not isinstance(value, bool) and isinstance(value, int | Decimal)
    if not number or not low <= float(value) <= high:
        raise invalid(
            f"window must be a number of seconds from {low:g} to {high:g}.", name="window"
        )
    return float(value)


def bounded_integer(document: dict[str, Any], name: str, high: int) -> int | None:
    value = document.get(name)
    if value is None:
        return None
    number = json_integer(value)
    if number is None or not 1 <= number <= high:
        raise invalid(f"{name} must be an integer from 1 to {high}.", name=name)
    return number
