"""A live search box in real headless Chromium on the official Convex browser client."""
from __future__ import annotations

import shutil
from pathlib import Path

from aiohttp.test_utils import TestServer
from playwright.async_api import async_playwright, expect

from engine.app import App
from gateway.config import ServerConfig
from gateway.node import Node
from gateway.server import build_app

from tests.gateway.test_browser_demo import CHROMIUM, CHROMIUM_ARGS, SHOPPING

APP = Path(__file__).resolve().parents[1] / "apps" / "search"


async def test_live_search_box(tmp_path: Path) -> None:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make chromium`"
    bundle = SHOPPING / "node_modules"
    assert (bundle / "convex" / "dist" / "browser.bundle.js").is_file(), "run `make js` for the convex bundle"
    app_dir = tmp_path / "app"
    shutil.copytree(APP, app_dir)
    (app_dir / "node_modules").symlink_to(bundle)
    node = Node(ServerConfig(app_dir=app_dir, data_dir=tmp_path / "data"), App.load(app_dir))
    server = TestServer(build_app(node), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/"))
    try:
        await node.runtime.run_mutation("messages:send", {"body": "hello from python", "channel": "py"})
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(url)
                results = page.locator("[data-testid=result]")
                await page.fill("#q", "hel")  # the last term matches as a prefix
                await expect(results).to_have_text(["hello from python"], timeout=10_000)
                await page.fill("#body", "help wanted")  # posted from the page: appears live
                await page.click("#send")
                await expect(results).to_have_count(2, timeout=10_000)
                # A write from elsewhere that matches appears; one that does not match changes nothing.
                await node.runtime.run_mutation("messages:send", {"body": "quiet", "channel": "py"})
                await node.runtime.run_mutation("messages:send", {"body": "hello again", "channel": "py"})
                await expect(results).to_have_count(3, timeout=10_000)
                await page.fill("#q", "hello again")
                await expect(results.first).to_have_text("hello again", timeout=10_000)
                assert errors == [] and await page.locator("#error").text_content() == ""
            finally:
                await browser.close()
    finally:
        await server.close()
