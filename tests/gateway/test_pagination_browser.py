"""`usePaginatedQuery` (official `convex/react`) in two real Chromium windows while rows move around.

tests/js/paginated_react_page.mjs is bundled with esbuild into a copy of the feed
test app's public/ directory and served by `tape dev`; Playwright drives Debian's
Chromium at /usr/bin/chromium. Each window loads three pages; rows are then
inserted at the top, deleted inside page 2 and moved across page boundaries over
HTTP, and both windows must show exactly the loaded prefix of the feed, in order,
no row missing and none twice (each page keeps its end: its query journal).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.gateway.test_official_js_client import server_value
from tests.browser import browser  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "tests" / "js"
FEED = ROOT / "tests" / "apps" / "feed"
LIVE = 10_000  # ms



def _feed_app_with_page(app_dir: Path) -> Path:
    """A copy of the feed app whose public/ holds the bundled React page."""
    esbuild = JS_DIR / "node_modules" / ".bin" / "esbuild"
    if not esbuild.exists() or not (JS_DIR / "node_modules" / "react-dom").is_dir():
        pytest.fail(f"{JS_DIR / 'node_modules'} lacks esbuild/react: run `make js` (or `cd tests/js && npm ci`)")
    shutil.copytree(FEED, app_dir, ignore=shutil.ignore_patterns("__pycache__"))
    public = app_dir / "public"
    public.mkdir()
    subprocess.run([str(esbuild), str(JS_DIR / "paginated_react_page.mjs"), "--bundle", "--format=esm",
                    "--log-level=warning", "--define:process.env.NODE_ENV=\"production\"",
                    f"--outfile={public / 'app.js'}"], cwd=JS_DIR, check=True, timeout=120)
    (public / "index.html").write_text(
        '<!doctype html><html><head><link rel="icon" href="data:,"></head><body><div id="root"></div>'
        '<script type="module" src="/app.js"></script></body></html>')
    return app_dir


def _open(browser: Browser, url: str, name: str, problems: list[str]) -> Page:
    context = browser.new_context()
    context.set_default_timeout(LIVE)
    page = context.new_page()
    page.on("pageerror", lambda exc: problems.append(f"{name}: uncaught {exc}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"{name}: console error {m.text}"))
    page.goto(url)
    return page


def test_use_paginated_query_two_windows(browser: Browser, server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = server_factory(_feed_app_with_page(tmp_path / "app"))
    ids = server_value(server.url, "mutation", "feed:seed", {"count": 12})  # ranks 10..120, ids[i] = rank 10(i+1)
    problems: list[str] = []
    windows = [_open(browser, server.url, name, problems) for name in ("left", "right")]

    def shows(length: int) -> None:
        truth = [m["_id"] for m in server_value(server.url, "query", "feed:all")][:length]
        for page in windows:
            expect(page.locator("#feed li")).to_have_text(truth, timeout=LIVE)

    for page in windows:
        expect(page.locator("#status")).to_have_text("CanLoadMore")
        for loaded in (6, 9):
            page.click("#more")
            expect(page.locator("#feed li")).to_have_count(loaded)
            expect(page.locator("#status")).to_have_text("CanLoadMore")
    shows(9)                                                                          # 120..40
    server_value(server.url, "mutation", "feed:send", {"body": "top", "rank": 130.0})
    shows(10)                                                                         # page 1 grew
    server_value(server.url, "mutation", "feed:remove", {"id": ids[7]})             # 80, in page 2
    shows(9)
    server_value(server.url, "mutation", "feed:move", {"id": ids[3], "rank": 125.0})  # 40: page 3 -> page 1
    shows(9)
    server_value(server.url, "mutation", "feed:move", {"id": ids[5], "rank": 5.0})    # 60: below the pages
    shows(8)
    server_value(server.url, "mutation", "feed:move", {"id": ids[2], "rank": 95.0})   # 30: into page 2
    shows(9)
    for rank in (131.0, 132.0, 133.0, 134.0):  # page 1 grows past twice its size: the hook splits it
        server_value(server.url, "mutation", "feed:send", {"body": "burst", "rank": rank})
    shows(13)
    for page in windows:
        page.click("#more")
    shows(16)
    for page in windows:
        assert page.evaluate("window.duplicateRenders") == 0
    assert not problems, problems
