"""Auth in one process: token verification, identities over HTTP and WebSocket, admin acting as users.

A `TestIssuer` (tests/gateway/auth_issuer.py) serves discovery + JWKS on
localhost and signs the tokens; the node under test serves a copy of
tests/apps/auth with an auth.config.py naming it.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import aiohttp
import jwt
import orjson
import pytest

from engine.app import App
from gateway import auth
from gateway.auth import AuthFailure, Verifier, verifier_for
from tests.gateway.auth_issuer import AUDIENCE, TestIssuer, auth_app, new_key, oidc_provider, public_jwk, served

# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def issuer() -> Iterator[TestIssuer]:
    with TestIssuer() as running:
        yield running


def _verifier(tmp_path: Path, providers: list[dict[str, Any]]) -> Verifier:
    app = App.load(auth_app(tmp_path / "app", providers))
    return Verifier(app.auth_providers)


@pytest.fixture
async def node(tmp_path: Path, issuer: TestIssuer) -> AsyncIterator[tuple[Any, str]]:
    async with served(auth_app(tmp_path / "app", [oidc_provider(issuer)]), tmp_path / "data") as running:
        yield running


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> tuple[str, str]:
    head = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
    return head, head + "." + _b64url(signature)


def _claims(issuer: TestIssuer, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": issuer.url, "sub": "mallory", "aud": AUDIENCE, "iat": now, "exp": now + 600, **extra}


# --- verification -----------------------------------------------------------------------------------


async def test_rs256_and_es256_tokens_give_the_convex_user_identity(tmp_path: Path, issuer: TestIssuer) -> None:
    verifier = _verifier(tmp_path, [oidc_provider(issuer)])
    claims = {"name": "Alice A.", "given_name": "Alice", "family_name": "A.", "nickname": "al",
              "preferred_username": "alice", "profile": "https://p/alice", "picture": "https://p/a.png",
              "email": "alice@example.com", "email_verified": True, "gender": "f", "birthdate": "1990-01-01",
              "zoneinfo": "Europe/Paris", "locale": "fr", "phone_number": "+331", "phone_number_verified": False,
              "address": {"country": "FR"}, "updated_at": 1700000000, "org": {"id": 7, "roles": ["owner"]},
              "jti": "unique-per-token", "nbf": int(time.time()) - 5}
    for algorithm in ("RS256", "ES256"):
        verified = await verifier.verify(issuer.token("alice", algorithm=algorithm, **claims))
        assert verified.identity == {
            "tokenIdentifier": f"{issuer.url}|alice", "subject": "alice", "issuer": issuer.url,
            "name": "Alice A.", "givenName": "Alice", "familyName": "A.", "nickname": "al",
            "preferredUsername": "alice", "profileUrl": "https://p/alice", "pictureUrl": "https://p/a.png",
            "email": "alice@example.com", "emailVerified": True, "gender": "f", "birthday": "1990-01-01",
            "timezone": "Europe/Paris", "language": "fr", "phoneNumber": "+331", "phoneNumberVerified": False,
            "address": '{"country":"FR"}', "updatedAt": "2023-11-14T22:13:20Z",
            "org": {"id": 7.0, "roles": ["owner"]},  # custom claims as they are; numbers are floats as in JS
        }
    assert issuer.hits["discovery"] == 1 and issuer.hits["jwks"] == 1  # keys fetched once


def _refused_tokens(issuer: TestIssuer) -> dict[str, tuple[str, str]]:
    rsa_jwk = public_jwk(issuer.keys[issuer.kid("RS256")][1], "x", "RS256")
    secret = base64.urlsafe_b64decode(rsa_jwk["n"] + "==")  # the public key as an HMAC secret
    head, _ = _unsigned({"alg": "HS256", "kid": issuer.kid("RS256")}, _claims(issuer))
    hs256 = head + "." + _b64url(hmac.new(secret, head.encode(), hashlib.sha256).digest())
    _, alg_none = _unsigned({"alg": "none", "typ": "JWT"}, _claims(issuer))
    good = issuer.token("alice")
    tampered = good.rsplit(".", 2)
    tampered[1] = _b64url(json.dumps(_claims(issuer, sub="alice", admin=True)).encode())
    return {
        "expired": (issuer.token(ttl=-600), r"the token expired 6\d\d s ago"),
        "wrong audience": (issuer.token(aud="another-app"), r"its audience 'another-app' is not 'tape-tests'"),
        "no audience": (issuer.token(aud=None), r"the token lacks the 'aud' claim|audience"),
        "wrong issuer": (issuer.token(iss="https://evil.example"),
                         r"no auth provider matches the token's issuer 'https://evil\.example'"),
        "bad signature": (issuer.token(key=new_key("RS256")), r"signature does not verify"),
        "tampered claims": (".".join(tampered), r"signature does not verify"),
        "alg none": (alg_none, r"algorithm 'none' is not accepted"),
        "HS256 with the public key": (hs256, r"algorithm 'HS256' is not accepted"),
        "not a JWT": ("not-a-jwt", r"not a valid JWT"),
        "no subject": (jwt.encode({k: v for k, v in _claims(issuer).items() if k != "sub"},
                                  issuer.keys[issuer.kid("RS256")][1], algorithm="RS256",
                                  headers={"kid": issuer.kid("RS256")}), r"'sub'"),
        "not valid yet": (issuer.token(nbf=int(time.time()) + 600), r"not valid yet"),
        "issued in the future": (issuer.token(iat=int(time.time()) + 600), r"not valid yet"),
        "unknown kid": (issuer.token(kid="nobody", key=issuer.keys[issuer.kid("RS256")][1]),
                        r"no RS256 signing key with kid 'nobody'"),
    }


async def test_refused_tokens_name_the_reason(tmp_path: Path, issuer: TestIssuer) -> None:
    verifier = _verifier(tmp_path, [oidc_provider(issuer)])
    for _label, (token, message) in _refused_tokens(issuer).items():
        with pytest.raises(AuthFailure, match=message):
            await verifier.verify(token)


async def test_rotated_keys_are_refetched_once_per_interval(tmp_path: Path, issuer: TestIssuer) -> None:
    verifier = _verifier(tmp_path, [oidc_provider(issuer)])
    verifier.min_refetch_seconds = 0.3
    old = issuer.token("alice")
    await verifier.verify(old)
    assert issuer.hits["jwks"] == 1
    issuer.rotate("RS256")
    new = issuer.token("bob")
    # Within the interval an unknown kid does not refetch (a flood of made-up kids costs no fetches).
    with pytest.raises(AuthFailure, match="no RS256 signing key with kid"):
        await verifier.verify(new)
    assert issuer.hits["jwks"] == 1
    await asyncio.sleep(0.35)
    results = await asyncio.gather(*[verifier.verify(new) for _ in range(5)])  # concurrent: one fetch
    assert {r.identity["subject"] for r in results} == {"bob"}
    assert issuer.hits["jwks"] == 2
    assert verifier.verify_now(old).identity["subject"] == "alice"  # verified before: cached until it expires
    retired = jwt.get_unverified_header(old)["kid"]
    with pytest.raises(AuthFailure, match=f"no RS256 signing key with kid '{retired}'"):  # the retired key
        await verifier.verify(issuer.token("alice", kid=retired, key=new_key("RS256")))


async def test_unreachable_provider_is_named(tmp_path: Path) -> None:
    with TestIssuer() as gone:
        url = gone.url
        token = gone.token("alice")
    verifier = _verifier(tmp_path, [{"domain": url, "application_id": AUDIENCE}])
    started = time.monotonic()
    with pytest.raises(AuthFailure, match=rf"auth provider {url} \(OIDC\) cannot be reached: GET {url}/\.well-known"):
        await verifier.verify(token)
    assert time.monotonic() - started < 5  # bounded retries
    with pytest.raises(AuthFailure, match="its keys cannot be fetched"):  # no refetch storm right after
        await verifier.verify(token)


async def test_custom_jwt_providers_inline_or_url_keys_pinned_algorithm(tmp_path: Path, issuer: TestIssuer) -> None:
    es_kid = issuer.kid("ES256")
    inline = {"keys": [public_jwk(issuer.keys[es_kid][1], es_kid, "ES256")]}
    verifier = _verifier(tmp_path, [
        {"type": "customJwt", "issuer": "https://inline.example", "jwks": inline, "algorithm": "ES256"},
        {"type": "customJwt", "issuer": issuer.url, "jwks": issuer.url + "/jwks", "algorithm": "RS256",
         "application_id": "custom-app"},
    ])
    verified = verifier.verify_now(issuer.token("carol", iss="https://inline.example", algorithm="ES256",
                                                aud="anything"))
    assert verified is not None and verified.identity["tokenIdentifier"] == "https://inline.example|carol"
    with pytest.raises(AuthFailure, match="algorithm 'RS256' is not accepted"):
        verifier.verify_now(issuer.token("carol", iss="https://inline.example", algorithm="RS256"))
    assert (await verifier.verify(issuer.token("dave", aud="custom-app"))).identity["subject"] == "dave"
    assert issuer.hits["discovery"] == 0 and issuer.hits["jwks"] == 1  # customJwt: the JWKS URL directly
    with pytest.raises(AuthFailure, match="algorithm 'ES256' is not accepted"):
        await verifier.verify(issuer.token("dave", aud="custom-app", algorithm="ES256"))


async def test_verified_tokens_cost_a_lookup_until_they_expire(tmp_path: Path, issuer: TestIssuer,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = _verifier(tmp_path, [oidc_provider(issuer)])
    token = issuer.token("alice")
    first = await verifier.verify(token)

    def no_crypto(*a: Any, **kw: Any) -> Any:
        raise AssertionError("a cached token was verified again")
    monkeypatch.setattr(jwt, "decode", no_crypto)
    assert verifier.verify_now(token) is first
    monkeypatch.undo()
    monkeypatch.setattr(auth, "TOKEN_CACHE_SIZE", 3)
    for i in range(5):
        verifier.verify_now(issuer.token(f"user{i}"))
    assert len(verifier._cache) == 3  # bounded LRU
    monkeypatch.setattr(auth, "LEEWAY_SECONDS", 0.0)
    short = issuer.token("brief", ttl=1)
    assert verifier.verify_now(short) is not None
    await asyncio.sleep(1.1)
    with pytest.raises(AuthFailure, match="expired"):
        verifier.verify_now(short)


class _FakeNode:
    """What `verifier_for` reads of a node: its (reloadable) app."""

    def __init__(self, app: App) -> None:
        self.app = app


async def test_verifier_follows_a_reloaded_auth_config(tmp_path: Path, issuer: TestIssuer) -> None:
    directory = auth_app(tmp_path / "app", [])
    fake_node = _FakeNode(App.load(directory))
    token = issuer.token("alice")
    with pytest.raises(AuthFailure, match="no auth provider configured"):
        verifier_for(fake_node).verify_now(token)
    auth_app(directory, [oidc_provider(issuer)])
    fake_node.app = fake_node.app.reload()
    assert (await verifier_for(fake_node).verify(token)).identity["subject"] == "alice"
    auth_app(directory, [oidc_provider(issuer, "renamed-app")])
    fake_node.app = fake_node.app.reload()
    with pytest.raises(AuthFailure, match="audience"):  # the verified-token cache went with the old config
        await verifier_for(fake_node).verify(token)


# --- HTTP -------------------------------------------------------------------------------------------


async def _post(url: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url + path, data=orjson.dumps(body), headers=headers or {}) as r:
            text = await r.read()
            try:
                return r.status, orjson.loads(text)
            except orjson.JSONDecodeError:
                return r.status, text.decode()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_bearer_token_over_http_runs_as_the_user(node: tuple[Any, str], issuer: TestIssuer) -> None:
    _, url = node
    headers = _bearer(issuer.token("alice", name="Alice"))
    alice = {"tokenIdentifier": f"{issuer.url}|alice", "subject": "alice", "issuer": issuer.url, "name": "Alice"}
    status, body = await _post(url, "/api/query", {"path": "whoami:me", "args": {}}, headers)
    assert (status, body["status"], body["value"]) == (200, "success", alice)
    assert (await _post(url, "/api/mutation", {"path": "whoami:me_in_mutation", "args": {}}, headers))[1]["value"] \
        == alice
    assert (await _post(url, "/api/action", {"path": "whoami:me_everywhere", "args": {}}, headers))[1]["value"] \
        == {"action": alice, "query": alice, "mutation": alice}
    assert (await _post(url, "/api/function", {"path": "whoami:me", "args": {}}, headers))[1]["value"] == alice
    assert (await _post(url, "/api/query", {"path": "whoami:me", "args": {}}))[1]["value"] is None


async def test_an_invalid_bearer_token_is_401_never_an_anonymous_call(node: tuple[Any, str],
                                                                      issuer: TestIssuer) -> None:
    """Before auth existed, any Bearer token was ignored and the call ran anonymously with 200."""
    _, url = node
    for token, message in [(issuer.token(ttl=-600), "expired"), ("not.a.jwt", "not a valid JWT"),
                           (issuer.token(aud="elsewhere"), "audience")]:
        for path in ("/api/query", "/api/mutation", "/api/action", "/api/function"):
            fn = {"/api/mutation": "whoami:post", "/api/action": "whoami:me_everywhere"}.get(path, "whoami:me")
            status, body = await _post(url, path, {"path": fn, "args": {"text": "x"} if "post" in fn else {}},
                                       _bearer(token))
            assert status == 401, (path, status, body)
            assert body["code"] == "Unauthenticated" and message in body["message"], body
            assert "\n" not in body["message"]
    status, body = await _post(url, "/api/query", {"path": "whoami:me", "args": {}}, {"Authorization": "Basic x"})
    assert status == 401 and "expected 'Bearer <JWT>' or 'Convex <admin key>'" in body["message"]
    assert (await _post(url, "/api/query", {"path": "whoami:mine", "args": {}}))[1]["value"] == []


async def test_a_bearer_jwt_without_auth_config_is_401(tmp_path: Path, issuer: TestIssuer) -> None:
    async with served(Path(__file__).resolve().parents[1] / "apps" / "kitchen", tmp_path / "d") as (_, url):
        status, body = await _post(url, "/api/query", {"path": "lists:all_lists", "args": {}},
                                   _bearer(issuer.token("alice")))
    assert status == 401 and "no auth provider configured" in body["message"], body


def _acting(key: str, identity: dict[str, Any]) -> dict[str, str]:
    """What ConvexHttpClient.setAdminAuth(key, identity) sends: key, then base64 of the UTF-8 JSON."""
    encoded = base64.b64encode(json.dumps(identity).encode()).decode()
    return {"Authorization": f"Convex {key}:{encoded}"}


async def test_admin_key_calls_internal_functions_and_acts_as_a_user(node: tuple[Any, str]) -> None:
    running, url = node
    key = running.admin.value
    admin = {"Authorization": f"Convex {key}"}
    status, body = await _post(url, "/api/query", {"path": "whoami:secret", "args": {}}, admin)
    assert (status, body["value"]) == (200, {"secret": 42.0, "identity": None})
    assert (await _post(url, "/api/function", {"path": "whoami:secret", "args": {}}, admin))[0] == 200
    assert (await _post(url, "/api/query", {"path": "whoami:is_admin", "args": {}}, admin))[1]["value"] is True
    assert (await _post(url, "/api/query", {"path": "whoami:me", "args": {}}, admin))[1]["value"] is None
    status, body = await _post(url, "/api/query", {"path": "whoami:secret", "args": {}})
    assert status == 560 and "Could not find public function" in body["errorMessage"]
    erin = {"subject": "erin", "issuer": "https://idp.example", "name": "Érin", "level": 3}
    status, body = await _post(url, "/api/query", {"path": "whoami:me", "args": {}}, _acting(key, erin))
    assert status == 200 and body["value"] == {**erin, "level": 3.0, "tokenIdentifier": "https://idp.example|erin"}
    status, body = await _post(url, "/api/mutation", {"path": "whoami:post", "args": {"text": "as erin"}},
                               _acting(key, erin))
    assert status == 200
    assert (await _post(url, "/api/query", {"path": "whoami:mine", "args": {}}, _acting(key, erin)))[1]["value"] \
        == ["as erin"]
    status, body = await _post(url, "/api/query", {"path": "whoami:me", "args": {}},
                               {"Authorization": f"Convex {key}:not-base64!"})
    assert status == 401 and "base64" in body["message"]
    status, body = await _post(url, "/api/query", {"path": "whoami:me", "args": {}}, {"Authorization": "Convex nope"})
    assert status == 401 and "admin key is not this deployment's" in body["message"]
    async with aiohttp.ClientSession() as http:  # the admin API acts as the user too
        async with http.post(url + "/api/admin/query_at", headers=_acting(key, erin), data=orjson.dumps(
                {"path": "whoami:mine", "args": {}, "offset": running.log.next_offset() - 1})) as r:
            assert r.status == 200 and (await r.json())["value"] == ["as erin"]


# --- WebSocket --------------------------------------------------------------------------------------


class Ws:
    """A raw sync-protocol client that checks every Transition starts at its version."""

    def __init__(self, url: str) -> None:
        self.url = url.replace("http://", "ws://") + "/api/1.48.0/sync"
        self.messages: list[dict[str, Any]] = []
        self.seen: list[Any] = []  # every query value received, in order
        self.version = {"querySet": 0, "ts": "AAAAAAAAAAA=", "identity": 0}
        self.identity_version = 0
        self.query_set = 0
        self.close_code: int | None = None
        self._arrived = asyncio.Event()

    async def __aenter__(self) -> "Ws":
        self._http = aiohttp.ClientSession()
        self.ws = await self._http.ws_connect(self.url)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        await self.send({"type": "Connect", "sessionId": str(uuid.uuid4()), "connectionCount": 0,
                         "lastCloseReason": "InitialConnect", "clientTs": 0})
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._reader.cancel()
        await self.ws.close()
        await self._http.close()

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                message = orjson.loads(msg.data)
                if message["type"] == "Transition":
                    start = {**message["startVersion"]}
                    assert start == self.version, f"Transition starts at {start}, client is at {self.version}"
                    self.version = message["endVersion"]
                    self.seen.extend(_values(message).values())
                self.messages.append(message)
                self._arrived.set()
        self.close_code = self.ws.close_code
        self._arrived.set()

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps(message).decode())

    async def authenticate(self, token_type: str, value: str | None = None, **extra: Any) -> None:
        message = {"type": "Authenticate", "baseVersion": self.identity_version, "tokenType": token_type, **extra}
        if value is not None:
            message["value"] = value
        self.identity_version += 1
        await self.send(message)

    async def subscribe(self, *adds: tuple[int, str]) -> None:
        await self.send({"type": "ModifyQuerySet", "baseVersion": self.query_set, "newVersion": self.query_set + 1,
                         "modifications": [{"type": "Add", "queryId": qid, "udfPath": path, "args": [{}]}
                                           for qid, path in adds]})
        self.query_set += 1

    async def wait_for(self, check: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        """The first message (seen so far or later) for which `check` holds; removes it from `messages`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for i, message in enumerate(self.messages):
                if check(message):
                    del self.messages[i]
                    return message
            if self.close_code is not None:
                raise AssertionError(f"closed ({self.close_code}) while waiting; got {self.messages}")
            self._arrived.clear()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"timed out waiting; got {self.messages}")
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def transition_to_identity(self, identity: int) -> dict[str, Any]:
        return await self.wait_for(lambda m: m["type"] == "Transition" and m["endVersion"]["identity"] == identity)

    async def closed(self, timeout: float = 5.0) -> int | None:
        await asyncio.wait_for(self._reader, timeout)
        return self.close_code


def _values(transition: dict[str, Any]) -> dict[int, Any]:
    return {m["queryId"]: m.get("value") for m in transition["modifications"] if m["type"] == "QueryUpdated"}


def _who(identity: Any) -> Any:
    return None if identity is None else identity["subject"]


async def test_ws_authenticate_reruns_every_query_in_one_transition(node: tuple[Any, str],
                                                                    issuer: TestIssuer) -> None:
    running, url = node
    async with Ws(url) as ws:
        await ws.subscribe((0, "whoami:me"), (1, "whoami:mine"))
        first = await ws.wait_for(lambda m: m["type"] == "Transition")
        assert _values(first) == {0: None, 1: []}
        await ws.authenticate("User", issuer.token("alice", algorithm="ES256"))
        switched = await ws.transition_to_identity(1)
        assert switched["startVersion"]["identity"] == 0
        assert {q: _who(v) if q == 0 else v for q, v in _values(switched).items()} == {0: "alice", 1: []}
        await ws.send({"type": "Mutation", "requestId": 0, "udfPath": "whoami:post", "args": [{"text": "hi"}]})
        await ws.wait_for(lambda m: m["type"] == "MutationResponse" and m["success"])
        update = await ws.wait_for(lambda m: m["type"] == "Transition" and 1 in _values(m))
        assert _values(update)[1] == ["hi"]
        await ws.authenticate("None")  # clearAuth
        cleared = await ws.transition_to_identity(2)
        assert _values(cleared) == {0: None, 1: []}


async def test_ws_refreshed_token_of_the_same_user_keeps_subscriptions(node: tuple[Any, str],
                                                                      issuer: TestIssuer) -> None:
    running, url = node
    async with Ws(url) as ws:
        await ws.authenticate("User", issuer.token("alice", name="Alice", ttl=120))
        await ws.subscribe((0, "whoami:me"))
        await ws.wait_for(lambda m: m["type"] == "Transition" and 0 in _values(m))
        reruns = running.subscriptions.reruns
        await asyncio.sleep(1.1)  # a new iat/exp: a different token string
        await ws.authenticate("User", issuer.token("alice", name="Alice", ttl=3600, algorithm="ES256"))
        confirmed = await ws.transition_to_identity(2)
        assert confirmed["modifications"] == []  # same user, same claims: nothing re-ran or changed
        assert running.subscriptions.reruns == reruns and running.subscriptions.query_count == 1
        await ws.authenticate("User", issuer.token("alice", name="Alice Renamed"))
        renamed = await ws.transition_to_identity(3)  # different claims: every query runs again
        assert _values(renamed)[0]["name"] == "Alice Renamed"


@pytest.mark.parametrize("case", ["expired", "bad signature", "alg none"])
async def test_ws_invalid_token_gets_auth_error_then_close_4001(node: tuple[Any, str], issuer: TestIssuer,
                                                                case: str) -> None:
    _, url = node
    token = _refused_tokens(issuer)[case][0]
    async with Ws(url) as ws:
        await ws.subscribe((0, "whoami:me"))
        await ws.wait_for(lambda m: m["type"] == "Transition")
        await ws.authenticate("User", token)
        error = await ws.wait_for(lambda m: m["type"] == "AuthError")
        assert error["baseVersion"] == 0 and error["authUpdateAttempted"] is True
        assert await ws.closed() == 4001


async def test_ws_token_expiring_mid_session_gets_auth_error(node: tuple[Any, str], issuer: TestIssuer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = node
    monkeypatch.setattr(auth, "LEEWAY_SECONDS", 0.0)
    async with Ws(url) as ws:
        await ws.authenticate("User", issuer.token("alice", ttl=2))
        await ws.subscribe((0, "whoami:me"))
        await ws.wait_for(lambda m: m["type"] == "Transition" and 0 in _values(m))
        error = await ws.wait_for(lambda m: m["type"] == "AuthError", timeout=5)
        assert error == {"type": "AuthError", "error": "the token has expired", "baseVersion": 0,
                         "authUpdateAttempted": False}
        assert await ws.closed() == 4001


async def test_ws_admin_key_and_acting_as_a_user(node: tuple[Any, str]) -> None:
    running, url = node
    erin = {"subject": "erin", "issuer": "https://idp.example", "email": "erin@example.com"}
    async with Ws(url) as ws:
        await ws.authenticate("Admin", running.admin.value, impersonating=erin)
        await ws.subscribe((0, "whoami:me"), (1, "whoami:is_admin"))
        result = await ws.wait_for(lambda m: m["type"] == "Transition" and 0 in _values(m))
        assert _values(result) == {0: {**erin, "tokenIdentifier": "https://idp.example|erin"}, 1: False}
        await ws.authenticate("Admin", running.admin.value)
        plain = await ws.transition_to_identity(2)
        assert _values(plain) == {0: None, 1: True}
    async with Ws(url) as ws:
        await ws.authenticate("Admin", running.admin.value, impersonating={"subject": "no issuer"})
        assert "'issuer'" in (await ws.wait_for(lambda m: m["type"] == "AuthError"))["error"]
        assert await ws.closed() == 4001


async def test_ws_two_users_on_one_query_path_never_share_results(node: tuple[Any, str],
                                                                  issuer: TestIssuer) -> None:
    running, url = node
    async with Ws(url) as alice, Ws(url) as bob, Ws(url) as alice_again:
        await alice.authenticate("User", issuer.token("alice"))
        await bob.authenticate("User", issuer.token("bob"))
        await alice_again.authenticate("User", issuer.token("alice", algorithm="ES256"))  # another token
        for ws in (alice, bob, alice_again):
            await ws.subscribe((0, "whoami:mine"), (1, "whoami:me"))
            await ws.wait_for(lambda m: m["type"] == "Transition" and 0 in _values(m))
        assert running.subscriptions.query_count == 4  # alice's two tokens share both executions
        for i, (ws, text) in enumerate([(alice, "alice's secret"), (bob, "bob's secret")]):
            await ws.send({"type": "Mutation", "requestId": 0, "udfPath": "whoami:post", "args": [{"text": text}]})
        seen = {}
        for name, ws in (("alice", alice), ("bob", bob), ("alice again", alice_again)):
            update = await ws.wait_for(lambda m: m["type"] == "Transition" and _values(m).get(0))
            seen[name] = _values(update)[0]
        assert seen == {"alice": ["alice's secret"], "bob": ["bob's secret"], "alice again": ["alice's secret"]}
        await asyncio.sleep(0.2)
        for ws, other in ((alice, "bob"), (bob, "alice"), (alice_again, "bob")):
            assert not [v for v in ws.seen if other in orjson.dumps(v).decode()], ws.seen  # nothing of the other


async def test_ws_authenticate_waits_for_keys_before_later_messages(node: tuple[Any, str],
                                                                    issuer: TestIssuer) -> None:
    """The first token makes the server fetch the keys; the query sent right after still runs as the user."""
    _, url = node
    async with Ws(url) as ws:
        await ws.authenticate("User", issuer.token("alice"))
        await ws.subscribe((0, "whoami:me"))
        transitions = [await ws.wait_for(lambda m: m["type"] == "Transition") for _ in range(2)]
    assert issuer.hits["jwks"] == 1
    assert transitions[0]["endVersion"]["identity"] == 1 and transitions[0]["modifications"] == []
    assert _who(_values(transitions[1])[0]) == "alice"


async def test_ws_session_served_off_the_loop_reauthenticates(node: tuple[Any, str], issuer: TestIssuer) -> None:
    _, url = node
    async with Ws(url) as ws:
        await ws.subscribe((0, "whoami:slow_me"), (1, "whoami:me"))
        first = await ws.wait_for(lambda m: m["type"] == "Transition" and 0 in _values(m))
        assert _values(first)[0] is None
        await ws.authenticate("User", issuer.token("bob"))
        switched = await ws.transition_to_identity(1)
        assert {q: _who(v) for q, v in _values(switched).items()} == {0: "bob", 1: "bob"}
        await ws.authenticate("None")
        cleared = await ws.transition_to_identity(2)
        assert _values(cleared) == {0: None, 1: None}


async def test_a_reloaded_auth_config_applies_to_the_next_call(tmp_path: Path, issuer: TestIssuer) -> None:
    app_dir = auth_app(tmp_path / "app", [])
    async with served(app_dir, tmp_path / "data") as (running, url):
        token = _bearer(issuer.token("alice"))
        status, body = await _post(url, "/api/query", {"path": "whoami:me", "args": {}}, token)
        assert status == 401 and "no auth provider configured" in body["message"]
        auth_app(app_dir, [oidc_provider(issuer)])
        running.reload_app()  # what `tape dev` does when a file of the app changes
        status, body = await _post(url, "/api/query", {"path": "whoami:me", "args": {}}, token)
        assert status == 200 and body["value"]["subject"] == "alice"
        (app_dir / "auth.config.py").write_text("providers = [{'domain': 'nope'}]\n")
        with pytest.raises(Exception, match=r"auth\.config\.py:1: providers\[0\]: 'domain' must be"):
            running.reload_app()
        status, body = await _post(url, "/api/query", {"path": "whoami:me", "args": {}}, token)
        assert status == 200  # a broken config keeps the previous one serving


async def test_concurrent_first_tokens_share_one_key_fetch(tmp_path: Path, issuer: TestIssuer) -> None:
    """64 callers with unseen tokens before any key is known: all wait for the one fetch, none is refused."""
    verifier = _verifier(tmp_path, [oidc_provider(issuer)])
    tokens = [issuer.token(f"user{i}") for i in range(64)]
    first = asyncio.ensure_future(verifier.verify(tokens[0]))
    await asyncio.sleep(0.002)  # the fetch is under way when the others arrive
    results = await asyncio.gather(first, *[verifier.verify(t) for t in tokens[1:]], return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert issuer.hits["jwks"] == 1


async def test_rotated_keys_over_http_and_websocket(node: tuple[Any, str], issuer: TestIssuer) -> None:
    running, url = node
    before = issuer.token("alice")
    assert (await _post(url, "/api/query", {"path": "whoami:me", "args": {}}, _bearer(before)))[0] == 200
    verifier_for(running).min_refetch_seconds = 0.0
    retired = jwt.get_unverified_header(before)["kid"]
    issuer.rotate("RS256")
    after = issuer.token("bob")  # signed with the new key: the server learns it by refetching
    status, body = await _post(url, "/api/query", {"path": "whoami:me", "args": {}}, _bearer(after))
    assert (status, body["value"]["subject"]) == (200, "bob")
    async with Ws(url) as ws:
        await ws.authenticate("User", issuer.token("carol"))
        await ws.subscribe((0, "whoami:me"))
        assert _who(_values(await ws.wait_for(lambda m: m["type"] == "Transition" and 0 in _values(m)))[0]) == "carol"
    forged = issuer.token("mallory", kid=retired, key=new_key("RS256"))
    status, body = await _post(url, "/api/query", {"path": "whoami:me", "args": {}}, _bearer(forged))
    assert status == 401 and f"no RS256 signing key with kid '{retired}'" in body["message"]
    assert issuer.hits["jwks"] >= 2


async def test_an_unusable_key_set_is_named_and_never_replaces_working_keys(tmp_path: Path,
                                                                            issuer: TestIssuer) -> None:
    hmac_only = {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h1", "alg": "HS256"}]}
    verifier = _verifier(tmp_path, [{"type": "customJwt", "issuer": issuer.url, "jwks": hmac_only,
                                     "algorithm": "RS256"}])
    with pytest.raises(AuthFailure, match=r"its inline JWKS: the JWKS has no usable RS256 signing key"):
        verifier.verify_now(issuer.token("alice"))
    verifier = _verifier(tmp_path / "b", [oidc_provider(issuer)])
    verifier.min_refetch_seconds = 0.0
    token = issuer.token("alice")
    await verifier.verify(token)
    saved = dict(issuer.keys)
    issuer.keys.clear()  # the provider glitches: an empty JWKS
    with pytest.raises(AuthFailure, match="no RS256 signing key with kid 'nope'"):
        await verifier.verify(issuer.token("bob", kid="nope", key=saved[next(iter(saved))][1]))
    issuer.keys.update(saved)
    assert (await verifier.verify(issuer.token("carol"))).identity["subject"] == "carol"  # old keys kept
