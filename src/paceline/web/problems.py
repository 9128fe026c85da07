"""Errors as `application/problem+json` (RFC 9457), with a human sentence in `detail`."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from paceline.db.pool import is_unavailable

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# The largest request body the app reads (aiohttp answers 413 past it): room for a batch of
# 1000 jobs with payloads of several KiB each (a payload alone may be 64 KiB), so that a batch
# over its item limit is told so (422) rather than cut off by size.
MAX_BODY_BYTES = 8 * 1024 * 1024


class Problem(Exception):
    """Raise from a handler to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions

    def response(self) -> web.Response:
        """The problem as an HTTP response."""
        body = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extensions,
        }
        return web.Response(
            status=self.status,
            body=_encode(body),
            content_type=PROBLEM_JSON,
            headers=self.headers,
        )


def _encode(document: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(document)
    except orjson.JSONEncodeError:
        # A lone surrogate (a field name sent as "\ud800") is not UTF-8, so orjson refuses it:
        # echo it escaped, as the client wrote it, rather than fail the refusal with a 500.
        return orjson.dumps(_escape_surrogates(document))


def _escape_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_escape_surrogates(key): _escape_surrogates(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_escape_surrogates(item) for item in value]
    return value


def invalid(detail: str, *, name: str | None = None, status: int = 422) -> Problem:
    """A request whose content is wrong; `name` is the offending field or parameter."""
    extensions: dict[str, Any] = {}
    if name is not None:
        extensions["invalid_params"] = [{"name": name, "reason": detail}]
    title = "Invalid request" if status == 422 else "Bad request"
    return Problem(status, title, detail, **extensions)


def not_found(detail: str) -> Problem:
    """Nothing at this address."""
    return Problem(404, "Not found", detail)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn Problems, aiohttp's HTTP errors and an unreachable database into problem+json."""
    try:
        return await handler(request)
    except Problem as problem:
        return problem.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return Problem(
            exc.status, exc.reason, _http_detail(exc), headers=_kept_headers(exc)
        ).response()
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        log.warning("%s %s: database unavailable (%s)", request.method, request.path, exc)
        return Problem(
            503,
            "Service unavailable",
            "The database is unreachable right now; nothing was changed. Retry shortly.",
            headers={"Retry-After": "1"},
        ).response()


def _http_detail(exc: web.HTTPException) -> str:
    if exc.status == 404:
        return "There is nothing at this address."
    if exc.status == 405:
        return f"This address does not accept {getattr(exc, 'method', 'that method')}."
    if exc.status == 413:
        return f"The request body is too large; it may be at most {MAX_BODY_BYTES // 1024} KiB."
    text = exc.text or exc.reason
    return text.removeprefix(f"{exc.status}: ")


def _kept_headers(exc: web.HTTPException) -> dict[str, str]:
    # 405 must say what is allowed; everything else of aiohttp's plain-text error is dropped.
    return {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
