"""The signed-in page in a real headless Chromium, against a real `paceline serve` with scoped
tokens: the sign-in form, every page, an action, the submit box and sign-out all work under
the pages' Content-Security-Policy, and the browser reports no violation of it (each
`securitypolicyviolation` event is collected, and every console error or warning)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from tests.browser import DESKTOP, api, launch, serve
from tests.support import ServeProcess

pytestmark = pytest.mark.browser

READ_TOKEN = "read-token-0123456789abc"
ADMIN_TOKEN = "admin-token-0123456789ab"
SUBMIT_TOKEN = "submit-token-0123456789"
TOKENS = f"submit:{SUBMIT_TOKEN},read:{READ_TOKEN},admin:{ADMIN_TOKEN}"
# Registered before any page script runs (playwright injects it outside the page's CSP).
COLLECT_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__violations.push(`${event.violatedDirective} blocked ${event.blockedURI || "inline"}`);
});
"""


@contextmanager
def watched(browser: Browser) -> Iterator[tuple[Page, list[str]]]:
    """A page whose CSP violations, console errors and warnings and uncaught exceptions are
    collected; read them with `problems(page, seen)`."""
    page = browser.new_page(viewport={"width": DESKTOP["width"], "height": DESKTOP["height"]})
    seen: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            seen.append(f"{page.url}: console {message.type}: {message.text}")

    page.add_init_script(COLLECT_VIOLATIONS)
    page.on("console", on_console)
    page.on("pageerror", lambda error: seen.append(f"{page.url}: uncaught {error}"))
    try:
        yield page, seen
    finally:
        page.close()


def violations(page: Page) -> list[str]:
    """The CSP violations this document reported so far."""
    found: list[str] = page.evaluate("window.__violations")
    return [f"{page.url}: {violation}" for violation in found]


def visit(page: Page, url: str, reported: list[str]) -> None:
    page.goto(url)
    expect(page.locator("h1")).to_be_visible()
    page.wait_for_load_state("networkidle")
    reported.extend(violations(page))


def sign_in(page: Page, server: ServeProcess, token: str) -> None:
    page.goto(f"{server.url}/")
    expect(page).to_have_url(f"{server.url}/login")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{server.url}/")


@pytest.fixture
def guarded(
    chromium: Path, database_url: str, tmp_path: Path
) -> Iterator[tuple[ServeProcess, Browser]]:
    """A `paceline serve` with a token of each scope and a 600 s window, and a browser."""
    with (
        serve(
            database_url,
            tmp_path,
            "noop",
            window=600,
            concurrency=1,
            env={"PACELINE_TOKENS": TOKENS},
        ) as server,
        launch(chromium) as browser,
    ):
        yield server, browser


def test_the_signed_in_pages_work_under_their_csp_without_a_violation(
    guarded: tuple[ServeProcess, Browser],
) -> None:
    server, browser = guarded
    first = api(server, "/jobs", {"object_id": 7}, token=SUBMIT_TOKEN)["id"]
    waiting = api(server, "/jobs", {"object_id": 7}, token=SUBMIT_TOKEN)["id"]
    reported: list[str] = []
    with watched(browser) as (page, seen):
        # A wrong token is told so on the form; the right one opens the page.
        page.goto(f"{server.url}/login")
        page.get_by_label("API token").fill("not-" + ADMIN_TOKEN)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_have_text("That token is not right.")
        reported.extend(violations(page))
        # The refusal is a 401, which the console notes; that and nothing else.
        assert [line.split(": ", 1)[1] for line in seen] == [
            "console error: Failed to load resource: the server responded with a status of 401 "
            "(Unauthorized)"
        ]
        seen.clear()
        sign_in(page, server, ADMIN_TOKEN)
        expect(page.locator("#sign-out")).to_contain_text("Signed in (admin).")

        for path in ("/", "/objects/7", f"/job/{first}", "/limits-view", "/?status=FAILED"):
            visit(page, f"{server.url}{path}", reported)

        # The submit box (a fetch of POST /jobs with the session) and an action (a form POST).
        visit(page, f"{server.url}/", reported)
        page.get_by_label("Object id", exact=True).fill("8")
        page.get_by_role("button", name="Submit").click()
        expect(page.locator("#submit-result")).to_contain_text("Accepted: job")
        visit(page, f"{server.url}/job/{waiting}", reported)
        page.get_by_role("button", name="Cancel this job").click()
        expect(page.locator("#flash")).to_have_text(
            f"Job {waiting} cancelled; the jobs behind it moved up."
        )
        reported.extend(violations(page))
        assert api(server, f"/jobs/{waiting}", token=READ_TOKEN)["status"] == "CANCELLED"

        # Sign-out ends the session: the page asks for a token again.
        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(f"{server.url}/login")
        page.goto(f"{server.url}/limits-view")
        expect(page).to_have_url(f"{server.url}/login")
        reported.extend(violations(page))

        # A read session: the same pages, no action forms, no submit box, and no script
        # error for what is missing.
        sign_in(page, server, READ_TOKEN)
        expect(page.locator("#sign-out")).to_contain_text("the pages show, they do not act")
        for path in ("/", "/?status=FAILED", f"/job/{first}", "/limits-view", "/objects/7"):
            visit(page, f"{server.url}{path}", reported)
            expect(page.locator("form.action")).to_have_count(0)
        expect(page.locator("#submit-form")).to_have_count(0)

        assert reported == []
        assert seen == [], "\n".join(seen)

        # The collector does see a violation: an inline script, as an injection would try.
        page.evaluate(
            "() => { const s = document.createElement('script');"
            " s.textContent = 'window.__ran = true'; document.body.append(s); }"
        )
        page.wait_for_function("window.__violations.length > 0")
        assert any(re.search(r"script-src", line) for line in violations(page))
        assert page.evaluate("window.__ran === undefined")
