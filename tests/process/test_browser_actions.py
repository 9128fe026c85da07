"""Acting from the pages in a real headless Chromium, against a real `paceline serve`: each
button does what it says (checked through the JSON API), a confirmation can be cancelled and
then nothing changes, a cross-site form post is refused, the keyboard alone reaches every
action, and no page logs a console error (the pages run under a strict CSP: any inline script
or style would be one).

PACELINE_SCREENSHOT=1 also saves docs/screenshots/{index,job,object,limits}-{desktop,phone}.png
(made smaller with pngquant where it is installed).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, expect

from tests.browser import DESKTOP, api, api_jobs, launch, serve
from tests.queue_data import seed_busy_queue
from tests.support import ROOT, ServeProcess

pytestmark = pytest.mark.browser

SCREENSHOTS = ROOT / "docs" / "screenshots"
PHONE = {"width": 390, "height": 844}
EVIL = "http://evil.test"


@pytest.fixture
def queue(
    chromium: Path, database_url: str, tmp_path: Path
) -> Iterator[tuple[ServeProcess, Browser]]:
    """A `paceline serve` whose jobs succeed at once, with a 600 s window (an object's second
    job waits), and a browser."""
    with (
        serve(database_url, tmp_path, "noop", window=600, concurrency=1) as server,
        launch(chromium) as browser,
    ):
        yield server, browser


@contextmanager
def watched_page(browser: Browser, url: str, **context: Any) -> Iterator[tuple[Page, list[str]]]:
    """A page whose console errors and warnings and uncaught exceptions are collected (a
    failed load of a resource, a CSP violation and a script error are all console errors)."""
    page = browser.new_page(**{"viewport": DESKTOP, **context})
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"{page.url}: console {message.type}: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"{page.url}: uncaught {error}"))
    try:
        page.goto(url)
        expect(page.locator("h1")).to_be_visible()
        yield page, problems
    finally:
        page.close()


def shrink(png: Path) -> None:
    """Keep a committed screenshot small: 256 colours with pngquant, where it is installed."""
    if shutil.which("pngquant"):
        command = ["pngquant", "--force", "--skip-if-larger", "--quality", "60-90", "--strip"]
        subprocess.run([*command, "--output", str(png), "--", str(png)], check=False)


def flash(page: Page) -> Locator:
    return page.locator("#flash")


def limit_of(server: ServeProcess, path: str) -> dict[str, Any]:
    """GET /limits/... as JSON."""
    found: dict[str, Any] = api(server, path)
    return found


def confirmed(page: Page, opener: Locator, confirm: str, said: str) -> None:
    """Open an action's confirmation, confirm it, and see the page say what it did."""
    opener.click()
    page.get_by_role("button", name=confirm, exact=True).click()
    expect(flash(page)).to_contain_text(said)


def job_status(server: ServeProcess, job_id: int) -> str:
    status: str = api(server, f"/jobs/{job_id}")["status"]
    return status


def queued_jobs(server: ServeProcess, object_id: int, count: int) -> list[int]:
    """`count` jobs for one object; with a long window, all but the first wait."""
    return [api(server, "/jobs", {"object_id": object_id})["id"] for _ in range(count)]


def test_each_button_does_what_it_says_and_a_cancelled_confirmation_changes_nothing(
    queue: tuple[ServeProcess, Browser],
) -> None:
    server, browser = queue
    first, second, third = queued_jobs(server, 7, 3)
    with watched_page(browser, f"{server.url}/job/{second}") as (page, problems):
        # Cancel one pending job: the job page says so, and so does the API.
        expect(page.locator("#job-status")).to_contain_text("PENDING")
        expect(page.locator("#wait")).to_contain_text("window: 1 start in the last 600 s")
        page.get_by_role("button", name="Cancel this job").click()
        expect(flash(page)).to_have_text(f"Job {second} cancelled; the jobs behind it moved up.")
        assert job_status(server, second) == "CANCELLED"
        expect(page.locator("#job-status")).to_contain_text("CANCELLED")
        # The job behind it took its slot.
        assert api(server, f"/jobs/{third}")["run_at"] > api(server, f"/jobs/{first}")["run_at"]

        # Pause the kind from the limits page; first cancel the confirmation.
        page.get_by_role("link", name="Limits").click()
        kind_row = page.locator('#kinds tr[data-kind="default"]')
        pause = kind_row.get_by_role("button", name="Pause…")
        pause.click()
        expect(page.get_by_role("heading", name="Confirm: pause kind default")).to_be_visible()
        expect(page.locator("#summary")).to_contain_text("This job moves:")
        expect(page.locator(f'#moves tr[data-job-id="{third}"]')).to_contain_text("after resume")
        page.get_by_role("link", name="Cancel").click()
        expect(page).to_have_url(f"{server.url}/limits-view")
        assert limit_of(server, "/limits/default")["paused"] is False
        assert api(server, f"/jobs/{third}")["run_at"] is not None

        # Now confirmed: the kind is paused, its waiting job has no slot; then resumed.
        confirmed(page, pause, "Pause", "Kind default paused")
        assert limit_of(server, "/limits/default")["paused"] is True
        assert api(server, f"/jobs/{third}")["run_at"] is None
        resume = kind_row.get_by_role("button", name="Resume…")
        confirmed(page, resume, "Resume", "Kind default resumed")
        assert limit_of(server, "/limits/default")["paused"] is False
        assert api(server, f"/jobs/{third}")["run_at"] is not None
        assert problems == []


def test_an_objects_own_limit_and_pause_from_its_page(queue: tuple[ServeProcess, Browser]) -> None:
    server, browser = queue
    _, third = queued_jobs(server, 7, 2)
    key = "/limits/default/objects/7"
    with watched_page(browser, f"{server.url}/objects/7") as (page, problems):
        # An object's own limit, from its page: previewed, cancelled, then applied.
        actions = page.locator("section", has=page.locator("#object-actions-title"))
        actions.get_by_label("Window (s)").fill("120")
        actions.get_by_role("button", name="Preview the change").click()
        expect(page.locator("#summary")).to_contain_text("This job moves:")
        expect(page.locator(f'#moves tr[data-job-id="{third}"]')).to_have_count(1)
        page.get_by_role("link", name="Cancel").click()
        assert limit_of(server, key)["set"] is None

        actions.get_by_label("Window (s)").fill("120")
        preview = actions.get_by_role("button", name="Preview the change")
        confirmed(
            page,
            preview,
            "Apply the limit",
            "Object 7 of kind default limit set: 1 start per 120 s",
        )
        assert limit_of(server, key)["set"]["window"] == 120

        # Pause that object alone, resume it, then drop its override.
        pause = page.get_by_role("button", name="Pause this object…")
        confirmed(page, pause, "Pause", "Object 7 of kind default paused")
        assert limit_of(server, key)["paused"] is True
        resume = page.get_by_role("button", name="Resume this object…")
        confirmed(page, resume, "Resume", "Object 7 of kind default resumed")
        assert limit_of(server, key)["paused"] is False
        drop = page.get_by_role("button", name="Drop its own limit…")
        confirmed(page, drop, "Drop the limit", "own limit dropped")
        assert limit_of(server, key)["set"] is None
        assert problems == []


def test_a_cross_site_form_post_is_refused_and_changes_nothing(
    queue: tuple[ServeProcess, Browser],
) -> None:
    server, browser = queue
    with watched_page(browser, server.url) as (page, _):
        _, waiting = queued_jobs(server, 9, 2)
        cancel_url = f"{server.url}/job/{waiting}/cancel"
        # Even knowing this browser's form token, another site's form is refused: its Origin.
        page.goto(f"{server.url}/job/{waiting}")
        token = page.locator('input[name="csrf_token"]').first.get_attribute("value")
        assert token
        evil_page = (
            f'<!doctype html><title>Win a prize</title><form method="post" action="{cancel_url}">'
            f'<input type="hidden" name="csrf_token" value="{token}">'
            '<button type="submit">Claim</button></form>'
        )
        page.route(
            f"{EVIL}/**",
            lambda route: route.fulfill(status=200, content_type="text/html", body=evil_page),
        )
        page.goto(f"{EVIL}/prize")
        with page.expect_navigation() as landed:
            page.get_by_role("button", name="Claim").click()
        response = landed.value
        assert response is not None
        assert response.status == 403
        expect(page.locator("#detail")).to_contain_text("not sent from a paceline page")
        assert job_status(server, waiting) == "PENDING"

        # From this site but without the form token (a script, a replayed request): refused.
        refused = page.request.post(cancel_url, form={}, headers={"Origin": server.url})
        assert refused.status == 403
        assert "token is missing" in refused.text()
        # ...and with a token made up.
        refused = page.request.post(
            cancel_url, form={"csrf_token": "f" * 64}, headers={"Origin": server.url}
        )
        assert refused.status == 403
        assert job_status(server, waiting) == "PENDING"


def tab_reaches(page: Page, targets: Locator, presses: int = 200) -> list[str]:
    """Press Tab from the top of the page; the labels of `targets` that focus never reached."""
    count = targets.count()
    assert count > 0
    for index in range(count):
        targets.nth(index).evaluate("(e, i) => { e.dataset.kb = String(i); }", index)
    page.evaluate("document.activeElement && document.activeElement.blur()")
    reached: set[str] = set()
    for _ in range(presses):
        page.keyboard.press("Tab")
        found = page.evaluate("document.activeElement && document.activeElement.dataset.kb")
        if found is not None:
            reached.add(found)
        if len(reached) == count:
            return []
    return [
        targets.nth(index).inner_text() or targets.nth(index).get_attribute("href") or "?"
        for index in range(count)
        if str(index) not in reached
    ]


def press_tab_until(page: Page, target: Locator, presses: int = 200) -> None:
    """Tab until `target` has the focus."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        if target.evaluate("e => e === document.activeElement"):
            return
    raise AssertionError(f"Tab never reached {target}")


def test_the_keyboard_alone_reaches_and_uses_every_action(
    queue: tuple[ServeProcess, Browser],
) -> None:
    server, browser = queue
    with watched_page(browser, server.url) as (page, problems):
        _, waiting = queued_jobs(server, 11, 2)
        api(server, "/limits/default/objects/11", None)  # readable before any change
        actions = "form.action button, a.button, a[href]"
        for path in ("/", f"/job/{waiting}", "/objects/11", "/limits-view"):
            page.goto(f"{server.url}{path}")
            expect(page.locator("h1")).to_be_visible()
            missed = tab_reaches(page, page.locator(actions).locator("visible=true"))
            assert missed == [], f"{path}: Tab never reaches {missed}"

        # Cancel a job with the keyboard: Tab to the button, Enter.
        page.goto(f"{server.url}/job/{waiting}")
        press_tab_until(page, page.get_by_role("button", name="Cancel this job"))
        page.keyboard.press("Enter")
        expect(flash(page)).to_contain_text(f"Job {waiting} cancelled")
        assert job_status(server, waiting) == "CANCELLED"

        # Pause a kind: Tab to "Pause…", Enter; on the confirmation, Tab to "Cancel", Enter:
        # nothing changed; again, and this time Tab to "Pause", Enter.
        page.goto(f"{server.url}/limits-view")
        pause = page.locator('#kinds tr[data-kind="default"]').get_by_role("button", name="Pause…")
        press_tab_until(page, pause)
        page.keyboard.press("Enter")
        expect(page.locator("#summary")).to_be_visible()
        press_tab_until(page, page.get_by_role("link", name="Cancel"))
        page.keyboard.press("Enter")
        expect(page).to_have_url(f"{server.url}/limits-view")
        assert api(server, "/limits/default")["paused"] is False
        press_tab_until(page, pause)
        page.keyboard.press("Enter")
        press_tab_until(page, page.get_by_role("button", name="Pause", exact=True))
        page.keyboard.press("Enter")
        expect(flash(page)).to_contain_text("Kind default paused")
        assert api(server, "/limits/default")["paused"] is True
        assert problems == []


def test_every_page_without_console_errors_at_desktop_and_phone_width(
    chromium: Path, database_url: str, tmp_path: Path
) -> None:
    """A busy queue's pages: nothing logged to the console, nothing wider than a phone's
    screen (wide tables scroll inside their frame); screenshots on request."""
    window = 120
    asyncio.run(seed_busy_queue(database_url, window))
    with (
        serve(database_url, tmp_path, "noop", window=window, concurrency=0) as server,
        launch(chromium) as browser,
    ):
        failed = api_jobs(server, "?status=FAILED&limit=1")[0]
        key = f"/limits/default/objects/{failed['object_id']}"
        request = urllib.request.Request(
            f"{server.url}{key}",
            data=b'{"window": 60, "limit": 2}',
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=5).close()
        pages = {
            "index": "/",
            "job": f"/job/{failed['id']}",
            "object": f"/objects/{failed['object_id']}",
            "limits": "/limits-view",
        }
        for width_name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            with watched_page(browser, server.url, viewport=viewport) as (page, problems):
                for name, path in pages.items():
                    page.goto(f"{server.url}{path}")
                    expect(page.locator("h1")).to_be_visible()
                    if name in ("index", "object"):
                        expect(page.locator("#refreshed")).to_have_text(re.compile("^Updated "))
                    width = page.evaluate("document.documentElement.scrollWidth")
                    assert width <= viewport["width"], f"{path} is {width}px wide"
                    if os.environ.get("PACELINE_SCREENSHOT"):
                        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                        shot = SCREENSHOTS / f"{name}-{width_name}.png"
                        page.screenshot(path=shot, full_page=True)
                        shrink(shot)
                assert problems == []
        # The index's chart is drawn by the server: a bar per 5 minutes of the last hour.
        with watched_page(browser, server.url) as (page, _):
            chart = page.locator('#charts li[data-kind="default"] svg.chart')
            expect(chart).to_have_count(1)
            expect(chart.locator("g")).to_have_count(12)
            expect(chart.locator("rect.bad")).not_to_have_count(0)


def test_retry_one_job_and_all_shown_after_a_payload_search(
    chromium: Path, database_url: str, tmp_path: Path
) -> None:
    with (
        serve(database_url, tmp_path, "tests.handlers:explode", window=60) as server,
        launch(chromium) as browser,
    ):
        customers = {21: 42, 22: 42, 23: 7}
        jobs = {
            object_id: api(server, "/jobs", {"object_id": object_id, "payload": {"customer": c}})[
                "id"
            ]
            for object_id, c in customers.items()
        }
        for job in jobs.values():
            for _ in range(100):
                if job_status(server, job) == "FAILED":
                    break
                time.sleep(0.1)
            assert job_status(server, job) == "FAILED"

        with watched_page(browser, f"{server.url}/job/{jobs[23]}") as (page, problems):
            # One job, from its page: it takes its object's next free slot, a window after
            # its failed start, and the page says when.
            page.get_by_role("button", name="Retry this job").click()
            expect(flash(page)).to_have_text(
                re.compile(rf"^Job {jobs[23]} retried: next slot \d\d:\d\d:\d\d UTC\.$")
            )
            retried = api(server, f"/jobs/{jobs[23]}")
            assert retried["status"] == "PENDING"
            assert retried["run_at"][11:19] in (flash(page).text_content() or "")
            expect(page.locator("#job-status")).to_contain_text("PENDING")
            expect(page.locator("#attempts tbody tr")).to_have_count(1)

            # Search the list by payload and status; retry all it shows, after a confirmation.
            page.goto(server.url)
            page.get_by_label("Payload contains").fill('{"customer": 42}')
            page.get_by_label("Status").select_option("FAILED")
            expect(page).to_have_url(re.compile(r"status=FAILED"))
            shown = page.locator("#recent tbody tr[data-job-id]")
            expect(shown).to_have_count(2)
            assert {
                int(row) for row in shown.evaluate_all("rows => rows.map(r => r.dataset.jobId)")
            } == {
                jobs[21],
                jobs[22],
            }
            page.get_by_role("button", name="Retry all shown…").click()
            expect(page.get_by_role("heading", name="Confirm: retry 2 jobs")).to_be_visible()
            page.get_by_role("link", name="Cancel").click()
            expect(page.locator("#recent tbody tr[data-job-id]")).to_have_count(2)
            assert {job_status(server, jobs[21]), job_status(server, jobs[22])} == {"FAILED"}

            page.get_by_role("button", name="Retry all shown…").click()
            page.get_by_role("button", name="Retry 2 jobs").click()
            expect(flash(page)).to_contain_text(
                '2 jobs retried (FAILED jobs whose payload contains {"customer":42})'
            )
            assert {job_status(server, jobs[21]), job_status(server, jobs[22])} == {"PENDING"}
            # The filter came back with the page, and nothing it shows has failed any more.
            expect(page.get_by_label("Payload contains")).to_have_value('{"customer": 42}')
            expect(page.locator("#recent tbody tr[data-job-id]")).to_have_count(0)
            assert problems == []
