"""Access control: with PACELINE_API_TOKEN set, a bearer token (API) or a session cookie (page).

The cookie carries an HMAC of the token, not the token; it is HttpOnly and SameSite=Strict, so
scripts cannot read it and other sites cannot make the browser send it. Comparisons are
constant-time. Health checks stay open for load balancers, and so does `/openapi.json`: the
API's description holds no job data, and clients and tools read it before they have a token.
"""

from __future__ import annotations

import hashlib
import hmac

import aiohttp_jinja2
from aiohttp import web
from aiohttp.typedefs import Handler

from paceline.web.forms import foreign_origin
from paceline.web.keys import SETTINGS
from paceline.web.problems import Problem

routes = web.RouteTableDef()

COOKIE = "paceline_session"
# Route names anyone may reach: the sign-in form (and the style sheet it uses), the probes,
# and the API's description.
PUBLIC_ROUTES = frozenset({"healthz", "readyz", "login", "sign_in", "openapi", "static"})
# HTML pages: a visitor who is not signed in is sent to the sign-in form instead of a 401.
PAGE_ROUTES = frozenset({"index", "object", "job_page", "limits_page"})
_MAX_FORM_BYTES = 4096


def session_value(token: str) -> str:
    """What the session cookie holds for `token`."""
    return hmac.new(token.encode(), b"paceline-session-v1", hashlib.sha256).hexdigest()


def is_authorized(request: web.Request, token: str) -> bool:
    """A matching bearer token, or a matching session cookie."""
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() == "bearer" and presented:
        return hmac.compare_digest(presented.strip().encode(), token.encode())
    cookie = request.cookies.get(COOKIE)
    if cookie:
        return hmac.compare_digest(cookie.encode(), session_value(token).encode())
    return False


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Let a request through only if the service is open, the route public, or it is signed in."""
    token = request.app[SETTINGS].api_token
    route_name = request.match_info.route.name
    if token is None or route_name in PUBLIC_ROUTES or is_authorized(request, token):
        return await handler(request)
    if request.method == "GET" and route_name in PAGE_ROUTES:
        raise web.HTTPSeeOther(request.app.router["login"].url_for())
    raise Problem(
        401,
        "Unauthorized",
        "This paceline needs a token: send `Authorization: Bearer <PACELINE_API_TOKEN>`.",
        headers={"WWW-Authenticate": 'Bearer realm="paceline"'},
    )


@routes.get("/login", name="login")
async def login_form(request: web.Request) -> web.Response:
    """The sign-in form of the page."""
    return aiohttp_jinja2.render_template("login.html", request, {"error": None})


@routes.post("/login", name="sign_in")
async def login(request: web.Request) -> web.Response:
    """Check the token from the form; on success set the session cookie and go to the page."""
    token = request.app[SETTINGS].api_token
    if token is None:
        raise web.HTTPSeeOther(request.app.router["index"].url_for())
    _refuse_other_sites(request)
    if (request.content_length or 0) > _MAX_FORM_BYTES:
        raise Problem(413, "Payload too large", "The sign-in form is at most 4 KiB.")
    form = await request.post()
    presented = str(form.get("token", ""))
    if not hmac.compare_digest(presented.encode(), token.encode()):
        response = aiohttp_jinja2.render_template(
            "login.html", request, {"error": "That token is not right."}
        )
        response.set_status(401)
        return response
    response = web.HTTPSeeOther(request.app.router["index"].url_for())
    response.set_cookie(
        COOKIE,
        session_value(token),
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
        max_age=30 * 24 * 3600,
    )
    raise response


@routes.post("/logout", name="logout")
async def logout(request: web.Request) -> web.Response:
    """Forget the session cookie."""
    _refuse_other_sites(request)
    response = web.HTTPSeeOther(request.app.router["login"].url_for())
    response.del_cookie(COOKIE, path="/")
    raise response


def _refuse_other_sites(request: web.Request) -> None:
    """Another site's page may not sign this browser in or out (the session cookie is
    SameSite=Strict, but these forms set or clear it)."""
    if foreign_origin(request):
        raise Problem(403, "Forbidden", "This form was sent from another site; nothing was done.")
