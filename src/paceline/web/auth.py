"""Access control: scoped tokens (API) and expiring sessions (page), checked per route.

With tokens configured (PACELINE_TOKENS, PACELINE_API_TOKEN), every route needs one of the
scopes `ROUTE_ACCESS` gives it: a bearer token (API) or the session cookie of a sign-in (page).
No credential, or one that is not right, is 401; a credential of another scope is 403. A route
missing from the table needs `admin`, so a new route is never open by accident (the tests hold
the table to every route of the app). Health checks stay open for load balancers, and so does
`/openapi.json`: the API's description holds no job data, and clients and tools read it before
they have a token.

The session cookie is a random value (paceline.web.credentials), HttpOnly and SameSite=Strict,
so scripts cannot read it and other sites cannot make the browser send it. Sign-in attempts
are throttled per client address and overall (paceline.web.throttle).
"""

from __future__ import annotations

import math
from typing import Final

import aiohttp_jinja2
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from paceline.contract import ScopeName
from paceline.web.credentials import PRINCIPAL, Credentials, Principal
from paceline.web.forms import FORM_COOKIE, foreign_origin
from paceline.web.keys import CREDENTIALS, POOL, THROTTLE
from paceline.web.problems import Problem

routes = web.RouteTableDef()

COOKIE = "paceline_session"
_MAX_FORM_BYTES = 4096

# Who may use a route: the scopes let through; None: everyone, token or not.
Access = frozenset[ScopeName] | None
PUBLIC: Final[Access] = None
ADMIN: Final[Access] = frozenset({"admin"})
READ: Final[Access] = frozenset({"read", "admin"})
SUBMIT: Final[Access] = frozenset({"submit", "admin"})
# A submit token reads the jobs it created by id (the ids its own answers gave it). Jobs have
# no owner, so it can read any job whose id it knows: ids are sequential, not secret.
READ_OR_SUBMIT: Final[Access] = frozenset({"submit", "read", "admin"})
# No route matched (404, 405): any valid token may learn that, nobody else.
_NO_ROUTE: Final[Access] = frozenset({"submit", "read", "admin"})

# (method, path template) -> who may use it. HEAD is GET's.
ROUTE_ACCESS: Final[dict[tuple[str, str], Access]] = {
    # The probes, the API's description, the sign-in and the style sheet it needs.
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/login"): PUBLIC,
    ("POST", "/login"): PUBLIC,
    ("POST", "/logout"): PUBLIC,
    ("GET", "/static"): PUBLIC,
    # Submitting, and reading one's answers.
    ("POST", "/jobs"): SUBMIT,
    ("GET", "/jobs/{job_id}"): READ_OR_SUBMIT,
    # Every other read: the API, the pages and what their scripts fetch, /metrics.
    ("GET", "/jobs"): READ,
    ("GET", "/limits"): READ,
    ("GET", "/limits/{kind}"): READ,
    ("GET", "/limits/{kind}/objects"): READ,
    ("GET", "/limits/{kind}/objects/{object_id}"): READ,
    ("GET", "/overview"): READ,
    ("GET", "/overview/events"): READ,
    ("GET", "/objects/{object_id}/timeline"): READ,
    ("GET", "/workers"): READ,
    ("GET", "/metrics"): READ,
    ("GET", "/"): READ,
    ("GET", "/objects/{object_id}"): READ,
    ("GET", "/job/{job_id}"): READ,
    ("GET", "/limits-view"): READ,
    # The pages' actions: a `read` visitor reaches them (and is told it may not act, by a
    # page); forms.may_act lets only `admin` act.
    ("POST", "/job/{job_id}/cancel"): READ,
    ("POST", "/job/{job_id}/retry"): READ,
    ("POST", "/retry-shown"): READ,
    ("POST", "/limits-view/change"): READ,
    # Changing jobs and limits.
    ("POST", "/jobs/{job_id}/cancel"): ADMIN,
    ("POST", "/jobs/{job_id}/retry"): ADMIN,
    ("POST", "/jobs/retry"): ADMIN,
    ("PUT", "/limits/{kind}"): ADMIN,
    ("DELETE", "/limits/{kind}"): ADMIN,
    ("POST", "/limits/{kind}/pause"): ADMIN,
    ("POST", "/limits/{kind}/resume"): ADMIN,
    ("PUT", "/limits/{kind}/objects/{object_id}"): ADMIN,
    ("DELETE", "/limits/{kind}/objects/{object_id}"): ADMIN,
    ("POST", "/limits/{kind}/objects/{object_id}/pause"): ADMIN,
    ("POST", "/limits/{kind}/objects/{object_id}/resume"): ADMIN,
}
# The pages a browser opens: without a sign-in it is sent to the sign-in form instead of a 401.
# (A page action posted without one is a 401 like any refused request: it changed nothing.)
PAGE_ROUTES: Final = frozenset(
    {
        ("GET", "/"),
        ("GET", "/objects/{object_id}"),
        ("GET", "/job/{job_id}"),
        ("GET", "/limits-view"),
    }
)


def route_key(request: web.Request) -> tuple[str, str] | None:
    """(method, path template) of the route the request matched; None if none did."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    method = hdrs.METH_GET if request.method == hdrs.METH_HEAD else request.method
    return method, resource.canonical


def access_of(key: tuple[str, str] | None) -> Access:
    """Who may use the route; `admin` for a route the table does not name."""
    if key is None:
        return _NO_ROUTE
    return ROUTE_ACCESS.get(key, ADMIN)


async def authenticate(request: web.Request, credentials: Credentials) -> Principal | None:
    """The bearer token's scope, else the session cookie's; None if neither is right."""
    scheme, _, presented = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    if scheme.lower() == "bearer" and presented.strip():
        scope = credentials.scope_of(presented.strip())
        return None if scope is None else Principal(scope)
    cookie = request.cookies.get(COOKIE)
    if cookie:
        return await credentials.session(request.app[POOL], cookie)
    return None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Let a request through only if the service is open, the route public, or its token or
    session has a scope the route takes."""
    credentials = request.app[CREDENTIALS]
    key = route_key(request)
    access = access_of(key)
    if not credentials.enabled or access is None:
        return await handler(request)
    principal = await authenticate(request, credentials)
    if principal is None:
        if key in PAGE_ROUTES:
            to_sign_in = web.HTTPSeeOther(request.app.router["login"].url_for())
            if COOKIE in request.cookies:  # expired, signed out or rotated out: forget it
                to_sign_in.del_cookie(COOKIE, path="/")
            raise to_sign_in
        raise Problem(
            401,
            "Unauthorized",
            "This paceline needs a token: send `Authorization: Bearer <token>` with a token of "
            "PACELINE_TOKENS (or PACELINE_API_TOKEN).",
            headers={"WWW-Authenticate": 'Bearer realm="paceline"'},
        )
    if principal.scope not in access:
        needed = " or ".join(sorted(access))
        raise Problem(
            403,
            "Forbidden",
            f"A {principal.scope} token may not {request.method} {request.path}: that takes "
            f"a token of scope {needed}. Nothing was done.",
            scope=principal.scope,
        )
    request[PRINCIPAL] = principal
    return await handler(request)


@routes.get("/login", name="login")
async def login_form(request: web.Request) -> web.Response:
    """The sign-in form of the page."""
    return aiohttp_jinja2.render_template("login.html", request, {"error": None})


@routes.post("/login", name="sign_in")
async def login(request: web.Request) -> web.Response:
    """Check the token from the form; on success start a session and go to the page."""
    credentials = request.app[CREDENTIALS]
    if not credentials.enabled:
        raise web.HTTPSeeOther(request.app.router["index"].url_for())
    _refuse_other_sites(request)
    wait = request.app[THROTTLE].attempt(request.remote or "")
    if wait > 0:
        seconds = math.ceil(wait)
        return _form_again(
            request,
            429,
            f"Too many sign-in attempts; try again in {seconds} s.",
            headers={"Retry-After": str(seconds)},
        )
    if (request.content_length or 0) > _MAX_FORM_BYTES:
        raise Problem(413, "Payload too large", "The sign-in form is at most 4 KiB.")
    form = await request.post()
    presented = str(form.get("token", ""))
    scope = credentials.scope_of(presented)
    if scope is None:
        return _form_again(request, 401, "That token is not right.")
    if scope == "submit":
        return _form_again(
            request, 403, "A submit token cannot open the page; sign in with a read or admin token."
        )
    cookie, _ = await credentials.sign_in(request.app[POOL], presented, scope)
    response = web.HTTPSeeOther(request.app.router["index"].url_for())
    response.set_cookie(
        COOKIE,
        cookie,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
        # The browser forgets it when the session ends; the database decides either way.
        max_age=math.ceil(credentials.session_seconds),
    )
    raise response


@routes.post("/logout", name="logout")
async def logout(request: web.Request) -> web.Response:
    """End the session: its cookie is worthless from now on, on every replica."""
    _refuse_other_sites(request)
    cookie = request.cookies.get(COOKIE)
    credentials = request.app[CREDENTIALS]
    if cookie and credentials.enabled:
        await credentials.sign_out(request.app[POOL], cookie)
    response = web.HTTPSeeOther(request.app.router["login"].url_for())
    response.del_cookie(COOKIE, path="/")
    response.del_cookie(FORM_COOKIE, path="/")
    raise response


def _form_again(
    request: web.Request, status: int, error: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    response = aiohttp_jinja2.render_template("login.html", request, {"error": error})
    response.set_status(status)
    response.headers.update(headers or {})
    return response


def _refuse_other_sites(request: web.Request) -> None:
    """Another site's page may not sign this browser in or out (the session cookie is
    SameSite=Strict, but these forms set or clear it)."""
    if foreign_origin(request):
        raise Problem(403, "Forbidden", "This form was sent from another site; nothing was done.")
