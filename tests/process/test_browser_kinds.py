"""Jobs that carry work, on the page in a real headless Chromium: a job's kind wherever the job
is shown, the job list filtered by kind, an object's timeline per kind, and payloads and results
shown as text (pretty-printed, a long one collapsed) however hostile they are.

Jobs are submitted through the JSON API, as another client would; the page is only read and
clicked.
"""

from __future__ import annotations

import json
import re
import urllib.error
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.browser import api, launch, open_page, serve

pytestmark = pytest.mark.browser

# Markup that would run (an alert, a flag on window) if any of it were parsed as HTML.
HOSTILE = "<img src=x onerror=alert(1)><script>window.pwned=1</script>"
# Beyond 2**53: a JavaScript Number would show ...992.
BIG = 2**53 + 1
# A job of the test handlers takes no time; a 1 s window and the page's 1 s refresh.
SETTLE_MS = 6_000

# Columns of the "Jobs" table.
KIND, OBJECT, STATUS = 1, 2, 3


def job_row(page: Page, job_id: int) -> Locator:
    return page.locator(f'#recent tbody tr[data-job-id="{job_id}"]')


def look_up(page: Page, job_id: int) -> Locator:
    """Look a job up through the form; the result, once it is this job's."""
    page.get_by_label("Job id").fill(str(job_id))
    page.get_by_role("button", name="Look up").click()
    found = page.locator("#lookup-result")
    expect(found).to_contain_text(f"job {job_id} · ")
    return found


def test_hostile_payloads_show_as_text_and_long_ones_collapse(
    chromium: Path, database_url: str, tmp_path: Path
) -> None:
    short = {"x": HOSTILE, "n": BIG}
    long = {"items": [f"<i>item {n}</i>" for n in range(40)], "x": HOSTILE}
    with (
        serve(database_url, tmp_path, "tests.handlers:echo") as server,
        launch(chromium) as browser,
        open_page(browser, server.url, locale="en-US") as (page, dialogs),
    ):
        # A kind cannot carry markup: the API refuses it, so no page ever shows one.
        with pytest.raises(urllib.error.HTTPError) as refused:
            api(server, "/jobs", {"object_id": 7, "kind": "<script>alert(1)</script>"})
        assert refused.value.code == 422
        first = api(server, "/jobs", {"object_id": 7, "payload": short})["id"]
        second = api(server, "/jobs", {"object_id": 8, "payload": long})["id"]
        for job_id in (first, second):
            expect(job_row(page, job_id).locator("td").nth(STATUS)).to_have_text(
                "SUCCESS", timeout=SETTLE_MS
            )

        # A short payload and its result (echo returns what it got) show in full, as text,
        # pretty-printed as stored; 2**53 + 1 keeps its last digit.
        stored = api(server, f"/jobs/{first}")
        found = look_up(page, first)
        expect(found).to_contain_text(f"job {first} · kind default · object 7 · SUCCESS")
        for field in ("payload", "result"):
            shown = found.locator(f'div[data-field="{field}"] pre')
            expect(shown).to_be_visible()
            assert shown.text_content() == json.dumps(stored[field], indent=2)
        assert f'"n": {BIG},' in (found.text_content() or "")
        assert f'"x": "{HOSTILE}"' in (found.text_content() or "")
        expect(found.locator("details")).to_have_count(0)

        # A long one: its beginning on one line, the whole of it pretty a click away.
        stored = api(server, f"/jobs/{second}")
        found = look_up(page, second)
        collapsed = found.locator('details[data-field="payload"]')
        compact = json.dumps(stored["payload"], separators=(",", ":"))
        assert len(compact) > 200
        expect(collapsed.locator("summary")).to_have_text(
            f"Payload, {len(compact):,} characters: {compact[:200]}…"
        )
        expect(collapsed.locator("pre")).to_be_hidden()
        collapsed.locator("summary").click()
        expect(collapsed.locator("pre")).to_be_visible()
        assert collapsed.locator("pre").text_content() == json.dumps(stored["payload"], indent=2)
        # Its result holds the payload too: as long, as collapsed.
        expect(found.locator('details[data-field="result"] pre')).to_be_hidden()

        # Shown, never run: no element was made of the payloads, no alert opened, no script
        # set its flag.
        expect(page.locator("#lookup-result :is(img, script, i)")).to_have_count(0)
        assert page.evaluate("typeof window.pwned") == "undefined"
        assert dialogs == []


def test_kinds_are_shown_filtered_and_timed_apart(
    chromium: Path, database_url: str, tmp_path: Path
) -> None:
    with (
        serve(
            database_url, tmp_path, "tests.handlers:echo", handlers="notify=tests.handlers:shout"
        ) as server,
        launch(chromium) as browser,
        open_page(browser, server.url) as (page, dialogs),
    ):
        plain = api(server, "/jobs", {"object_id": 7})["id"]
        notify = api(server, "/jobs", {"object_id": 7, "kind": "notify", "payload": {"text": "hi"}})
        notify_row = job_row(page, notify["id"])
        expect(notify_row.locator("td").nth(STATUS)).to_have_text("SUCCESS", timeout=SETTLE_MS)
        expect(job_row(page, plain).locator("td").nth(KIND)).to_have_text("default")
        expect(notify_row.locator("td").nth(KIND)).to_have_text("notify")
        found = look_up(page, notify["id"])
        expect(found).to_contain_text(f"job {notify['id']} · kind notify · object 7 · SUCCESS")
        expect(found.locator('[data-field="result"] pre')).to_have_text('"HI"')

        # The list filtered by kind, the filter in the address; a name no kind can have is
        # refused next to the form.
        page.get_by_label("Kind").fill("notify")
        page.get_by_role("button", name="Filter").click()
        expect(page).to_have_url(re.compile(r"\?kind=notify$"))
        expect(page.locator("#recent tbody tr")).to_have_count(1)
        expect(notify_row).to_have_count(1)
        page.get_by_label("Kind").fill("<b>")
        page.get_by_role("button", name="Filter").click()
        expect(page.locator("#filter-result")).to_have_text(re.compile(r"^Refused: \S"))
        expect(page.locator("#recent tbody tr")).to_have_count(1)
        page.get_by_role("button", name="Show all").click()
        expect(page.locator("#recent tbody tr")).to_have_count(2)

        # Object 7 has a timeline per kind; the link of a notify job opens notify's.
        notify_row.get_by_role("link", name="7", exact=True).click()
        expect(
            page.get_by_role("heading", name="Object 7, kind notify", exact=True)
        ).to_be_visible()
        runs = page.locator("#runs tbody tr[data-job-id]")
        expect(runs).to_have_count(1)
        expect(page.locator(f'#runs tbody tr[data-job-id="{notify["id"]}"]')).to_have_count(1)
        # Switching the kind shows the other timeline of the same object.
        page.get_by_label("Kind").fill("default")
        page.get_by_role("button", name="Show").click()
        expect(page).to_have_url(re.compile(r"/objects/7\?kind=default$"))
        expect(
            page.get_by_role("heading", name="Object 7, kind default", exact=True)
        ).to_be_visible()
        expect(runs).to_have_count(1)
        expect(page.locator(f'#runs tbody tr[data-job-id="{plain}"]')).to_have_count(1)
        assert dialogs == []
