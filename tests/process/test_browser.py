"""The HTML page `/` in a real headless Chromium, against a real `paceline serve` process.

Everything is done as a user would: typing into the forms, clicking, reading the page. The
JSON API is only read (never written) to check what a click did or did not create.
The dashboard's own parts (live overview, timeline, failures) are in test_browser_dashboard.py.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.browser import api_jobs, launch, open_page, serve

pytestmark = pytest.mark.browser

# Longer than a job (0.5 s) plus its wait (a 1 s window) plus the page's 1 s refresh.
SETTLE_MS = 6_000
# Beyond 2**53: a JavaScript Number would round it to ...992, another object.
BIG_OBJECT_ID = 2**53 + 1
INT64_MAX = 2**63 - 1

ACCEPTED = re.compile(
    r"^Accepted: job (\d+) · kind default · object (-?\d+) · PENDING · accepted .+ · runs at "
)

# Columns of the "Jobs" table.
ID, KIND, OBJECT, STATUS, RUNS_AT, STARTED, DURATION, ERROR = range(8)


def submit(page: Page, object_id: str) -> None:
    page.get_by_label("Object id", exact=True).fill(object_id)
    page.get_by_role("button", name="Submit").click()


def submit_accepted(page: Page, object_id: int) -> int:
    """Submit through the form; wait for this submission's "Accepted"; return the job id."""
    before = page.locator("#submit-result").text_content()
    submit(page, str(object_id))
    result = page.locator("#submit-result")
    expect(result).not_to_have_text(before or "")
    expect(result).to_have_text(ACCEPTED)
    match = ACCEPTED.match(result.text_content() or "")
    assert match is not None
    assert match.group(2) == str(object_id)
    return int(match.group(1))


def row(page: Page, job_id: int) -> Locator:
    """The "Jobs" row of one job."""
    return page.locator("#recent tbody tr").filter(
        has=page.locator("td:first-child", has_text=re.compile(rf"^{job_id}$"))
    )


def cell(page: Page, job_id: int, column: int) -> Locator:
    return row(page, job_id).locator("td").nth(column)


def runs_at(page: Page, job_id: int) -> datetime:
    """The exact "Runs at" of a row (its tooltip; the cell shows it to the second)."""
    title = cell(page, job_id, RUNS_AT).get_attribute("title")
    assert title, f"job {job_id} has no run_at tooltip"
    return datetime.fromisoformat(title)


def look_up(page: Page, job_id: str) -> Locator:
    page.get_by_label("Job id").fill(job_id)
    page.get_by_role("button", name="Look up").click()
    return page.locator("#lookup-result")


def test_submit_watch_look_up_and_refuse(chromium: Path, database_url: str, tmp_path: Path) -> None:
    with (
        serve(database_url, tmp_path, "sleep") as server,
        launch(chromium) as browser,
        open_page(browser, server.url) as (page, dialogs),
    ):
        loads: list[str] = []
        page.on("load", lambda _: loads.append(page.url))

        # A job for object 7 shows up in the table by itself and turns SUCCESS by itself.
        first = submit_accepted(page, 7)
        expect(row(page, first)).to_have_count(1)
        expect(cell(page, first, OBJECT)).to_have_text("7")
        expect(cell(page, first, STATUS)).to_have_text("SUCCESS", timeout=SETTLE_MS)
        expect(cell(page, first, DURATION)).to_have_text(re.compile(r"^0\.\d{3} s$"))

        # A second job for the same object waits for the window: it runs a second later.
        second = submit_accepted(page, 7)
        assert second > first
        expect(row(page, second)).to_have_count(1)
        assert runs_at(page, second) - runs_at(page, first) >= timedelta(seconds=1)
        first_shown = cell(page, first, RUNS_AT).text_content()
        expect(cell(page, second, RUNS_AT)).not_to_have_text(first_shown or "")
        expect(cell(page, second, STATUS)).to_have_text("SUCCESS", timeout=SETTLE_MS)

        # An id beyond JavaScript's exact integers is the object typed, not a rounded neighbour.
        big = submit_accepted(page, BIG_OBJECT_ID)
        expect(cell(page, big, OBJECT)).to_have_text(str(BIG_OBJECT_ID))
        assert [job["id"] for job in api_jobs(server, f"?object_id={BIG_OBJECT_ID}")] == [big]

        # What cannot be an object id is refused on the page, and creates no job.
        ids_before = [job["id"] for job in api_jobs(server)]
        field = page.get_by_label("Object id", exact=True)
        submit(page, "1.5")
        expect(page.locator("#submit-result")).to_have_text(re.compile(r"^Refused: \S"))
        browser_says = field.evaluate("input => input.validationMessage")
        assert browser_says
        expect(page.locator("#submit-result")).to_have_text(f"Refused: {browser_says}")
        submit(page, str(INT64_MAX + 1))
        expect(page.locator("#submit-result")).to_have_text(
            re.compile(r"^Refused: object_id must be between .*9223372036854775807")
        )
        assert [job["id"] for job in api_jobs(server)] == ids_before

        # Looking a job up shows it; an unknown id says there is no such job.
        expect(cell(page, big, STATUS)).to_have_text("SUCCESS", timeout=SETTLE_MS)
        expect(look_up(page, str(first))).to_have_text(
            re.compile(
                rf"^job {first} · kind default · object 7 · SUCCESS · accepted .+ · runs at "
            )
        )
        expect(look_up(page, str(big))).to_have_text(
            re.compile(rf"^job {big} · kind default · object {BIG_OBJECT_ID} · SUCCESS")
        )
        expect(look_up(page, "999999")).to_have_text("There is no job 999999.")

        # All of it happened on the page as first loaded: no reload, no dialog.
        assert loads == []
        assert dialogs == []
        expect(page.locator("#refreshed")).to_have_text(re.compile(r"^Updated "))


def test_handler_error_is_shown_as_text(chromium: Path, database_url: str, tmp_path: Path) -> None:
    with (
        serve(database_url, tmp_path, "tests.handlers:explode") as server,
        launch(chromium) as browser,
        open_page(browser, server.url) as (page, dialogs),
    ):
        job = submit_accepted(page, 7)
        expect(cell(page, job, STATUS)).to_have_text("FAILED", timeout=SETTLE_MS)

        markup = f"<script>alert('job {job}')</script>"
        expect(cell(page, job, ERROR)).to_have_text(f"RuntimeError: {markup} upstream said no")
        expect(look_up(page, str(job))).to_have_text(
            re.compile(
                rf"^job {job} · kind default · object 7 · FAILED · .* · error: RuntimeError: "
            )
        )
        expect(page.locator("#lookup-result")).to_contain_text(markup)
        # Shown, not run: no element was made from the text, and no alert ever opened.
        expect(page.locator("#recent script")).to_have_count(0)
        expect(page.locator("#lookup-result script")).to_have_count(0)
        assert dialogs == []
