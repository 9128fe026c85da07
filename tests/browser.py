"""What the browser tests share: a headless Debian Chromium driven by playwright's sync API, a
real `paceline serve` behind it, and the page opened as a user opens it."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright

from tests.support import ServeProcess

CHROMIUM = Path("/usr/bin/chromium")
# The network is closed: nothing may try to reach out, and no browser is downloaded.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1200, "height": 900}


def require_chromium() -> Path:
    """Debian's Chromium (playwright's own download cannot work here); skip without it."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (CI does)")
    return CHROMIUM


@contextmanager
def launch(executable: Path) -> Iterator[Browser]:
    """A headless Chromium, driven by playwright's sync API.

    The sync API keeps its own event loop marked as running while it is open, so it starts only
    after the asyncio work (async fixtures, `wait_ready`) and is closed before their teardown.
    """
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def serve(
    database_url: str,
    tmp_path: Path,
    handler: str,
    *,
    window: float = 1,
    concurrency: int = 2,
    handlers: str = "",
    env: dict[str, str] | None = None,
) -> Iterator[ServeProcess]:
    """A `paceline serve` child (a 1 s window by default); it must stop cleanly (exit 0).

    `handlers`: more kinds, as PACELINE_HANDLERS says them (`handler` runs `default`); `env`:
    more variables (PACELINE_TOKENS...).
    """
    server = ServeProcess(
        {
            "DATABASE_URL": database_url,
            "PACELINE_RATE_WINDOW": f"{window:g}",
            "PACELINE_HANDLER": handler,
            "PACELINE_HANDLERS": handlers,
            "PACELINE_SLEEP_SECONDS": "0.5",
            "PACELINE_CONCURRENCY": str(concurrency),
            "PACELINE_IDLE_POLL": "1",
            # A failing job fails at once: the page shows failures, not the retry policy.
            "PACELINE_MAX_ATTEMPTS": "1",
            **(env or {}),
        },
        log_path=tmp_path / "serve.log",
    )
    try:
        asyncio.run(server.wait_ready())
        yield server
    finally:
        status = server.terminate()
        assert status == 0, f"paceline exited with {status}:\n{server.log()}"


@contextmanager
def open_page(browser: Browser, url: str, **context: Any) -> Iterator[tuple[Page, list[str]]]:
    """A page, loaded once; yields it with the messages of any dialog it opened.

    `context` sets up the browser context (viewport, timezone_id, locale...).
    """
    page = browser.new_page(**{"viewport": DESKTOP, **context})
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    try:
        page.goto(url)
        expect(page.locator("h1")).to_be_visible()
        yield page, dialogs
    finally:
        page.close()


def api(server: ServeProcess, path: str, body: Any = None, *, token: str | None = None) -> Any:
    """Call the JSON API as another client would (Python keeps 64-bit ids exact); `token`:
    as a bearer token."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{server.url}{path}", data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def api_jobs(server: ServeProcess, query: str = "") -> list[dict[str, Any]]:
    """`GET /jobs` as JSON."""
    jobs: list[dict[str, Any]] = api(server, f"/jobs{query}")["jobs"]
    return jobs
