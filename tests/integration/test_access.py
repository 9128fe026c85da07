"""Who may do what, over HTTP in process: each scope can use exactly its routes (every route of
the OpenAPI document, the pages and the pages' actions), page sessions differ per sign-in and
end at sign-out, at expiry and when their token is rotated out, sign-in is throttled, tokens
are written nowhere in clear, and every answer carries the security headers."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from paceline.contract import SCOPE_VALUES
from paceline.queue.maintenance import Janitor
from paceline.web.auth import COOKIE, ROUTE_ACCESS
from paceline.web.headers import CONTENT_SECURITY_POLICY
from paceline.web.openapi import DOCUMENT
from paceline.web.problems import PROBLEM_JSON
from tests.conftest import MakeClient
from tests.integration.test_openapi import app_routes, conforms
from tests.queue_data import insert_job
from tests.support import eventually

Client = TestClient[Any, Any]

SUBMIT_TOKEN = "submit-token-0123456789"
READ_TOKEN = "read-token-0123456789abc"
ADMIN_TOKEN = "admin-token-0123456789ab"
TOKENS = f"submit:{SUBMIT_TOKEN},read:{READ_TOKEN},admin:{ADMIN_TOKEN}"
BY_SCOPE = {"submit": SUBMIT_TOKEN, "read": READ_TOKEN, "admin": ADMIN_TOKEN}
TOKEN_FIELD = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')

ALL = frozenset(SCOPE_VALUES)
READ = frozenset({"read", "admin"})
ADMIN = frozenset({"admin"})
# The decision for every route, written here apart from paceline.web.auth so that the two must
# agree: None is open to everyone; otherwise the scopes that may use it. A route the app gains
# without a line here fails test_every_route_has_a_scope_decision.
EXPECTED: dict[tuple[str, str], frozenset[str] | None] = {
    ("get", "/healthz"): None,
    ("get", "/readyz"): None,
    ("get", "/openapi.json"): None,
    ("get", "/login"): None,
    ("post", "/login"): None,
    ("post", "/logout"): None,
    ("get", "/static"): None,
    ("post", "/jobs"): frozenset({"submit", "admin"}),
    # A submit token reads its answers: the jobs whose ids it was given.
    ("get", "/jobs/{job_id}"): ALL,
    ("get", "/jobs"): READ,
    ("get", "/limits"): READ,
    ("get", "/limits/{kind}"): READ,
    ("get", "/limits/{kind}/objects"): READ,
    ("get", "/limits/{kind}/objects/{object_id}"): READ,
    ("get", "/overview"): READ,
    ("get", "/overview/events"): READ,
    ("get", "/objects/{object_id}/timeline"): READ,
    ("get", "/workers"): READ,
    ("get", "/metrics"): READ,
    ("get", "/"): READ,
    ("get", "/objects/{object_id}"): READ,
    ("get", "/job/{job_id}"): READ,
    ("get", "/limits-view"): READ,
    ("post", "/jobs/{job_id}/cancel"): ADMIN,
    ("post", "/jobs/{job_id}/retry"): ADMIN,
    ("post", "/jobs/retry"): ADMIN,
    ("put", "/limits/{kind}"): ADMIN,
    ("delete", "/limits/{kind}"): ADMIN,
    ("post", "/limits/{kind}/pause"): ADMIN,
    ("post", "/limits/{kind}/resume"): ADMIN,
    ("put", "/limits/{kind}/objects/{object_id}"): ADMIN,
    ("delete", "/limits/{kind}/objects/{object_id}"): ADMIN,
    ("post", "/limits/{kind}/objects/{object_id}/pause"): ADMIN,
    ("post", "/limits/{kind}/objects/{object_id}/resume"): ADMIN,
    # The pages' actions act for admin only (a read session is told so by a page).
    ("post", "/job/{job_id}/cancel"): ADMIN,
    ("post", "/job/{job_id}/retry"): ADMIN,
    ("post", "/retry-shown"): ADMIN,
    ("post", "/limits-view/change"): ADMIN,
}
PAGES = ["/", "/objects/{object_id}", "/job/{job_id}", "/limits-view"]
# Each page action with a form that does something (the form token is added).
PAGE_ACTIONS = {
    "/job/{job_id}/cancel": {"back": "/"},
    "/job/{job_id}/retry": {"back": "/"},
    "/retry-shown": {"status": "FAILED"},
    "/limits-view/change": {"action": "pause", "kind": "default"},
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def same_site(client: Client) -> dict[str, str]:
    return {"Origin": f"http://{client.host}:{client.port}"}


def fill(path: str, job_id: int) -> str:
    return (
        path.replace("{job_id}", str(job_id))
        .replace("{kind}", "default")
        .replace("{object_id}", "1")
    )


async def sign_in(client: Client, token: str) -> ClientResponse:
    return await client.post("/login", data={"token": token}, allow_redirects=False)


def session_cookie(response: ClientResponse) -> str:
    return response.cookies[COOKIE].value


async def call(client: Client, method: str, path: str, operation: dict[str, Any], **kw: Any) -> Any:
    """One request for a documented operation, with what it needs to get past validation
    where that is easy (a body; a dry run where it takes one: nothing changes)."""
    names = {parameter["name"] for parameter in operation.get("parameters", [])}
    params = {"dry_run": "true"} if "dry_run" in names else None
    body: Any = None
    if method == "post" and path == "/jobs":
        body = {"object_id": 1}
    elif method == "put":
        body = {"window": 60}
    elif path == "/jobs/retry":
        params = {**(params or {}), "status": "FAILED"}
    return await client.request(method, path, json=body, params=params, **kw)


def refusal(response: ClientResponse, credential: str) -> str | None:
    """What is wrong with the answer to a refused request, if anything."""
    expected = 401 if credential == "none" else 403
    if response.status != expected:
        return f"{response.status}, not {expected}"
    if response.content_type != PROBLEM_JSON:
        return f"{response.content_type}, not problem+json"
    return None


async def test_every_route_has_a_scope_decision(settings: Any) -> None:
    # A route the app gains (documented or not) fails here until its scopes are decided above.
    assert app_routes(settings) == set(EXPECTED)
    # ... and the code decides each one in its table (what it omits would need admin).
    assert {(method.lower(), path) for method, path in ROUTE_ACCESS} == set(EXPECTED)
    for (method, path), access in ROUTE_ACCESS.items():
        if (method, path) not in {("POST", action) for action in PAGE_ACTIONS}:
            assert access == EXPECTED[method.lower(), path], (method, path)
    documented = {(method, path) for path, item in DOCUMENT["paths"].items() for method in item}
    assert documented <= set(EXPECTED)
    # The document calls open exactly the routes that are open.
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            assert (operation.get("security") == []) == (EXPECTED[method, path] is None), path


async def test_each_scope_can_use_exactly_its_api_routes(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    client = await make_client(concurrency=0, tokens=TOKENS)
    job = await insert_job(db, 1, run_at=60)
    wrong: list[str] = []
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            allowed = EXPECTED[method, path]
            url = fill(path, job)
            for credential in ("none", *SCOPE_VALUES):
                headers = {} if credential == "none" else bearer(BY_SCOPE[credential])
                response = await call(client, method, url, operation, headers=headers)
                response.close()  # /overview/events streams: its headers are the answer
                may = allowed is None or credential in allowed
                if may and response.status in (401, 403):
                    wrong.append(f"{credential} {method} {path}: refused {response.status}")
                elif not may:
                    problem = refusal(response, credential)
                    if problem:
                        wrong.append(f"{credential} {method} {path}: {problem}")
    assert wrong == []


async def test_refusals_say_why_as_the_document_promises(make_client: MakeClient) -> None:
    client = await make_client(concurrency=0, tokens=TOKENS)
    anonymous = await client.post("/jobs/retry?status=FAILED")
    body = await conforms(anonymous, "/jobs/retry")
    assert anonymous.status == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in body["detail"]
    # A token that is not configured is no token at all.
    unknown = await client.get("/jobs", headers=bearer("x" * 32))
    assert unknown.status == 401
    read = await client.post("/jobs/retry?status=FAILED", headers=bearer(READ_TOKEN))
    body = await conforms(read, "/jobs/retry")
    assert read.status == 403
    assert body["detail"].startswith("A read token may not POST /jobs/retry")
    assert "admin" in body["detail"]


async def test_a_submit_token_submits_and_reads_its_answers_only(make_client: MakeClient) -> None:
    client = await make_client(concurrency=0, tokens=TOKENS)
    created = await client.post("/jobs", json={"object_id": 5}, headers=bearer(SUBMIT_TOKEN))
    assert created.status == 201
    job = await created.json()
    read = await client.get(f"/jobs/{job['id']}", headers=bearer(SUBMIT_TOKEN))
    assert (read.status, (await read.json())["id"]) == (200, job["id"])
    assert (await client.get("/jobs", headers=bearer(SUBMIT_TOKEN))).status == 403
    refused = await client.post(f"/jobs/{job['id']}/cancel", headers=bearer(SUBMIT_TOKEN))
    assert refused.status == 403
    # The page is not a submit token's either, neither its sign-in.
    page = await client.get("/", headers=bearer(SUBMIT_TOKEN), allow_redirects=False)
    assert page.status == 403
    signed = await sign_in(client, SUBMIT_TOKEN)
    assert signed.status == 403
    assert "cannot open the page" in await signed.text()
    assert COOKIE not in signed.cookies


async def test_each_session_can_use_exactly_its_pages_and_actions(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    client = await make_client(concurrency=0, tokens=TOKENS)
    wrong: list[str] = []
    for credential in ("none", *SCOPE_VALUES):
        client.session.cookie_jar.clear()
        headers: dict[str, str] = {}
        if credential == "submit":  # it cannot sign in: it knocks with its bearer token
            headers = bearer(SUBMIT_TOKEN)
        elif credential != "none":
            assert (await sign_in(client, BY_SCOPE[credential])).status == 303
        pending = await insert_job(db, 2, run_at=60)
        for page in PAGES:
            allowed = EXPECTED["get", page]
            assert allowed is not None
            response = await client.get(fill(page, pending), headers=headers, allow_redirects=False)
            if credential == "none":
                ok = response.status == 303 and response.headers["Location"] == "/login"
            elif credential in allowed:
                ok = response.status == 200
            else:
                ok = response.status == 403
            if not ok:
                wrong.append(f"{credential} GET {page}: {response.status}")
        # The form token a page gave this visitor (a read one too: its forms are hidden).
        form_page = await client.get("/limits-view", headers=headers)
        found = TOKEN_FIELD.search(await form_page.text())
        for action, fields in PAGE_ACTIONS.items():
            allowed = EXPECTED["post", action]
            assert allowed is not None
            data = {**fields, "csrf_token": found.group(1) if found else ""}
            response = await client.post(
                fill(action, pending),
                data=data,
                headers={**headers, **same_site(client)},
                allow_redirects=False,
            )
            text = await response.text()
            if credential in allowed:
                ok = response.status in (200, 303)
            elif credential == "read":
                ok = response.status == 403 and "may not change" in text
            else:
                ok = refusal(response, credential) is None
            if not ok:
                wrong.append(f"{credential} POST {action}: {response.status} {text[:120]}")
        # What the admin's actions did, and only theirs.
        paused = await db.fetchval("SELECT paused FROM kind_limits WHERE kind = 'default'")
        if credential == "admin":
            assert await db.fetchval("SELECT status FROM jobs WHERE id = $1", pending) in (
                "CANCELLED",
                "PENDING",  # a retry of a cancelled job puts it back
            )
        elif paused:
            wrong.append(f"{credential}: the kind was paused")
    assert wrong == []


async def test_a_read_session_sees_the_pages_without_their_buttons(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    client = await make_client(concurrency=0, tokens=TOKENS)
    job = await insert_job(db, 3, run_at=60)
    assert (await sign_in(client, READ_TOKEN)).status == 303
    page = await (await client.get(f"/job/{job}")).text()
    assert "Cancel this job" not in page
    assert "Signed in (read: the pages show, they do not act)" in page
    assert 'id="submit-form"' not in await (await client.get("/")).text()
    client.session.cookie_jar.clear()
    assert (await sign_in(client, ADMIN_TOKEN)).status == 303
    page = await (await client.get(f"/job/{job}")).text()
    assert "Cancel this job" in page
    assert "Signed in (admin)." in page
    assert 'id="submit-form"' in await (await client.get("/")).text()


async def test_two_sign_ins_differ_and_a_signed_out_cookie_is_worthless(
    make_client: MakeClient,
) -> None:
    client = await make_client(concurrency=0, tokens=TOKENS)
    first = session_cookie(await sign_in(client, ADMIN_TOKEN))
    second = session_cookie(await sign_in(client, ADMIN_TOKEN))
    assert first != second
    client.session.cookie_jar.clear()

    def with_cookie(value: str) -> dict[str, str]:
        return {"Cookie": f"{COOKIE}={value}"}

    for cookie in (first, second):
        assert (await client.get("/jobs", headers=with_cookie(cookie))).status == 200
    signed_out = await client.post("/logout", headers=with_cookie(first), allow_redirects=False)
    assert (signed_out.status, signed_out.headers["Location"]) == (303, "/login")
    # The first cookie, replayed after its sign-out, opens nothing; the other session goes on.
    again = await client.get("/", headers=with_cookie(first), allow_redirects=False)
    assert (again.status, again.headers["Location"]) == (303, "/login")
    assert (await client.get("/jobs", headers=with_cookie(first))).status == 401
    assert (await client.get("/jobs", headers=with_cookie(second))).status == 200


async def test_a_rotated_out_token_fails_at_once_on_every_replica(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    old_admin, new_admin = "admin-old-0123456789abc", "admin-new-0123456789abc"
    before = await make_client(concurrency=0, tokens=f"admin:{old_admin},read:{READ_TOKEN}")
    rotated = session_cookie(await sign_in(before, old_admin))
    kept = session_cookie(await sign_in(before, READ_TOKEN))
    # The restart with the old token taken out (a rolling rotation: another replica, at once).
    after = await make_client(concurrency=0, tokens=f"admin:{new_admin},read:{READ_TOKEN}")
    after.session.cookie_jar.clear()
    page = await after.get("/", headers={"Cookie": f"{COOKIE}={rotated}"}, allow_redirects=False)
    assert (page.status, page.headers["Location"]) == (303, "/login")
    assert (await after.get("/jobs", headers=bearer(old_admin))).status == 401
    assert (await after.get("/jobs", headers={"Cookie": f"{COOKIE}={rotated}"})).status == 401
    # A session made on the other replica with a token both still have works here.
    assert (await after.get("/jobs", headers={"Cookie": f"{COOKIE}={kept}"})).status == 200
    assert (await after.get("/jobs", headers=bearer(new_admin))).status == 200
    # The rotated-out session's row is gone; the kept one stays.
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1


async def test_an_expired_session_goes_to_the_sign_in(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    client = await make_client(concurrency=0, tokens=TOKENS, session_seconds=0.5)
    signed = await sign_in(client, READ_TOKEN)
    assert signed.status == 303
    assert "Max-Age=1" in signed.headers["Set-Cookie"]
    lifetime = await db.fetchval("SELECT expires_at - created_at FROM sessions")
    assert lifetime == timedelta(seconds=0.5)

    async def sent_to_sign_in() -> bool:
        page = await client.get("/", allow_redirects=False)
        return page.status == 303 and page.headers["Location"] == "/login"

    await eventually(sent_to_sign_in, timeout=10)
    assert (await client.get("/jobs")).status == 401


async def test_sign_in_is_throttled_right_or_wrong(
    make_client: MakeClient, db: asyncpg.Connection
) -> None:
    client = await make_client(concurrency=0, tokens=TOKENS)
    for _ in range(4):
        assert (await sign_in(client, "wrong-token-0123456789")).status == 401
    assert (await sign_in(client, READ_TOKEN)).status == 303  # the fifth, right, counts too
    throttled = await sign_in(client, ADMIN_TOKEN)
    assert throttled.status == 429
    assert int(throttled.headers["Retry-After"]) >= 1
    assert throttled.content_type == "text/html"
    assert "Too many sign-in attempts" in await throttled.text()
    assert await db.fetchval("SELECT array_agg(scope) FROM sessions") == ["read"]
    # Only the sign-in is throttled: a bearer token still works.
    assert (await client.get("/jobs", headers=bearer(ADMIN_TOKEN))).status == 200


async def test_tokens_are_written_nowhere_in_clear(
    make_client: MakeClient, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await make_client(concurrency=0, tokens=TOKENS, api_token="api-token-0123456789abc")
    answers = [await sign_in(client, token) for token in (READ_TOKEN, ADMIN_TOKEN, SUBMIT_TOKEN)]
    answers.append(await sign_in(client, "api-token-0123456789abc"))
    answers.append(await client.post("/jobs", json={"object_id": 1}, headers=bearer(SUBMIT_TOKEN)))
    tokens = [SUBMIT_TOKEN, READ_TOKEN, ADMIN_TOKEN, "api-token-0123456789abc"]
    assert await db.fetchval("SELECT count(*) FROM sessions") == 3
    tables = await db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    for table in (row["table_name"] for row in tables):
        for token in tokens:
            hex_token = token.encode().hex()
            # The table names come from the catalog, not from a request.
            found = await db.fetchval(
                f'SELECT count(*) FROM "{table}" AS t '
                "WHERE t::text LIKE '%' || $1 || '%' OR t::text LIKE '%' || $2 || '%'",
                token,
                hex_token,
            )
            assert found == 0, f"{table} holds a token"
    for answer in answers:
        for token in tokens:
            assert token not in answer.headers.get("Set-Cookie", "")
    for token in tokens:
        assert token not in caplog.text


async def test_every_answer_carries_the_security_headers(make_client: MakeClient) -> None:
    client = await make_client(concurrency=0, tokens=TOKENS)
    assert (await sign_in(client, READ_TOKEN)).status == 303
    answers = {
        "page": await client.get("/"),
        "sign-in form": await client.get("/login"),
        "API": await client.get("/jobs"),
        "metrics": await client.get("/metrics"),
        "403": await client.post("/jobs", json={"object_id": 1}),
        "404": await client.get("/nowhere"),
        "style sheet": await client.get("/static/paceline.css"),
        "document": await client.get("/openapi.json"),
    }
    client.session.cookie_jar.clear()
    answers["401"] = await client.get("/jobs")
    for name, response in answers.items():
        headers = response.headers
        assert headers["X-Content-Type-Options"] == "nosniff", name
        assert headers["Referrer-Policy"] == "same-origin", name
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], name
        if response.content_type == "text/html":
            assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, name
            assert headers["Cache-Control"] == "no-store", name
        else:
            assert headers["Content-Security-Policy"].startswith("default-src 'none'"), name
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY


async def test_the_api_token_and_scoped_tokens_work_side_by_side(make_client: MakeClient) -> None:
    client = await make_client(
        concurrency=0, tokens=f"read:{READ_TOKEN}", api_token="api-token-0123456789abc"
    )
    cancel = "/jobs/retry?status=FAILED&dry_run=true"
    assert (await client.post(cancel, headers=bearer("api-token-0123456789abc"))).status == 200
    assert (await client.post(cancel, headers=bearer(READ_TOKEN))).status == 403
    assert (await client.get("/jobs", headers=bearer(READ_TOKEN))).status == 200


async def test_expired_sessions_are_deleted_and_live_ones_kept(
    make_client: MakeClient, db: asyncpg.Connection, database_url: str
) -> None:
    client = await make_client(concurrency=0, tokens=TOKENS)
    live = session_cookie(await sign_in(client, READ_TOKEN))
    await db.execute(
        "INSERT INTO sessions (id, scope, token_fingerprint, created_at, expires_at) "
        "SELECT sha256(n::text::bytea), 'read', '\\x00', now() - interval '2 days', "
        "now() - interval '1 day' FROM generate_series(1, 1200) AS n"
    )
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await Janitor(pool, retention=7 * 86400, interval=1).prune()
    finally:
        await pool.close()
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1
    assert (await client.get("/jobs", headers={"Cookie": f"{COOKIE}={live}"})).status == 200
