"""ConvexReactClient.setAuth in real headless Chromium: two users, one page, each sees only their own.

tests/js/auth_react_page.mjs (React + the official `convex/react`) is bundled
with esbuild into the auth test app's public/ directory and served by
`tape dev`; tokens come from a `TestIssuer` on localhost. Playwright drives
Debian's Chromium at /usr/bin/chromium (never a downloaded browser).
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.gateway.auth_issuer import TestIssuer, auth_app, oidc_provider
from tests.browser import browser  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "tests" / "js"
LIVE = 10_000  # ms



def _build_page(app_dir: Path) -> None:
    """Bundle the React page into APP/public (app.js + index.html)."""
    esbuild = JS_DIR / "node_modules" / ".bin" / "esbuild"
    if not esbuild.exists() or not (JS_DIR / "node_modules" / "react-dom").is_dir():
        pytest.fail(f"{JS_DIR / 'node_modules'} lacks esbuild/react: run `make js` (or `cd tests/js && npm ci`)")
    public = app_dir / "public"
    public.mkdir(exist_ok=True)
    subprocess.run([str(esbuild), str(JS_DIR / "auth_react_page.mjs"), "--bundle", "--format=esm",
                    "--log-level=warning", "--define:process.env.NODE_ENV=\"production\"",
                    f"--outfile={public / 'app.js'}"], cwd=JS_DIR, check=True, timeout=120)
    (public / "index.html").write_text(
        '<!doctype html><html><head><link rel="icon" href="data:,"></head><body>'
        '<p>auth: <span id="auth">?</span></p><div id="root"></div>'
        '<script type="module" src="/app.js"></script></body></html>')


def _open(browser: Browser, url: str, issuer: TestIssuer, sub: str, name: str, problems: list[str]) -> Page:
    context = browser.new_context()
    context.set_default_timeout(LIVE)
    page = context.new_page()
    page.on("pageerror", lambda exc: problems.append(f"{sub}: uncaught {exc}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"{sub}: console error {m.text}"))
    page.goto(f"{url}/?issuer={quote(issuer.url)}&sub={sub}&name={quote(name)}")
    return page


def test_react_client_set_auth_two_users_in_chromium(browser: Browser, server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with TestIssuer() as issuer:
        app_dir = auth_app(tmp_path / "app", [oidc_provider(issuer)])
        _build_page(app_dir)
        server = server_factory(app_dir)
        problems: list[str] = []
        alice = _open(browser, server.url, issuer, "alice", "Alice", problems)
        bob = _open(browser, server.url, issuer, "bob", "Bob", problems)
        expect(alice.locator("#me")).to_have_text(f"Alice <{issuer.url}|alice>")
        expect(bob.locator("#me")).to_have_text(f"Bob <{issuer.url}|bob>")
        expect(alice.locator("#auth")).to_have_text("true")
        alice.click("#post")
        bob.click("#post")
        expect(alice.locator("#mine li")).to_have_text(["note of alice"])
        expect(bob.locator("#mine li")).to_have_text(["note of bob"])
        alice.click("#logout")  # clearAuth: anonymous again, and the notes are no longer shown
        expect(alice.locator("#me")).to_have_text("anonymous")
        expect(alice.locator("#mine li")).to_have_count(0)
        expect(bob.locator("#mine li")).to_have_text(["note of bob"])
        assert alice.evaluate("window.tokenFetches") >= 1
        assert not problems, problems
