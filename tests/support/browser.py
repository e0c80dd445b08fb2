"""Debian's Chromium, driven headless by Playwright (the system browser: Playwright's own
download cannot work here), for the console's tests. Screenshots go to ``tests/artifacts/``
(ignored by git)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--autoplay-policy=no-user-gesture-required"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "console"


@contextlib.asynccontextmanager
async def chromium(*extra: str) -> AsyncIterator[Any]:
    """A headless Chromium (``extra``: more command-line switches)."""
    from playwright.async_api import async_playwright
    if not Path(CHROMIUM).exists():
        pytest.fail("the console tests need Debian's chromium: make test-deps "
                    "(deploy/scripts/system-deps.sh test) installs it")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, *extra])
        try:
            yield browser
        finally:
            await browser.close()


class PageWatch:
    """What a page did that a test must see: dialogs, console messages, page errors, and
    every request's URL and Referer."""

    def __init__(self, page: Any) -> None:
        self.dialogs: list[str] = []
        self.console: list[str] = []
        self.errors: list[str] = []
        self.requests: list[Any] = []

        async def dismiss(dialog: Any) -> None:
            self.dialogs.append(dialog.message)
            await dialog.dismiss()

        page.on("dialog", dismiss)
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r))

    async def sent(self) -> list[tuple[str, dict[str, str]]]:
        """Each request's URL and the headers that went on the wire."""
        return [(r.url, await r.all_headers()) for r in self.requests]


async def sign_in(page: Any, base: str, token: str, hash_: str = "#/live") -> None:
    """Open the console and type the token."""
    await page.goto(f"{base}/console{hash_}")
    await page.fill("#token", token)
    await page.click("#token-form button")
    await page.wait_for_selector("#nav:not([hidden])")


async def shot(page: Any, name: str) -> Path:
    """A full-page screenshot ``tests/artifacts/console/<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
