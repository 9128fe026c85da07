"""What makes the pages' forms safe to act through, and what tells the user what one did.

Every state-changing form of the pages is a plain HTML POST (it works without script), and
`read_action` lets it through only if all of these hold:

- the visitor may act (`may_act`: a session or token of scope `admin`, or everyone when the
  service has no token; the one place where that check is made);
- the request comes from this site: its `Origin` (or, without one, its `Referer`) names this
  host. Browsers send `Origin` with every cross-site POST, so a form on another site that
  targets paceline is refused before anything is read;
- the form carries this browser's form token (`csrf_token`): an HMAC of a random value in an
  HttpOnly, SameSite=Strict cookie that only this site can read or set, keyed by the
  database's random `session_key` and bound to the visitor's session: nobody without the key
  can make one, and a token made for one sign-in is worthless after it.

A refusal changes nothing and answers 403 with a page saying why. After an action the page
redirects (303) back and shows a flash message, kept for one page view in a cookie.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp_jinja2
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import MultiDictProxy
from yarl import URL

from paceline.web.credentials import PRINCIPAL, Principal
from paceline.web.keys import CREDENTIALS, POOL

FORM_COOKIE = "paceline_form"
FORM_FIELD = "csrf_token"
FLASH_COOKIE = "paceline_flash"
# A page action's form is a handful of short fields.
MAX_FORM_BYTES = 16 * 1024
# This request made a form nonce (the response sets its cookie) / showed the flash (it clears it).
_NEW_NONCE = web.RequestKey("form_nonce", str)
_FLASH_READ = web.RequestKey("flash_read", bool)


@dataclasses.dataclass(frozen=True, slots=True)
class Flash:
    """What the last action did (or why it did nothing), shown once at the top of the page."""

    text: str
    failed: bool = False


@web.middleware
async def forms_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Set the form cookie a page's forms were signed for, and clear the flash message a page
    showed. (Every response's security headers are paceline.web.headers'.)"""
    response = await handler(request)
    if response.prepared:  # a stream (the overview's events) has sent its headers already
        return response
    nonce = request.get(_NEW_NONCE)
    if nonce is not None:
        response.set_cookie(
            FORM_COOKIE, nonce, httponly=True, samesite="Strict", secure=request.secure, path="/"
        )
    if request.get(_FLASH_READ):
        response.del_cookie(FLASH_COOKIE, path="/")
    return response


def may_act(request: web.Request) -> bool:
    """Whether this visitor may change jobs and limits from the page: scope `admin`.

    The auth middleware let only a `read` or `admin` visitor reach a page (or everyone, on a
    service without a token, where it sets no principal); this is the one place where the
    `admin` check of the pages is made.
    """
    principal: Principal | None = request.get(PRINCIPAL)
    return principal is None or principal.scope == "admin"


def may_submit(request: web.Request) -> bool:
    """Whether this visitor's page may submit jobs (POST /jobs): not a `read` session."""
    principal: Principal | None = request.get(PRINCIPAL)
    return principal is None or principal.scope in ("submit", "admin")


async def form_token(request: web.Request) -> str:
    """This browser's form token, for the hidden `csrf_token` field of every action form."""
    nonce = request.cookies.get(FORM_COOKIE) or request.get(_NEW_NONCE)
    if nonce is None:
        nonce = secrets.token_hex(32)
        request[_NEW_NONCE] = nonce
    return await _sign(request, nonce)


async def _sign(request: web.Request, nonce: str) -> str:
    # Keyed by the replicas' shared secret, bound to this sign-in (none: the open service's).
    key = await request.app[CREDENTIALS].key(request.app[POOL])
    principal: Principal | None = request.get(PRINCIPAL)
    bound = principal.session_id if principal is not None and principal.session_id else b""
    message = b"paceline-form-v2:" + bound.hex().encode() + b":" + nonce.encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def same_origin(request: web.Request) -> bool:
    """Whether the request says it comes from a page of this host (Origin, else Referer).

    Hosts are compared, not schemes: behind a proxy that ends TLS, paceline sees http while
    the browser says https, and another site is another host either way.
    """
    claimed = request.headers.get("Origin")
    if claimed is None:
        claimed = request.headers.get("Referer")
    if not claimed or claimed == "null":
        return False
    try:
        url = URL(claimed)
    except ValueError:
        return False
    if not url.absolute or url.host is None:
        return False
    return url.authority.lower() == request.host.lower()


Form = MultiDictProxy[str | Any]
ActionHandler = Callable[[web.Request, Form], Awaitable[web.StreamResponse]]


def foreign_origin(request: web.Request) -> bool:
    """Whether the request says it comes from another site (an Origin or Referer of another
    host, or an opaque Origin): what the sign-in and sign-out forms refuse. A request that says
    nothing (a script, a test client) is let through: those forms carry no token."""
    said = request.headers.get("Origin") or request.headers.get("Referer")
    return said is not None and not same_origin(request)


class _Refused(Exception):
    """A page action refused before it read or changed anything."""


def page_action(handler: ActionHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap the handler of a page action: it runs with the form only once `read_action` let
    the request through; a refusal is a 403 page, and nothing is changed."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            form = await read_action(request)
        except _Refused as refusal:
            return aiohttp_jinja2.render_template(
                "message.html",
                request,
                {
                    "title": "Nothing was done",
                    "detail": str(refusal),
                    "back_url": str(request.app.router["index"].url_for()),
                },
                status=403,
            )
        return await handler(request, form)

    return guarded


async def read_action(request: web.Request) -> Form:
    """The form of a page action, once it is known to be this visitor's own, from this site."""
    if not may_act(request):
        raise _Refused("This session may not change jobs or limits.")
    if not same_origin(request):
        raise _Refused(
            "This form was not sent from a paceline page (its Origin is another site's, or "
            "missing), so nothing was done."
        )
    if (request.content_length or 0) > MAX_FORM_BYTES:
        raise _Refused("This form is too large; nothing was done.")
    form = await request.post()
    nonce = request.cookies.get(FORM_COOKIE)
    presented = str(form.get(FORM_FIELD, ""))
    expected = await _sign(request, nonce) if nonce else ""
    if not nonce or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise _Refused(
            "This form's token is missing or out of date, so nothing was done. Open the page "
            "again and repeat the action."
        )
    return form


def back_url(form: Form, default: URL) -> URL:
    """Where to go after an action: the form's `back` (a path of this site only), or
    `default`."""
    back = str(form.get("back", ""))
    # A path on this host; never "//other.site/..." or a scheme.
    if back.startswith("/") and not back.startswith("//") and "\\" not in back:
        return URL(back)
    return default


def done(location: URL, flash: Flash) -> web.HTTPSeeOther:
    """303 to `location`, with `flash` to show there once."""
    response = web.HTTPSeeOther(location)
    data = orjson.dumps({"text": flash.text, "failed": flash.failed})
    response.set_cookie(
        FLASH_COOKIE,
        base64.urlsafe_b64encode(data).decode(),
        httponly=True,
        samesite="Strict",
        path="/",
        max_age=60,
    )
    return response


def read_flash(request: web.Request) -> Flash | None:
    """The flash of the action just done, if any; it is shown on this page view only."""
    raw = request.cookies.get(FLASH_COOKIE)
    if raw is None:
        return None
    request[_FLASH_READ] = True
    try:
        data = orjson.loads(base64.urlsafe_b64decode(raw.encode()))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        return None
    return Flash(data["text"][:500], bool(data.get("failed")))
