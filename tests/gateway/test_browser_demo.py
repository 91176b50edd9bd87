"""The shopping demo (examples/shopping) in real headless Chromium, two windows side by side.

The page runs the official Convex browser bundle served by `tape dev` at
/convex.bundle.js; Playwright (Python) drives Debian's Chromium at
/usr/bin/chromium and never downloads a browser. Missing Chromium or a missing
examples/shopping/node_modules make these tests fail (`make chromium`, `make js`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
SHOPPING = ROOT / "examples" / "shopping"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LIVE = 10_000  # ms: how long a change may take to show up in the other window


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium); "
                    f"Playwright must not download its own browser")
    if not (SHOPPING / "node_modules" / "convex" / "dist" / "browser.bundle.js").is_file():
        pytest.fail(f"{SHOPPING / 'node_modules'} has no convex browser bundle: run `make js` "
                    f"(or `cd examples/shopping && npm ci`)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Window:
    """One browser window (its own context, so nothing is shared but the server)."""

    def __init__(self, browser: Browser, name: str) -> None:
        self.name = name
        self.context = browser.new_context(viewport={"width": 1000, "height": 640})
        self.context.set_default_timeout(LIVE)
        self.page: Page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("pageerror", lambda exc: self.problems.append(f"uncaught: {exc}"))
        self.page.on("console", self._console)
        self.page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} {r.failure}"))
        self.page.on("response", lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"))

    def _console(self, message) -> None:  # type: ignore[no-untyped-def]
        # the Convex client logs a failed mutation's error on the console: that one is expected
        if message.type == "error" and "EMPTY_TEXT" not in message.text:
            self.problems.append(f"console error: {message.text}")

    def open(self, url: str) -> "Window":
        self.page.goto(url)
        expect(self.page.locator("body")).to_have_attribute("data-ready", "true")
        expect(self.page.locator("#status")).to_have_attribute("data-state", "connected")
        return self

    def create_list(self, name: str) -> str:
        self.page.fill("#new-list", name)
        self.page.click("#add-list")
        expect(self.page.locator("#current-list-name")).to_have_text(name)
        selected = self.page.locator("[data-testid=list].selected")
        expect(selected).to_have_attribute("data-list-name", name)
        list_id = selected.get_attribute("data-list-id")
        assert list_id
        expect(self.page).to_have_url(re.compile(f"#list={re.escape(list_id)}$"))
        return list_id

    def add_item(self, text: str) -> None:
        self.page.fill("#new-item", text)
        self.page.press("#new-item", "Enter")
        expect(self.item(text)).to_have_count(1)
        expect(self.page.locator("#new-item")).to_have_value("")

    def item(self, text: str):  # type: ignore[no-untyped-def]
        return self.page.locator("[data-testid=item]").filter(
            has=self.page.locator("[data-testid=item-text]", has_text=re.compile(f"^{re.escape(text)}$")))

    def item_texts(self):  # type: ignore[no-untyped-def]
        return self.page.locator("[data-testid=item-text]")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def windows(browser: Browser) -> Iterator[tuple[Window, Window]]:
    a, b = Window(browser, "A"), Window(browser, "B")
    yield a, b
    a.close()
    b.close()


def test_two_windows_share_a_list_live(server_factory, windows: tuple[Window, Window]) -> None:
    server = server_factory(SHOPPING)
    a, b = windows
    a.open(server.url + "/")
    expect(a.page.locator("#no-lists")).to_be_visible()
    list_id = a.create_list("Weekend groceries")
    a.add_item("Milk")

    # B opens A's URL (#list=<id>) and sees the same list and its item
    assert a.page.url.endswith(f"#list={list_id}")
    b.open(a.page.url)
    expect(b.page.locator("#current-list-name")).to_have_text("Weekend groceries")
    expect(b.page.locator(f"[data-testid=list][data-list-id='{list_id}']")).to_have_class(re.compile(r"\bselected\b"))
    expect(b.item_texts()).to_have_text(["Milk"])

    # A adds another item: B sees it without reloading
    a.add_item("Eggs")
    expect(b.item_texts()).to_have_text(["Milk", "Eggs"])

    # B checks Milk off: A sees it done
    b.item("Milk").locator("[data-testid=item-toggle]").check()
    expect(a.item("Milk")).to_have_class(re.compile(r"\bdone\b"))
    expect(a.item("Milk").locator("[data-testid=item-toggle]")).to_be_checked()
    expect(a.item("Eggs")).not_to_have_class(re.compile(r"\bdone\b"))
    # ... and unchecks it again
    b.item("Milk").locator("[data-testid=item-toggle]").uncheck()
    expect(a.item("Milk")).not_to_have_class(re.compile(r"\bdone\b"))
    b.item("Milk").locator("[data-testid=item-toggle]").check()
    expect(a.item("Milk")).to_have_class(re.compile(r"\bdone\b"))

    # A removes it: it disappears from B
    a.item("Milk").locator("[data-testid=item-remove]").click()
    expect(b.item("Milk")).to_have_count(0)
    expect(b.item_texts()).to_have_text(["Eggs"])
    expect(a.item_texts()).to_have_text(["Eggs"])

    # empty (or blank) text is refused with the app's EMPTY_TEXT error, and nothing is added
    a.page.fill("#new-item", "")
    a.page.click("#add-item")
    expect(a.page.locator("#error")).to_have_text("EMPTY_TEXT")
    b.page.fill("#new-item", "   ")
    b.page.press("#new-item", "Enter")
    expect(b.page.locator("#error")).to_have_text("EMPTY_TEXT")
    # the next successful change clears the error
    b.add_item("Bread")
    expect(b.page.locator("#error")).to_have_text("")
    expect(a.item_texts()).to_have_text(["Eggs", "Bread"])
    a.page.screenshot(path=str(Path(server.data_dir).parent / "window-a.png"))

    assert not a.problems and not b.problems, (a.problems, b.problems)


def test_readme_claim_two_windows_at_the_root_url(server_factory, windows: tuple[Window, Window]) -> None:
    """README: "Open http://127.0.0.1:3210 in two browser windows and watch each other's changes appear live"."""
    server = server_factory(SHOPPING)
    a, b = windows
    a.open(server.url + "/")
    b.open(server.url + "/")

    # a list created in A shows up in B's sidebar, newest first
    a.create_list("Hardware store")
    expect(b.page.locator("[data-testid=list]")).to_have_attribute("data-list-name", "Hardware store")
    b_list_id = b.create_list("Pharmacy")
    expect(a.page.locator("[data-testid=list]")).to_have_count(2)
    expect(a.page.locator("[data-testid=list] button")).to_have_text(["Pharmacy", "Hardware store"])

    # pasting a "#list=<id>" link into a window switches it to that list
    a.page.evaluate("id => { location.hash = '#list=' + id; }", b_list_id)
    expect(a.page.locator("#current-list-name")).to_have_text("Pharmacy")
    a.page.locator("[data-testid=list][data-list-name='Hardware store'] button").click()
    expect(a.page.locator("#current-list-name")).to_have_text("Hardware store")

    # A opens B's list from the sidebar; both now edit it and see each other's changes
    a.page.locator(f"[data-testid=list][data-list-id='{b_list_id}'] button").click()
    expect(a.page.locator("#current-list-name")).to_have_text("Pharmacy")
    expect(a.page.locator("#no-items")).to_be_visible()
    b.add_item("Plasters")
    expect(a.item_texts()).to_have_text(["Plasters"])
    a.add_item("Vitamins")
    expect(b.item_texts()).to_have_text(["Plasters", "Vitamins"])
    a.item("Plasters").locator("[data-testid=item-toggle]").check()
    expect(b.item("Plasters")).to_have_class(re.compile(r"\bdone\b"))
    b.item("Vitamins").locator("[data-testid=item-remove]").click()
    expect(a.item_texts()).to_have_text(["Plasters"])

    # switching lists in one window does not disturb the other
    b.page.locator("[data-testid=list][data-list-name='Hardware store'] button").click()
    expect(b.page.locator("#current-list-name")).to_have_text("Hardware store")
    expect(b.page.locator("#no-items")).to_be_visible()
    expect(a.page.locator("#current-list-name")).to_have_text("Pharmacy")
    expect(a.item_texts()).to_have_text(["Plasters"])

    assert not a.problems and not b.problems, (a.problems, b.problems)


def test_windows_resume_after_server_restart(server_factory, windows: tuple[Window, Window]) -> None:
    """Restart the server under both windows: they reconnect and stay live, nothing is lost."""
    server = server_factory(SHOPPING)
    a, b = windows
    a.open(server.url + "/")
    a.create_list("Before restart")
    a.add_item("Apples")
    b.open(a.page.url)
    expect(b.item_texts()).to_have_text(["Apples"])

    assert server.stop() == 0, server.output()
    expect(a.page.locator("#status")).to_have_attribute("data-state", "connecting")
    expect(b.page.locator("#status")).to_have_attribute("data-state", "connecting")
    server.start()
    expect(a.page.locator("#status")).to_have_attribute("data-state", "connected", timeout=20_000)
    expect(b.page.locator("#status")).to_have_attribute("data-state", "connected", timeout=20_000)

    a.add_item("Pears")
    expect(b.item_texts()).to_have_text(["Apples", "Pears"])
    b.item("Apples").locator("[data-testid=item-toggle]").check()
    expect(a.item("Apples")).to_have_class(re.compile(r"\bdone\b"))
    # a freshly opened window sees the same durable state
    b.page.reload()
    expect(b.page.locator("body")).to_have_attribute("data-ready", "true")
    expect(b.item_texts()).to_have_text(["Apples", "Pears"])
    expect(b.item("Apples")).to_have_class(re.compile(r"\bdone\b"))
    # the dropped connection is reported on the console by the client: only count real problems
    real = [p for p in a.problems + b.problems if "WebSocket" not in p and "ERR_CONNECTION_REFUSED" not in p]
    assert not real, real
