"""The security headers of every response: pages, the API, problems, static files, streams.

They are added as a response is prepared (aiohttp's `on_response_prepare`), so no answer
misses them, whichever middleware or handler made it.
"""

from __future__ import annotations

from aiohttp import web

# What the pages may load and do: their own scripts, styles and endpoints, nothing inline, no
# framing, forms posted only here.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
# Anything else (JSON, problems, metrics, scripts and styles themselves) is data, never a
# document: opened in a browser, it may load and run nothing, and nobody may frame it.
API_CONTENT_SECURITY_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
COMMON_HEADERS = {
    # A response is what its Content-Type says (no script sniffed out of JSON or text).
    "X-Content-Type-Options": "nosniff",
    # Same-site requests keep their Referer (the fallback of the forms' origin check); other
    # sites learn nothing of paceline's addresses (job ids, filters).
    "Referrer-Policy": "same-origin",
    # frame-ancestors 'none' for browsers that predate it.
    "X-Frame-Options": "DENY",
}


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the headers every response carries, the CSP by content type."""
    del request
    response.headers.update(COMMON_HEADERS)
    if response.content_type == "text/html":
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        # A page shows jobs and limits to a signed-in session: no copy of it stays in a cache
        # (or in the back button's memory) after sign-out.
        response.headers.setdefault("Cache-Control", "no-store")
    else:
        response.headers["Content-Security-Policy"] = API_CONTENT_SECURITY_POLICY
