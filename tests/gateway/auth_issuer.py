"""Test helpers for auth: an OIDC issuer on localhost, the auth test app, an in-process node.

`TestIssuer` runs on its own thread and event loop (so it answers while a test
blocks on a subprocess) and serves

* ``/.well-known/openid-configuration`` (issuer, ``jwks_uri``),
* ``/jwks`` with the public halves of its current keys (RSA 2048 and EC
  P-256, made with `cryptography`),
* ``/token?sub=…&ttl=…&alg=…&mode=valid|expired|badsig&name=…`` — a freshly
  signed token as text, so Node scripts and browser pages can fetch tokens
  the way a real app asks its identity provider (CORS open).
"""
from __future__ import annotations

import asyncio
import pprint
import shutil
import threading
import time
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from engine.app import App
from gateway.config import ServerConfig
from gateway.node import Node
from gateway.server import build_app, runner_options

APPS = Path(__file__).resolve().parents[1] / "apps"
AUDIENCE = "tape-tests"


def new_key(algorithm: str) -> Any:
    """A fresh private key for `algorithm` (RSA 2048 or EC P-256)."""
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(private_key: Any, kid: str, algorithm: str) -> dict[str, Any]:
    """The JWK of a private key's public half."""
    maker = jwt.algorithms.RSAAlgorithm if algorithm == "RS256" else jwt.algorithms.ECAlgorithm
    jwk = maker.to_jwk(private_key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": algorithm, "use": "sig"}


class TestIssuer:
    """An OIDC issuer: keys, discovery, JWKS and token minting (see the module docstring)."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, Any]] = {}  # kid -> (algorithm, private key), all published
        self.hits: Counter[str] = Counter()
        self.port = 0
        self._serial = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        for algorithm in ("RS256", "ES256"):
            self.add_key(algorithm)

    @property
    def url(self) -> str:
        """The issuer (``iss``): also the OIDC ``domain`` of auth.config.py."""
        return f"http://127.0.0.1:{self.port}"

    def add_key(self, algorithm: str) -> str:
        self._serial += 1
        kid = f"{algorithm.lower()}-{self._serial}"
        self.keys[kid] = (algorithm, new_key(algorithm))
        return kid

    def rotate(self, algorithm: str = "RS256") -> str:
        """Replace the published keys of `algorithm` by a new one; returns its kid."""
        for kid in [k for k, (alg, _) in self.keys.items() if alg == algorithm]:
            del self.keys[kid]
        return self.add_key(algorithm)

    def kid(self, algorithm: str) -> str:
        return next(k for k, (alg, _) in self.keys.items() if alg == algorithm)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(key, kid, alg) for kid, (alg, key) in self.keys.items()]}

    def token(self, sub: str = "alice", *, aud: Any = AUDIENCE, ttl: float = 3600, algorithm: str = "RS256",
              iss: str | None = None, kid: str | None = None, key: Any = None, **claims: Any) -> str:
        """A token signed with this issuer's current key of `algorithm` (or `key`/`kid` when given)."""
        now = int(time.time())
        kid = kid or self.kid(algorithm)
        signing_key = key if key is not None else self.keys[kid][1]
        payload = {"iss": iss or self.url, "sub": sub, "aud": aud, "iat": now, "exp": int(now + ttl), **claims}
        if aud is None:
            del payload["aud"]
        return jwt.encode(payload, signing_key, algorithm=algorithm, headers={"kid": kid})

    # -- serving ---------------------------------------------------------------------------
    def _app(self) -> web.Application:
        async def discovery(_: web.Request) -> web.Response:
            self.hits["discovery"] += 1
            return web.json_response({"issuer": self.url, "jwks_uri": self.url + "/jwks",
                                      "id_token_signing_alg_values_supported": ["RS256", "ES256"]})

        async def jwks(_: web.Request) -> web.Response:
            self.hits["jwks"] += 1
            return web.json_response(self.jwks())

        async def token(request: web.Request) -> web.Response:
            q = request.query
            self.hits["token"] += 1
            mode = q.get("mode", "valid")
            sub = q.get("sub", "alice")
            ttl = float(q.get("ttl", "3600"))
            claims: dict[str, Any] = {"jti": f"t{self.hits['token']}"}  # each token differs, as real ones do
            if "name" in q:
                claims["name"] = q["name"]
            if mode == "expired":
                ttl = -600
            key = new_key("RS256") if mode == "badsig" else None
            text = self.token(sub, ttl=ttl, algorithm=q.get("alg", "RS256"), key=key, **claims)
            return web.Response(text=text, headers={"Access-Control-Allow-Origin": "*"})

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks", jwks)
        app.router.add_get("/token", token)
        return app

    def start(self) -> "TestIssuer":
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                self._runner = web.AppRunner(self._app(), access_log=None)
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(self._runner, "127.0.0.1", self.port)
                loop.run_until_complete(site.start())
                self.port = self._runner.addresses[0][1]
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="test-issuer", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> "TestIssuer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def oidc_provider(issuer: TestIssuer, application_id: str = AUDIENCE) -> dict[str, Any]:
    return {"domain": issuer.url, "application_id": application_id}


def auth_app(directory: Path, providers: list[dict[str, Any]]) -> Path:
    """A copy of tests/apps/auth in `directory` with an auth.config.py listing `providers`."""
    shutil.copytree(APPS / "auth", directory, dirs_exist_ok=True)
    write_auth_config(directory, providers)
    return directory


def write_auth_config(directory: Path, providers: list[dict[str, Any]]) -> None:
    text = "# written by the auth tests\nproviders = " + pprint.pformat(providers, width=100) + "\n"
    (directory / "auth.config.py").write_text(text)


@asynccontextmanager
async def served(app_dir: Path, data: Path, **config: Any) -> AsyncIterator[tuple[Node, str]]:
    """A started in-process node serving `app_dir` as `tape serve` would: yields (node, base URL)."""
    settings = ServerConfig(app_dir=app_dir, data_dir=data, **config)
    node = Node(settings, App.load(app_dir))
    server = TestServer(build_app(node))
    await server.start_server(**runner_options(settings))
    try:
        yield node, f"http://{server.host}:{server.port}"
    finally:
        await server.close()
