"""CORS on the public HTTP API (gateway/cors.py), never on admin or internal routes.

Plain HTTP checks of the preflight and of the headers on actual responses, for
the default (any origin) and for a configured list of origins; then the
official `ConvexHttpClient` (npm `convex` browser bundle) in headless Chromium,
from a page served on another origin (another port), calling Tape.
"""
from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest
from playwright.sync_api import sync_playwright

from gateway.cors import ALLOW_HEADERS, PUBLIC_PATHS
from tests.gateway.served_node import served_node
from tests.server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "tests" / "apps"
BUNDLES = [ROOT / "tests" / "js" / "node_modules" / "convex" / "dist" / "browser.bundle.js",
           ROOT / "examples" / "shopping" / "node_modules" / "convex" / "dist" / "browser.bundle.js"]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGE_ORIGIN = "http://page.example"
PREFLIGHT = {"Origin": PAGE_ORIGIN, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type,convex-client,authorization"}


def cors_headers(resp: aiohttp.ClientResponse) -> dict[str, str]:
    return {k: v for k, v in resp.headers.items() if k.lower().startswith("access-control-")}


async def test_preflight_and_responses_on_every_public_route(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data") as (node, url):
        async with aiohttp.ClientSession() as s:
            for path in sorted(PUBLIC_PATHS):
                async with s.options(url + path, headers=PREFLIGHT) as resp:
                    assert resp.status == 204, path
                    headers = cors_headers(resp)
                    assert headers["Access-Control-Allow-Origin"] == "*"
                    assert "POST" in headers["Access-Control-Allow-Methods"]
                    allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
                    assert {"content-type", "authorization", "convex-client", "idempotency-key"} <= allowed
                    assert int(headers["Access-Control-Max-Age"]) > 0
                    assert "Vary" not in resp.headers
            calls = [("/api/query", {"path": "lists:all_lists", "args": {}}, 200),
                     ("/api/mutation", {"path": "lists:create", "args": {"name": "x"}}, 200),
                     ("/api/query", {"path": "lists:nope", "args": {}}, 560),
                     ("/api/query_ts", {}, 200),
                     ("/api/action", {"path": "lists:create", "args": {"name": "x"}}, 560)]
            for path, body, status in calls:
                async with s.post(url + path, json=body, headers={"Origin": PAGE_ORIGIN}) as resp:
                    assert resp.status == status, (path, await resp.text())
                    assert resp.headers["Access-Control-Allow-Origin"] == "*"
            async with s.post(url + "/api/query", data=b"{nope", headers={"Origin": PAGE_ORIGIN}) as resp:
                assert resp.status == 400 and resp.headers["Access-Control-Allow-Origin"] == "*"
            async with s.get(url + "/api/query", headers={"Origin": PAGE_ORIGIN}) as resp:
                assert resp.status == 405 and resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_no_cors_on_admin_internal_and_other_routes(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data") as (node, url):
        admin = {"Authorization": f"Convex {node.admin.value}", "Origin": PAGE_ORIGIN}
        async with aiohttp.ClientSession() as s:
            for path in ("/api/admin/query_at", "/api/admin/checkpoints", "/api/admin/changes",
                         "/api/internal/mutation", "/version", "/api/sync"):
                async with s.options(url + path, headers=PREFLIGHT) as resp:
                    assert resp.status != 204 and not cors_headers(resp), path
            async with s.get(url + "/api/admin/checkpoints", headers=admin) as resp:
                assert resp.status == 200 and not cors_headers(resp)
            async with s.post(url + "/api/admin/query_at", headers=admin,
                              json={"path": "lists:all_lists", "args": {}, "offset": -1}) as resp:
                assert resp.status == 200 and not cors_headers(resp)
            async with s.get(url + "/version", headers={"Origin": PAGE_ORIGIN}) as resp:
                assert resp.status == 200 and not cors_headers(resp)


async def test_a_configured_origin_list(tmp_path: Path) -> None:
    good, bad = "https://app.example.com", "https://evil.example.com"
    async with served_node(tmp_path / "data", cors_origins=(good,), cors_max_age=60) as (node, url):
        async with aiohttp.ClientSession() as s:
            async with s.options(url + "/api/query", headers={**PREFLIGHT, "Origin": good}) as resp:
                assert resp.status == 204
                assert resp.headers["Access-Control-Allow-Origin"] == good
                assert resp.headers["Access-Control-Max-Age"] == "60"
                assert "Origin" in resp.headers.getall("Vary")
            async with s.options(url + "/api/query", headers={**PREFLIGHT, "Origin": bad}) as resp:
                body = await resp.json()
                assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
                assert body["code"] == "CorsOriginNotAllowed" and bad in body["message"]
            body = {"path": "lists:all_lists", "args": {}}
            async with s.post(url + "/api/query", json=body, headers={"Origin": good}) as resp:
                assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == good
                assert "Origin" in resp.headers.getall("Vary")
            async with s.post(url + "/api/query", json=body, headers={"Origin": bad}) as resp:
                assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
                assert "Origin" in resp.headers.getall("Vary")


async def test_cors_can_be_turned_off(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data", cors_origins=()) as (node, url):
        async with aiohttp.ClientSession() as s:
            async with s.options(url + "/api/query", headers=PREFLIGHT) as resp:
                assert resp.status == 405 and not cors_headers(resp)
            async with s.post(url + "/api/query", json={"path": "lists:all_lists", "args": {}},
                              headers={"Origin": PAGE_ORIGIN}) as resp:
                assert resp.status == 200 and not cors_headers(resp)


def test_allow_headers_cover_what_the_official_http_client_sends() -> None:
    source = (ROOT / "tests" / "js" / "node_modules" / "convex" / "dist" / "esm" / "browser" / "http_client.js")
    text = source.read_text()
    allowed = {h.strip().lower() for h in ALLOW_HEADERS.split(",")}
    for header in ("Content-Type", "Convex-Client", "Authorization"):
        assert f'"{header}"' in text or f"{header}:" in text or f'["{header}"]' in text, header
        assert header.lower() in allowed


# ----------------------------------------------------------------- a real browser on another origin

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>other origin</title></head>
<body>
<script src="/convex.bundle.js"></script>
<script>
  window.callTape = async (url) => {
    const client = new convex.ConvexHttpClient(url);
    const id = await client.mutation("lists:create", { name: "from another origin" });
    const got = await client.query("lists:get", { id });
    const lists = await client.consistentQuery("lists:all_lists", {});
    let adminBlocked = false;
    try {
      await fetch(url + "/api/admin/checkpoints", { headers: { Authorization: "Convex x" } });
    } catch (e) {
      adminBlocked = true;  // CORS: the page may not read an admin route
    }
    return { name: got.name, count: lists.length, origin: location.origin, adminBlocked };
  };
  document.body.dataset.ready = "true";
</script>
</body></html>
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def other_origin(tmp_path: Path) -> Iterator[str]:
    """A static page (and the convex browser bundle) served on its own port: another origin."""
    bundle = next((b for b in BUNDLES if b.is_file()), None)
    if bundle is None:
        pytest.fail("no convex browser bundle: run `make js` (npm ci in tests/js and examples/shopping)")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(PAGE)
    shutil.copy(bundle, site / "convex.bundle.js")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_official_http_client_in_chromium_from_another_origin(tmp_path: Path, other_origin: str) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium)")
    tape = ServerProcess(APPS / "kitchen", tmp_path / "data").start()
    try:
        assert tape.url != other_origin
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                problems: list[str] = []
                page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
                page.goto(other_origin + "/index.html")
                page.wait_for_selector("body[data-ready=true]", state="attached")
                result = page.evaluate("url => window.callTape(url)", tape.url)
            finally:
                browser.close()
        assert result == {"name": "from another origin", "count": 1, "origin": other_origin, "adminBlocked": True}
        assert not problems, problems
    finally:
        tape.stop()
