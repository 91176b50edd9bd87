"""The web dashboard (`/_dashboard`) in Debian's headless Chromium, against a real `tape serve`.

Signs in with the admin key, watches a row change live as another client's
mutation commits, edits a document, runs an internal function (and sees it on
the Logs page), cancels a scheduled job, sets an environment variable that a
function then reads, moves the History slider to before a delete and sees the
deleted rows, restores that moment into a new directory and serves it with
`tape serve`. Saves a screenshot of each page into $TAPE_SCREENSHOTS (docs/screenshots/ holds the
README's: `TAPE_SCREENSHOTS=docs/screenshots pytest tests/gateway/test_dashboard_browser.py`), or a temporary
directory when unset.
"""
from __future__ import annotations

import json
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect
from tests.browser import browser  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("TAPE_SCREENSHOTS") or tempfile.mkdtemp(prefix="tape-shots-"))
LIVE = 10_000  # ms: how long a change may take to show up



def _http(url: str, path: str, body: dict[str, Any] | None = None, key: str | None = None) -> Any:
    request = urllib.request.Request(url + path, method="GET" if body is None else "POST",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Convex {key}"} if key else {})})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _call(url: str, kind: str, path: str, args: dict[str, Any]) -> Any:
    body = _http(url, f"/api/{kind}", {"path": path, "args": args, "format": "json"})
    assert body["status"] == "success", body
    return body["value"]


def _shot(page: Page, name: str, full: bool = False) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"dashboard-{name}.png"), full_page=full)


def _row(page: Page, doc_id: str) -> Any:
    return page.locator(f"[data-testid=row][data-id='{doc_id}']")


def test_dashboard_pages_in_chromium(browser: Browser, server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("dashboard", command="serve")
    url = server.url
    key = (server.data_dir / "admin_key").read_text().strip()
    ann1 = _call(url, "mutation", "messages:send", {"author": "ann", "body": "hello from ann"})
    bob = _call(url, "mutation", "messages:send", {"author": "bob", "body": "hi from bob"})
    ann2 = _call(url, "mutation", "messages:send", {"author": "ann", "body": "bye from ann"})
    assert "/_dashboard" in server.output()  # the start-up lines give the dashboard's URL

    context = browser.new_context(viewport={"width": 1280, "height": 760})
    context.set_default_timeout(LIVE)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    expected = {(401, "/api/admin/stats"), (560, "/api/admin/run"), (400, "/api/admin/env"),  # the refusals tested
                (404, "/api/admin/logs")}  # (a server without the function log stream)
    page.on("response", lambda r: r.status >= 400 and (r.status, r.url.removeprefix(url).split("?")[0]) not in expected
            and problems.append(f"HTTP {r.status}: {r.url}"))

    # Sign in: a wrong key is refused, the right one opens the Data page.
    page.goto(url + "/_dashboard")
    page.fill("#admin-key", "tape_admin_wrong")
    page.click("#sign-in")
    expect(page.get_by_test_id("signin-error")).to_contain_text("not this deployment's admin key")
    page.fill("#admin-key", key)
    page.click("#sign-in")
    expect(page.locator("main")).to_have_attribute("data-page", "data")

    # Data: rows of `messages`, live as another client commits.
    page.click("[data-testid=table][data-table=messages]")
    expect(page.get_by_test_id("row")).to_have_count(3)
    expect(page.get_by_test_id("schema")).to_contain_text("by_author (author)")
    _call(url, "mutation", "messages:like", {"id": bob})
    expect(_row(page, bob)).to_contain_text("1")
    carl = _call(url, "mutation", "messages:send", {"author": "carl", "body": "live row"})
    expect(_row(page, carl)).to_contain_text("live row")

    # Edit a document through the admin API; a bad edit is refused by the schema.
    _row(page, bob).click()
    page.fill("#doc-json", json.dumps({"author": "bob", "body": "edited in the dashboard", "likes": 7}))
    page.click("#doc-save")
    expect(page.get_by_test_id("doc-message")).to_have_text("saved")
    expect(_row(page, bob)).to_contain_text("edited in the dashboard")
    page.fill("#doc-json", json.dumps({"author": "bob", "body": "x", "likes": "many"}))
    page.click("#doc-save")
    expect(page.get_by_test_id("doc-message")).to_contain_text("likes")
    assert {m["_id"]: m["body"] for m in _call(url, "query", "messages:list", {})}[bob] == "edited in the dashboard"
    _shot(page, "data")

    # Functions: run an internal function with JSON args; result and duration shown.
    page.click("[data-testid=nav-functions]")
    page.click("[data-testid=function][data-path='messages:purge_author']")
    expect(page.get_by_test_id("args-validator")).to_contain_text("{ author: string }")
    page.fill("#fn-args", json.dumps({"author": "ann"}))
    page.click("#fn-run")
    expect(page.get_by_test_id("fn-result")).to_have_attribute("data-ok", "true")
    expect(page.get_by_test_id("fn-result")).to_contain_text("2")
    expect(page.get_by_test_id("fn-duration")).to_contain_text(" ms")
    _shot(page, "functions")
    page.click("[data-testid=nav-logs]")
    expect(page.get_by_test_id("log-line")).to_have_count(1)
    expect(page.get_by_test_id("log-line")).to_contain_text("messages:purge_author")
    expect(page.get_by_test_id("server-log-state")).not_to_have_text("connecting")
    _shot(page, "logs")
    commits = _http(url, "/api/admin/commits?limit=20", key=key)["commits"]
    purge = next(c for c in commits if c["function"] == "messages:purge_author")
    assert {w["id"] for w in purge["writes"]} == {ann1, ann2}

    # Scheduled jobs: a pending job is listed live and cancelled from the page.
    job = _call(url, "mutation", "messages:send_later", {"author": "dan", "body": "later", "delay_ms": 600_000})
    page.click("[data-testid=nav-scheduled]")
    expect(page.get_by_test_id("cron")).to_contain_text("purge spam")
    expect(page.locator("[data-testid=job][data-state=pending]")).to_have_count(1)
    page.locator("[data-testid=job][data-state=pending] button").click()
    expect(page.locator("[data-testid=job][data-state=canceled]")).to_have_count(1)
    assert job
    _shot(page, "scheduled")

    # Environment variables: set one; the next function call reads it as ctx.env.
    page.click("[data-testid=nav-env]")
    page.fill("#env-name", "GREETING")
    page.fill("#env-value", "hola")
    page.click("#env-add")
    expect(page.get_by_test_id("env-message")).to_contain_text("set GREETING")
    expect(page.locator("[data-testid=env-var][data-name=GREETING]")).to_have_count(1)
    assert _call(url, "query", "messages:greeting", {}) == "hola, 1 variable(s)"
    page.fill("#env-name", "bad-name")
    page.fill("#env-value", "x")
    page.click("#env-add")
    expect(page.get_by_test_id("env-message")).to_contain_text("must start with a letter")
    _shot(page, "env")
    # The variable is a document of a system table, which the Data page shows (read-only) on request.
    page.click("[data-testid=nav-data]")
    page.locator("[data-testid=tables] input[type=checkbox]").check()
    page.click("[data-testid=table][data-table=_environment_variables]")
    expect(page.get_by_test_id("row")).to_have_count(1)
    page.get_by_test_id("row").click()
    expect(page.get_by_test_id("viewer")).to_contain_text('"value": "hola"')

    # History: the slider to just before the purge shows ann's deleted rows again.
    page.click("[data-testid=nav-history]")
    page.click("[data-testid=table][data-table=messages]")
    expect(page.locator("[data-testid=history-rows] [data-testid=row]")).to_have_count(2)  # bob, carl now
    end = _http(url, "/api/admin/commits?limit=1", key=key)["end"]
    slider = page.locator("#history-slider")
    slider.focus()
    for _ in range((end - 1) - (purge["offset"] - 1)):  # the keyboard moves the slider one commit a step
        slider.press("ArrowLeft")
    expect(page.get_by_test_id("history-at")).to_have_attribute("data-offset", str(purge["offset"] - 1))
    expect(page.locator("[data-testid=history-rows] [data-testid=row]")).to_have_count(4)
    expect(page.get_by_test_id("history-rows")).to_contain_text("hello from ann")
    expect(page.locator(f"[data-testid=commit][data-offset='{purge['offset']}']")).to_contain_text("purge_author")

    # Restore that moment into a new directory, then serve it with `tape serve` and query it.
    restored_dir = tmp_path / "restored"
    page.fill("#restore-dest", str(restored_dir))
    page.click("#restore")
    expect(page.get_by_test_id("restore-result")).to_have_attribute("data-dest", str(restored_dir))
    expect(page.get_by_test_id("restore-command")).to_contain_text(f"tape serve")
    _shot(page, "history", full=True)
    restored = server_factory("dashboard", data=restored_dir, command="serve")
    bodies = sorted(m["body"] for m in _call(restored.url, "query", "messages:list", {}))
    assert bodies == ["bye from ann", "edited in the dashboard", "hello from ann", "live row"]

    # Health: offset, sessions, subscriptions.
    page.click("[data-testid=nav-health]")
    expect(page.get_by_test_id("stat-sessions")).not_to_contain_text("…")
    expect(page.get_by_test_id("stat-log-offset")).to_contain_text(str(end - 1))
    expect(page.locator("[data-testid=duration][data-path='messages:send']")).to_contain_text("ms")
    expect(page.get_by_test_id("stat-commits-s")).not_to_contain_text("…")  # (two polls: a rate)
    _shot(page, "health")

    # Signing out forgets the key (sessionStorage).
    page.click("[data-testid=sign-out]")
    expect(page.locator("#admin-key")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('tape.adminKey')") is None
    context.close()
    assert not problems, problems
