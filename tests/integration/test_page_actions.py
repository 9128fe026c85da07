"""The pages' actions, over HTTP in process: every state-changing form POST is refused unless it
comes from this site with this browser's form token, a change is previewed (dry run) before it
is applied, and the job and limits pages render what they promise, escaped, under a strict CSP.
The same actions driven by a real browser are in tests/process/test_browser_actions.py."""

from __future__ import annotations

import html
import re
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from paceline.web.forms import FORM_COOKIE
from paceline.web.headers import CONTENT_SECURITY_POLICY
from tests.conftest import MakeClient
from tests.queue_data import insert_attempt, insert_job

Client = TestClient[Any, Any]
TOKEN_FIELD = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


async def form_token(client: Client, path: str = "/") -> str:
    """Open a page as a browser would; the form token its forms carry."""
    response = await client.get(path)
    assert response.status == 200, await response.text()
    found = TOKEN_FIELD.search(await response.text())
    assert found is not None, "the page has no action form"
    return found.group(1)


def same_site(client: Client) -> dict[str, str]:
    return {"Origin": f"http://{client.host}:{client.port}"}


async def post(
    client: Client, path: str, data: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, str, str | None]:
    """POST a form without following the redirect: status, body, Location."""
    response = await client.post(path, data=data, headers=headers, allow_redirects=False)
    return response.status, await response.text(), response.headers.get("Location")


async def status_of(db: asyncpg.Connection, job_id: int) -> str:
    status: str = await db.fetchval("SELECT status FROM jobs WHERE id = $1", job_id)
    return status


async def test_a_cross_site_or_tokenless_post_is_refused_and_changes_nothing(
    client: Client, db: asyncpg.Connection
) -> None:
    job = await insert_job(db, 7, run_at=60)
    token = await form_token(client)
    cancel = f"/job/{job}/cancel"
    refusals = [
        # Another site's page posting to paceline: the browser says so in Origin.
        ({"csrf_token": token}, {"Origin": "https://evil.example"}),
        # No Origin, and a Referer from elsewhere.
        ({"csrf_token": token}, {"Referer": "https://evil.example/page"}),
        # Neither header: nothing says where the form came from.
        ({"csrf_token": token}, {}),
        # Right origin, no token / a wrong one.
        ({}, same_site(client)),
        ({"csrf_token": "0" * 64}, same_site(client)),
    ]
    for data, headers in refusals:
        status, body, _ = await post(client, cancel, data, headers)
        assert status == 403, (data, headers, body)
        assert "nothing was done" in body
        assert await status_of(db, job) == "PENDING"
    # The same form with its token, from this site, does it.
    status, _, location = await post(client, cancel, {"csrf_token": token}, same_site(client))
    assert status == 303
    assert location == f"/job/{job}"
    assert await status_of(db, job) == "CANCELLED"


@pytest.mark.parametrize(
    ("case", "status", "after"),
    [
        # Another browser's token (another form cookie) does not fit this browser's cookie.
        ("another browser's cookie", 403, "PENDING"),
        # Without Origin, a Referer of this site says where the form came from.
        ("a referer of this site", 303, "CANCELLED"),
    ],
)
async def test_the_token_fits_this_browser_and_a_referer_stands_in_for_origin(
    client: Client, db: asyncpg.Connection, case: str, status: int, after: str
) -> None:
    job = await insert_job(db, 7, run_at=60)
    token = await form_token(client)
    if case == "another browser's cookie":
        client.session.cookie_jar.clear()
        headers = {**same_site(client), "Cookie": f"{FORM_COOKIE}=another-browsers-value"}
    else:
        headers = {"Referer": f"http://{client.host}:{client.port}/job/{job}"}
    answered, _, _ = await post(client, f"/job/{job}/cancel", {"csrf_token": token}, headers)
    assert answered == status
    assert await status_of(db, job) == after


async def test_after_an_action_the_page_says_what_was_done_once(
    client: Client, db: asyncpg.Connection
) -> None:
    job = await insert_job(db, 7, run_at=60)
    token = await form_token(client)
    data = {"csrf_token": token, "back": "/"}
    status, _, location = await post(client, f"/job/{job}/cancel", data, same_site(client))
    assert (status, location) == (303, "/")
    first = await (await client.get("/")).text()
    assert f"Job {job} cancelled; the jobs behind it moved up." in first
    again = await (await client.get("/")).text()
    assert "cancelled; the jobs behind" not in again
    # Cancelling it twice does nothing and says why.
    await post(client, f"/job/{job}/cancel", data, same_site(client))
    page = await (await client.get("/")).text()
    assert f"Job {job} is CANCELLED; only a PENDING job can be cancelled." in page


async def test_back_goes_only_to_a_path_of_this_site(
    client: Client, db: asyncpg.Connection
) -> None:
    token = await form_token(client)
    for back in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        job = await insert_job(db, 7, run_at=60)
        data = {"csrf_token": token, "back": back}
        _, _, location = await post(client, f"/job/{job}/cancel", data, same_site(client))
        assert location == f"/job/{job}", back


async def test_a_limit_change_is_previewed_then_applied(
    client: Client, db: asyncpg.Connection
) -> None:
    for _ in range(3):
        await client.post("/jobs", json={"object_id": 5})
    before = await (await client.get("/limits/default")).json()
    token = await form_token(client, "/limits-view")
    form = {
        "csrf_token": token,
        "action": "set",
        "kind": "default",
        "object_id": "5",
        "window": "30",
        "limit": "",
        "max_running": "",
        "back": "/limits-view",
    }

    # The preview is a dry run on a confirmation page: which jobs move, before -> after.
    status, page, _ = await post(client, "/limits-view/change", form, same_site(client))
    assert status == 200, page
    assert "Confirm: change the limit of object 5 of kind default" in page
    assert "These 2 jobs move:" in page
    assert page.count('<tr data-job-id="') == 2
    assert 'name="step" value="apply"' in page
    assert '<a id="cancel-confirm" class="button" href="/limits-view">Cancel</a>' in page
    assert (await client.get("/limits/default/objects/5")).status == 200
    assert (await (await client.get("/limits/default/objects/5")).json())["set"] is None
    assert await (await client.get("/limits/default")).json() == before

    # Confirmed: the override exists, and the page says what moved.
    applied = {**form, "step": "apply"}
    status, _, location = await post(client, "/limits-view/change", applied, same_site(client))
    assert (status, location) == (303, "/limits-view")
    view = await (await client.get("/limits/default/objects/5")).json()
    assert view["set"]["window"] == 30
    page = await (await client.get("/limits-view")).text()
    assert (
        "Object 5 of kind default limit set: 1 start per 30 s, 1 running at once; 2 jobs moved."
        in page
    )


async def test_pause_and_resume_a_kind_from_the_page(client: Client) -> None:
    await client.post("/jobs", json={"object_id": 1})
    token = await form_token(client, "/limits-view")
    pause = {"csrf_token": token, "action": "pause", "kind": "default"}
    status, page, _ = await post(client, "/limits-view/change", pause, same_site(client))
    assert status == 200
    assert "Confirm: pause kind default" in page
    assert (await (await client.get("/limits/default")).json())["paused"] is False
    await post(client, "/limits-view/change", {**pause, "step": "apply"}, same_site(client))
    assert (await (await client.get("/limits/default")).json())["paused"] is True
    resume = {**pause, "action": "resume", "step": "apply"}
    await post(client, "/limits-view/change", resume, same_site(client))
    assert (await (await client.get("/limits/default")).json())["paused"] is False


async def test_a_form_that_cannot_be_acted_on_says_why_and_changes_nothing(
    client: Client,
) -> None:
    token = await form_token(client, "/limits-view")
    cases = [
        ({"action": "set", "kind": "default", "window": "-1"}, "window must be a number"),
        ({"action": "set", "kind": "notify", "window": ""}, "Give at least one number"),
        ({"action": "set", "kind": "Bad Kind", "window": "5"}, "kind must be a name"),
        ({"action": "drop", "kind": "default"}, "cannot be dropped"),
        ({"action": "drop", "kind": "notify", "object_id": "3"}, "has no limit of its own"),
        ({"action": "explode", "kind": "default"}, "Unknown action"),
    ]
    before = await (await client.get("/limits")).json()
    for fields, said in cases:
        data = {"csrf_token": token, "back": "/limits-view", **fields, "step": "apply"}
        status, _, location = await post(client, "/limits-view/change", data, same_site(client))
        assert (status, location) == (303, "/limits-view"), fields
        page = await (await client.get("/limits-view")).text()
        assert said in html.unescape(page), (fields, page)
    assert await (await client.get("/limits")).json() == before


async def test_the_job_page_shows_payload_attempts_and_actions_escaped(
    client: Client, db: asyncpg.Connection
) -> None:
    hostile = "<script>alert(1)</script>"
    created = await (
        await client.post("/jobs", json={"object_id": 9, "payload": {"x": hostile, "n": 2**60}})
    ).json()
    failed = await insert_job(db, 9, "FAILED", started=-5, finished=-4, attempts=1, error=hostile)
    await insert_attempt(db, failed, 1, started=-5, finished=-4, outcome="FAILED", error=hostile)

    response = await client.get(f"/job/{created['id']}")
    assert response.status == 200
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    page = await response.text()
    assert hostile not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert f'"n": {2**60}' in html.unescape(page)
    assert "Cancel this job" in page
    assert "Why it waits" in page

    page = await (await client.get(f"/job/{failed}")).text()
    assert "Retry this job" in page
    assert "Cancel this job" not in page
    assert '<tr data-attempt="1">' in page
    assert hostile not in page

    missing = await client.get("/job/99999")
    assert missing.status == 404
    assert "There is no job 99999" in await missing.text()
    # The API's job stays JSON.
    assert (await client.get(f"/jobs/{created['id']}")).content_type == "application/json"


async def test_pages_carry_no_inline_script_or_handler(
    client: Client, db: asyncpg.Connection
) -> None:
    job = await insert_job(db, 3, "FAILED", started=-5, finished=-4, attempts=1, error="boom")
    for path in ("/", "/objects/3", f"/job/{job}", "/limits-view", "/login"):
        response = await client.get(path)
        page = await response.text()
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, path
        assert re.findall(r"<script(?![^>]*\bsrc=)", page) == [], path
        assert not re.search(r"\son[a-z]+=", page), path
        assert "<style" not in page, path
        assert " style=" not in page, path
    assert (await client.get("/static/common.js")).status == 200


@pytest.mark.parametrize("path", ["/job/1", "/limits-view"])
async def test_the_new_pages_want_a_session_when_a_token_is_set(
    make_client: MakeClient, path: str
) -> None:
    client = await make_client(concurrency=0, api_token="s3cret-s3cret-s3cret")
    response = await client.get(path, allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/login"
    # Posting an action without a session is refused before any form is read.
    refused = await client.post("/job/1/cancel", data={}, allow_redirects=False)
    assert refused.status == 401
    # The sign-in form still needs its style sheet.
    assert (await client.get("/static/paceline.css")).status == 200


async def test_retry_one_job_and_every_job_shown(client: Client, db: asyncpg.Connection) -> None:
    failed = [
        await insert_job(db, object_id, "FAILED", started=-5, finished=-4, attempts=1)
        for object_id in (1, 2, 3)
    ]
    await db.execute(
        "UPDATE jobs SET payload = $2::jsonb WHERE id = $1", failed[0], '{"customer": 42}'
    )
    await db.execute(
        "UPDATE jobs SET payload = $2::jsonb WHERE id = $1", failed[1], '{"customer": 7}'
    )
    token = await form_token(client, f"/job/{failed[2]}")

    # One job: at once, and the page says its new slot.
    status, _, location = await post(
        client, f"/job/{failed[2]}/retry", {"csrf_token": token}, same_site(client)
    )
    assert (status, location) == (303, f"/job/{failed[2]}")
    assert await status_of(db, failed[2]) == "PENDING"
    job_page = f"/job/{failed[2]}"
    page = await (await client.get(job_page)).text()
    assert re.search(rf"Job {failed[2]} retried: next slot \d\d:\d\d:\d\d UTC\.", page), page
    # Again: it is pending now, so nothing is done, and the page says why.
    await post(client, f"/job/{failed[2]}/retry", {"csrf_token": token}, same_site(client))
    page = await (await client.get(job_page)).text()
    assert f"Job {failed[2]} is PENDING; only a FAILED or CANCELLED job can be retried." in page

    # Every FAILED job whose payload contains {"customer": 42}: previewed, then done.
    form = {
        "csrf_token": token,
        "status": "FAILED",
        "kind": "",
        "object_id": "",
        "payload": '{"customer": 42}',
        "back": "/?status=FAILED",
    }
    status, page, _ = await post(client, "/retry-shown", form, same_site(client))
    assert status == 200
    assert "Confirm: retry 1 job" in page
    assert await status_of(db, failed[0]) == "FAILED"
    status, _, location = await post(
        client, "/retry-shown", {**form, "step": "apply"}, same_site(client)
    )
    assert (status, location) == (303, "/?status=FAILED")
    assert [await status_of(db, job) for job in failed] == ["PENDING", "FAILED", "PENDING"]
    page = html.unescape(await (await client.get("/?status=FAILED")).text())
    assert '1 job retried (FAILED jobs whose payload contains {"customer":42}): slot ' in page

    # Only what can be retried; a payload filter must be a JSON object.
    for fields, said in (
        ({"status": "PENDING"}, "Only FAILED or CANCELLED jobs can be retried"),
        ({"status": "FAILED", "payload": "[1]"}, "The payload filter must be a JSON object"),
        ({"status": "CANCELLED"}, "No CANCELLED jobs to retry; nothing was done."),
    ):
        data = {"csrf_token": token, "back": "/", **fields}
        await post(client, "/retry-shown", data, same_site(client))
        assert said in html.unescape(await (await client.get("/")).text()), fields
    assert await status_of(db, failed[1]) == "FAILED"


async def test_another_site_cannot_sign_a_browser_in_or_out(make_client: MakeClient) -> None:
    token = "s3cret-s3cret-s3cret"
    client = await make_client(concurrency=0, api_token=token)
    evil = {"Origin": "https://evil.example"}
    status, body, _ = await post(client, "/login", {"token": token}, evil)
    assert status == 403, body
    assert not list(client.session.cookie_jar)
    status, _, location = await post(client, "/login", {"token": token}, same_site(client))
    assert (status, location) == (303, "/")
    assert (await client.get("/limits-view", allow_redirects=False)).status == 200
    status, _, _ = await post(client, "/logout", {}, {"Referer": "https://evil.example/x"})
    assert status == 403
    assert (await client.get("/limits-view", allow_redirects=False)).status == 200
    status, _, location = await post(client, "/logout", {}, same_site(client))
    assert (status, location) == (303, "/login")
