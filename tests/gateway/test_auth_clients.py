"""The official clients' auth flows, unmodified, against a real `tape dev` serving the auth test app.

A `TestIssuer` on localhost is the app's OIDC provider (auth.config.py names
it); the Node scripts fetch their tokens from it the way an app asks its
identity provider (``/token?sub=…``). npm ``ConvexClient.setAuth`` (refresh,
AuthError → forced refresh, clearAuth), ``ConvexHttpClient.setAuth`` /
``setAdminAuth(key, identity)``, and the PyPI client's ``set_auth`` (in a
subprocess with a deadline: its blocking calls hold the GIL).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.gateway.auth_issuer import TestIssuer, auth_app, oidc_provider

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "tests" / "js"


@pytest.fixture(autouse=True)
def _node_scripts_installed() -> None:
    if shutil.which("node") is None:
        pytest.fail("`node` is not on PATH: the official JS client tests need Node.js 18+")
    if not (JS_DIR / "node_modules" / "convex" / "package.json").is_file():
        pytest.fail(f"{JS_DIR / 'node_modules'} is missing: run `make js` (or `cd tests/js && npm ci`)")


@pytest.fixture
def issuer() -> Iterator[TestIssuer]:
    with TestIssuer() as running:
        yield running


@pytest.fixture
def server(server_factory, tmp_path: Path, issuer: TestIssuer):  # type: ignore[no-untyped-def]
    return server_factory(auth_app(tmp_path / "app", [oidc_provider(issuer)]))


def run_js(script: str, config: dict[str, Any], timeout: float = 40.0) -> list[dict[str, Any]]:
    """Run tests/js/<script>; its JSON lines (the last one "done", else the test fails with the output)."""
    proc = subprocess.run(["node", str(JS_DIR / script), json.dumps(config)], cwd=JS_DIR, capture_output=True,
                          text=True, timeout=timeout)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert proc.returncode == 0 and events and events[-1]["event"] == "done", \
        f"{script} exited {proc.returncode}:\n{proc.stdout}\n--- stderr:\n{proc.stderr[-4000:]}"
    return events


def _token_url(issuer: TestIssuer, sub: str, **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"sub": sub, **params}.items())
    return f"{issuer.url}/token?{query}"


def _of(events: list[dict[str, Any]], kind: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == kind and all(e.get(k) == v for k, v in match.items())]


def test_npm_client_set_auth_identity_mutation_and_clear_auth(server, issuer: TestIssuer) -> None:  # type: ignore[no-untyped-def]
    events = run_js("auth_ws.mjs", {
        "url": server.url,
        "clients": [{"name": "alice", "tokenUrls": [_token_url(issuer, "alice", name="Alice")]}],
        "subscribe": [{"client": "alice", "id": "me", "path": "whoami:me"},
                      {"client": "alice", "id": "mine", "path": "whoami:mine"}],
        "steps": [{"waitFor": {"auth": "alice", "is": True}}, {"waitFor": {"sub": "me", "subject": "alice"}},
                  {"mutation": {"client": "alice", "path": "whoami:post", "args": {"text": "hello"}}},
                  {"waitFor": {"sub": "mine", "equals": ["hello"]}},
                  {"clearAuth": "alice"}, {"waitFor": {"sub": "me", "subject": None}},
                  {"waitFor": {"sub": "mine", "equals": []}}],
    })
    me = next(e["value"] for e in _of(events, "update", id="me") if e["value"])
    assert me == {"tokenIdentifier": f"{issuer.url}|alice", "subject": "alice", "issuer": issuer.url, "name": "Alice"}
    assert _of(events, "mutation")[0]["ok"]
    assert not _of(events, "query_error")


def test_npm_client_refreshes_its_token_mid_subscription(server, issuer: TestIssuer) -> None:  # type: ignore[no-untyped-def]
    """Tokens living 13 s: the client refetches one right after the first is confirmed and again ~3 s
    later (10 s before expiry); the subscriptions stay, nothing re-runs, and updates keep coming."""
    events = run_js("auth_ws.mjs", {
        "url": server.url,
        "clients": [{"name": "alice", "tokenUrls": [_token_url(issuer, "alice", ttl=13)]}],
        "subscribe": [{"client": "alice", "id": "me", "path": "whoami:me"},
                      {"client": "alice", "id": "mine", "path": "whoami:mine"}],
        "steps": [{"waitFor": {"sub": "me", "subject": "alice"}}, {"sleepMs": 4500},
                  {"mutation": {"client": "alice", "path": "whoami:post", "args": {"text": "after refresh"}}},
                  {"waitFor": {"sub": "mine", "equals": ["after refresh"]}}],
    })
    tokens = _of(events, "token")
    assert len(tokens) >= 3 and all(t["forceRefreshToken"] for t in tokens[1:]), tokens
    assert {e["isAuthenticated"] for e in _of(events, "auth")} == {True}  # never lost auth
    assert len([e for e in _of(events, "update", id="me") if e["value"]]) == 1  # the same user: not re-sent
    assert _of(events, "mutation")[0]["ok"] and not _of(events, "query_error")


def test_npm_client_auth_error_forces_a_refresh_then_reauthenticates(server, issuer: TestIssuer) -> None:  # type: ignore[no-untyped-def]
    events = run_js("auth_ws.mjs", {
        "url": server.url,
        "clients": [{"name": "alice", "tokenUrls": [_token_url(issuer, "alice", mode="expired"),
                                                     _token_url(issuer, "alice")]}],
        "subscribe": [{"client": "alice", "id": "me", "path": "whoami:me"}],
        "steps": [{"waitFor": {"auth": "alice", "is": True}}, {"waitFor": {"sub": "me", "subject": "alice"}}],
    })
    tokens = _of(events, "token")
    assert tokens[0]["forceRefreshToken"] is False and tokens[1]["forceRefreshToken"] is True, tokens
    assert {e["isAuthenticated"] for e in _of(events, "auth")} == {True}


def test_npm_client_gives_up_on_tokens_that_never_verify(server, issuer: TestIssuer) -> None:  # type: ignore[no-untyped-def]
    events = run_js("auth_ws.mjs", {
        "url": server.url,
        "clients": [{"name": "mallory", "tokenUrls": [_token_url(issuer, "mallory", mode="badsig")]}],
        "subscribe": [{"client": "mallory", "id": "me", "path": "whoami:me"}],
        "steps": [{"waitFor": {"auth": "mallory", "is": False}}, {"waitFor": {"sub": "me", "subject": None}}],
    })
    assert not [e for e in _of(events, "update") if e["value"]]  # never ran as mallory


def test_npm_two_users_on_one_query_path_never_see_each_other(server, issuer: TestIssuer) -> None:  # type: ignore[no-untyped-def]
    clients = ["alice", "bob"]
    events = run_js("auth_ws.mjs", {
        "url": server.url,
        "clients": [{"name": c, "tokenUrls": [_token_url(issuer, c)]} for c in clients],
        "subscribe": [{"client": c, "id": f"mine-{c}", "path": "whoami:mine"} for c in clients],
        "steps": [*[{"waitFor": {"auth": c, "is": True}} for c in clients],
                  *[{"mutation": {"client": c, "path": "whoami:post", "args": {"text": f"{c}'s note"}}}
                    for c in clients],
                  *[{"waitFor": {"sub": f"mine-{c}", "equals": [f"{c}'s note"]}} for c in clients],
                  {"sleepMs": 300}],
    })
    for me, other in (("alice", "bob"), ("bob", "alice")):
        seen = [e["value"] for e in _of(events, "update", client=me)]
        assert seen and not [v for v in seen if other in json.dumps(v)], seen


def test_npm_http_client_bearer_admin_and_acting_as(server, issuer: TestIssuer) -> None:  # type: ignore[no-untyped-def]
    key = (server.data_dir / "admin_key").read_text().strip()
    alice = issuer.token("alice", algorithm="ES256", email="alice@example.com")
    erin = {"subject": "erin", "issuer": "https://idp.example", "name": "Erin"}
    events = run_js("auth_http.mjs", {"url": server.url, "calls": [
        {"kind": "query", "path": "whoami:me", "token": alice},
        {"kind": "mutation", "path": "whoami:post", "args": {"text": "over http"}, "token": alice},
        {"kind": "action", "path": "whoami:me_everywhere", "token": alice},
        {"kind": "function", "path": "whoami:mine", "token": alice},
        {"kind": "query", "path": "whoami:me", "token": issuer.token("alice", ttl=-600)},
        {"kind": "query", "path": "whoami:me", "adminKey": key, "actingAs": erin},
        {"kind": "query", "path": "whoami:me", "adminKey": key},
        {"kind": "query", "path": "whoami:secret", "adminKey": key},
        {"kind": "query", "path": "whoami:secret", "token": alice},
        {"kind": "query", "path": "whoami:me"},
    ]})
    results = [e for e in events if e["event"] == "result"]
    identity = {"tokenIdentifier": f"{issuer.url}|alice", "subject": "alice", "issuer": issuer.url,
                "email": "alice@example.com"}
    assert results[0]["value"] == identity and results[1]["ok"]
    assert results[2]["value"] == {"action": identity, "query": identity, "mutation": identity}
    assert results[3]["value"] == ["over http"]
    assert not results[4]["ok"] and "Unauthenticated" in results[4]["error"]["message"] \
        and "expired" in results[4]["error"]["message"]
    assert results[5]["value"] == {**erin, "tokenIdentifier": "https://idp.example|erin"}
    assert results[6]["value"] is None
    assert results[7]["value"] == {"secret": 42.0, "identity": None}
    assert not results[8]["ok"] and "Could not find public function" in results[8]["error"]["message"]
    assert results[9]["ok"] and results[9]["value"] is None


PYPI_SCRIPT = textwrap.dedent("""
    import json, sys
    from convex import ConvexClient
    url, alice, bob = sys.argv[1:4]
    out = {}
    client = ConvexClient(url)
    out["anonymous"] = client.query("whoami:me")
    client.set_auth(alice)
    out["me"] = client.query("whoami:me")
    sub = iter(client.subscribe("whoami:mine"))
    out["mine_before"] = next(sub)
    client.mutation("whoami:post", {"text": "from python"})
    out["mine_after"] = next(sub)
    out["action"] = client.action("whoami:me_everywhere")["action"]["subject"]
    client.set_auth(bob)
    out["bob"] = client.query("whoami:me")["subject"]
    out["bob_mine"] = client.query("whoami:mine")
    client.clear_auth()
    out["cleared"] = client.query("whoami:me")
    print(json.dumps(out), flush=True)
""")


def test_pypi_client_set_auth(server, issuer: TestIssuer) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.run([sys.executable, "-c", PYPI_SCRIPT, server.url, issuer.token("alice"),
                           issuer.token("bob", algorithm="ES256")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["anonymous"] is None and out["cleared"] is None
    assert out["me"]["tokenIdentifier"] == f"{issuer.url}|alice"
    assert out["mine_before"] == [] and out["mine_after"] == ["from python"]
    assert out["action"] == "alice" and out["bob"] == "bob" and out["bob_mine"] == []
