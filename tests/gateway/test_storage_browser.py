"""Headless Chromium uploads a canvas drawing through an upload URL and shows it from its get_url URL."""
from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_browser_shows_an_uploaded_image(server_factory) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium`; Playwright must not download its own browser")
    server = server_factory("files")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            expect(page.locator("body")).to_have_attribute("data-shown", "40x30", timeout=10_000)
            storage_id = page.locator("body").get_attribute("data-storage-id")
            assert storage_id
            shown = page.locator("#shown").get_attribute("src")
            assert shown == f"{server.url}/api/storage/{storage_id}"
        finally:
            browser.close()
