"""The dashboard in a real headless Chromium: it updates by itself, explains an object's waits,
shows failures as text, reads on a phone, and summarizes a busy queue correctly.

PACELINE_SCREENSHOT=1 also saves docs/dashboard.png (a queue of some 350 jobs) and
docs/timeline.png.
"""

from __future__ import annotations

import asyncio
import os
import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Page, expect

from tests.browser import api, launch, open_page, serve
from tests.queue_data import DEMO_ERRORS, seed_busy_queue
from tests.support import ROOT

pytestmark = pytest.mark.browser

SCREENSHOTS = ROOT / "docs"
PHONE = {"width": 375, "height": 740}


def wait_for_first_update(page: Page) -> None:
    expect(page.locator("#refreshed")).to_have_text(re.compile(r"^Updated "))
    expect(page.locator("#count-PENDING")).not_to_have_text("…")


def shown_time(moment: datetime, zone: str) -> str:
    """How en-US shows a time of day in `zone`: 2:05:09 PM."""
    return moment.astimezone(ZoneInfo(zone)).strftime("%-I:%M:%S %p")


def text_of(page: Page, selector: str) -> str:
    # Chromium may put a narrow no-break space before AM/PM.
    return (page.locator(selector).text_content() or "").replace("\u202f", " ")


def test_a_job_submitted_through_the_api_appears_within_two_seconds(
    chromium: Path, database_url: str, tmp_path: Path
) -> None:
    zone = "Asia/Kolkata"  # UTC+5:30: a time shown in UTC would be visibly wrong
    with (
        serve(database_url, tmp_path, "noop", window=60, concurrency=0) as server,
        launch(chromium) as browser,
        open_page(browser, server.url, timezone_id=zone, locale="en-US") as (page, dialogs),
    ):
        loads: list[str] = []
        page.on("load", lambda _: loads.append(page.url))
        wait_for_first_update(page)
        expect(page.locator("#count-PENDING")).to_have_text("0")

        job = api(server, "/jobs", {"object_id": 77})

        new_row = page.locator(f'#recent tbody tr[data-job-id="{job["id"]}"]')
        expect(new_row).to_have_count(1, timeout=2_000)
        expect(page.locator("#count-PENDING")).to_have_text("1", timeout=2_000)
        expect(new_row.locator("td").nth(1)).to_have_text("default")
        expect(new_row.locator("td").nth(3)).to_have_text("PENDING")
        # The viewer's time zone in the cell, the UTC value on hover.
        runs_at = new_row.locator("td").nth(4)
        assert runs_at.get_attribute("title") == job["run_at"]
        expected = shown_time(datetime.fromisoformat(job["run_at"]), zone)
        assert (runs_at.text_content() or "").replace("\u202f", " ") == expected
        # The oldest wait is this job, and its object links to the object's timeline.
        expect(page.locator("#oldest-note")).to_contain_text(
            f"job {job['id']} · kind default · object 77"
        )
        assert (
            new_row.get_by_role("link", name="77", exact=True).get_attribute("href")
            == "/objects/77"
        )
        assert loads == []
        assert dialogs == []


def test_the_timeline_shows_the_reserved_slot_and_why_it_waits(
    chromium: Path, database_url: str, tmp_path: Path
) -> None:
    zone = "America/New_York"
    with (
        serve(database_url, tmp_path, "noop", window=60) as server,
        launch(chromium) as browser,
        open_page(browser, server.url, timezone_id=zone, locale="en-US") as (page, _dialogs),
    ):
        first = api(server, "/jobs", {"object_id": 7})
        second = api(server, "/jobs", {"object_id": 7})
        # The first runs at once; the second holds the slot a window later.
        wait_for_first_update(page)
        first_row = page.locator(f'#recent tbody tr[data-job-id="{first["id"]}"]')
        expect(first_row.locator("td").nth(3)).to_have_text("SUCCESS", timeout=5_000)

        first_row.get_by_role("link", name="7", exact=True).click()
        expect(
            page.get_by_role("heading", name="Object 7, kind default", exact=True)
        ).to_be_visible()
        waiting = page.locator(f'#waiting tbody tr[data-job-id="{second["id"]}"]')
        expect(waiting).to_have_count(1)
        slot = waiting.locator("td").nth(2)
        # The slot as it stands: the one POST answered, unless the first started more than
        # 50 ms late and pushed it back (a cluster's starts can be: docs/citus.md).
        run_at = api(server, f"/jobs/{second['id']}")["run_at"]
        assert datetime.fromisoformat(run_at) >= datetime.fromisoformat(second["run_at"])
        assert slot.get_attribute("title") == run_at
        started = api(server, f"/jobs/{first['id']}")["started_at"]
        reason = (
            "window: 1 start in the last 60 s (at most 1), the last at "
            f"{shown_time(datetime.fromisoformat(started), zone)}; "
            f"slot {shown_time(datetime.fromisoformat(run_at), zone)}"
        )
        expect(waiting.locator("td.reason")).to_have_text(reason)
        # Its past run, and the slot a new job would get: a window after the second's.
        run = page.locator(f'#runs tbody tr[data-job-id="{first["id"]}"]')
        expect(run.locator("td").nth(5)).to_have_text("SUCCESS")
        expect(page.locator("#waiting-summary")).to_have_text("1 job waiting.")


def test_a_handler_error_is_listed_as_text_not_markup(
    chromium: Path, database_url: str, tmp_path: Path
) -> None:
    with (
        serve(database_url, tmp_path, "tests.handlers:explode") as server,
        launch(chromium) as browser,
        open_page(browser, server.url) as (page, dialogs),
    ):
        job = api(server, "/jobs", {"object_id": 13})
        failure = page.locator(f'#failures tbody tr[data-job-id="{job["id"]}"]')
        expect(failure).to_have_count(1, timeout=6_000)

        markup = f"<script>alert('job {job['id']}')</script>"
        expect(failure.locator("td.error")).to_have_text(f"RuntimeError: {markup} upstream said no")
        expect(failure.get_by_role("link", name="13", exact=True)).to_be_visible()
        expect(page.locator("#failures script")).to_have_count(0)
        expect(page.locator("#count-FAILED")).to_have_text(re.compile(r"^(≈ \d+|—)$"))
        assert dialogs == []


def test_a_busy_queue_is_summarized_correctly_and_reads_on_a_phone(
    chromium: Path, database_url: str, tmp_path: Path
) -> None:
    window = 120
    counts = asyncio.run(seed_busy_queue(database_url, window))
    assert counts["total"] > 300
    with (
        serve(database_url, tmp_path, "noop", window=window, concurrency=0) as server,
        launch(chromium) as browser,
    ):
        with open_page(browser, server.url) as (page, dialogs):
            wait_for_first_update(page)
            check_the_summary(page, counts)
            check_failures_and_replicas(page)
            check_the_job_filter(page)
            assert dialogs == []
            if os.environ.get("PACELINE_SCREENSHOT"):
                page.screenshot(path=SCREENSHOTS / "dashboard.png", full_page=True)
            check_a_busy_timeline(page)

        with open_page(browser, f"{server.url}/?status=PENDING", viewport=PHONE) as (phone, _):
            check_phone_width(phone)


def check_the_summary(page: Page, counts: dict[str, int]) -> None:
    """Exact live counts, the last minutes, estimated totals."""
    expect(page.locator("#count-PENDING")).to_have_text(str(counts["PENDING"]))
    expect(page.locator("#count-PROCESSING")).to_have_text(str(counts["PROCESSING"]))
    expect(page.locator("#due")).to_have_text(str(counts["due"]))
    expect(page.locator("#waiting")).to_have_text(str(counts["PENDING"] - counts["due"]))
    expect(page.locator("#due-note")).to_contain_text("most overdue: job")
    expect(page.locator("#minutes-summary")).to_have_text("230 finished: 213 succeeded, 17 failed.")
    expect(page.locator("#minutes li")).to_have_count(15)
    # Estimated all-time totals, from the statistics of the analyzed table.
    expect(page.locator("#count-SUCCESS")).to_have_text(re.compile(r"^≈ 2\d\d$"))


def check_failures_and_replicas(page: Page) -> None:
    """Newest failures, every error as text (one tries to be markup); the dead replica."""
    expect(page.locator("#failures tbody tr")).to_have_count(10)
    errors = page.locator("#failures td.error").all_text_contents()
    assert set(errors) <= set(DEMO_ERRORS)
    assert DEMO_ERRORS[3] in errors
    expect(page.locator("#failures img")).to_have_count(0)
    replicas = page.locator("#replicas tbody tr")
    expect(replicas).to_have_count(3)
    expect(replicas.filter(has_text="paceline-3").locator("td").first).to_have_text("dead")
    expect(replicas.filter(has_text="paceline-1").locator("td").first).to_have_text("alive")
    expect(replicas.filter(has_text="paceline-1").locator("td").last).to_have_text("3 of 8")


def check_the_job_filter(page: Page) -> None:
    """The job list filters by status, and the filter is in the address."""
    page.get_by_label("Status").select_option("FAILED")
    expect(page).to_have_url(re.compile(r"\?status=FAILED$"))
    statuses = page.locator("#recent tbody td:nth-child(4)")
    expect(statuses).to_have_count(17)
    assert set(statuses.all_text_contents()) == {"FAILED"}
    page.get_by_role("button", name="Show all").click()
    expect(statuses).to_have_count(20)


def check_a_busy_timeline(page: Page) -> None:
    """A failed job's object: its runs (a window apart) and its queue, each wait explained."""
    failure = page.locator("#failures tbody tr").filter(has_text=DEMO_ERRORS[2]).first
    object_id = failure.locator("td").nth(2).text_content()
    failure.get_by_role("link", name=object_id, exact=True).click()
    expect(page.get_by_role("heading", name=f"Object {object_id}, kind default")).to_be_visible()
    runs = page.locator("#runs tbody tr")
    expect(runs.filter(has_text=DEMO_ERRORS[2])).to_have_count(1)
    expect(runs.filter(has_text="over the limit")).to_have_count(0)
    reasons = page.locator("#waiting td.reason")
    expect(reasons.first).to_have_text(re.compile(r"^window: \d+ starts? in the last .+; slot "))
    expect(reasons.nth(1)).to_have_text(re.compile(r"^after job \d+ \(slot "))
    if os.environ.get("PACELINE_SCREENSHOT"):
        page.screenshot(path=SCREENSHOTS / "timeline.png", full_page=True)


def check_phone_width(phone: Page) -> None:
    """Nothing runs off the side at phone width; wide tables scroll within themselves."""
    wait_for_first_update(phone)
    expect(phone.get_by_label("Status")).to_have_value("PENDING")
    expect(phone.locator("#recent tbody td:nth-child(4)").first).to_have_text("PENDING")
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width}px wide on a 375px screen"
    for control in (phone.get_by_role("button", name="Submit"), phone.locator("#queue")):
        box = control.bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= PHONE["width"]
    if os.environ.get("PACELINE_SCREENSHOT"):
        phone.screenshot(path=SCREENSHOTS / "dashboard-phone.png", full_page=True)
