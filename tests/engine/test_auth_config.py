"""auth.config.py: loaded with the app, checked with file:line errors, reloaded; ctx.auth's identity rules."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from engine.app import App, AuthProvider
from engine.context import ADMIN_IDENTITY, Auth, is_admin
from engine.errors import AppLoadError

APPS = Path(__file__).resolve().parents[1] / "apps"
JWKS = {"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]}


def _app(tmp_path: Path, config: str | None) -> Path:
    directory = tmp_path / "app"
    shutil.copytree(APPS / "auth", directory)
    if config is not None:
        (directory / "auth.config.py").write_text(config)
    return directory


def test_providers_in_convex_shape_snake_case(tmp_path: Path) -> None:
    app = App.load(_app(tmp_path, f"""
providers = [
    {{"domain": "https://example.auth0.com/", "application_id": "my-app"}},
    {{"type": "customJwt", "issuer": "https://issuer.example", "jwks": "https://issuer.example/jwks.json",
      "algorithm": "ES256"}},
    {{"type": "customJwt", "issuer": "offline", "jwks": {JWKS!r}, "algorithm": "RS256", "application_id": "x"}},
]
"""))
    oidc, custom, inline = app.auth_providers
    assert (oidc.type, oidc.issuer, oidc.application_id, oidc.algorithms) == \
        ("oidc", "https://example.auth0.com/", "my-app", ("RS256", "ES256"))
    assert (custom.type, custom.jwks, custom.algorithms, custom.application_id) == \
        ("customJwt", "https://issuer.example/jwks.json", ("ES256",), None)
    assert inline.jwks == JWKS and inline.application_id == "x"
    assert "whoami:me" in app.functions and not any(p.startswith("auth") for p in app.functions)


def test_no_auth_config_means_no_providers(tmp_path: Path) -> None:
    assert App.load(_app(tmp_path, None)).auth_providers == ()


@pytest.mark.parametrize("config, message", [
    ("providers = {'domain': 'https://a'}", r"auth\.config\.py:1: `providers` must be a list"),
    ("x = 1", r"auth\.config\.py: auth\.config\.py must define `providers = \[\.\.\.\]`"),
    ("providers = [\n    {'domain': 'https://a.example', 'applicationID': 'x'},\n]",
     r"auth\.config\.py:2: providers\[0\]: unknown key 'applicationID': use 'application_id'"),
    ("providers = [\n  {'domain': 'https://a.example', 'application_id': 'x'},\n  {'domain': 'a.example', "
     "'application_id': 'x'}]", r"auth\.config\.py:3: providers\[1\]: 'domain' must be the issuer's URL"),
    ("providers = [{'domain': 'https://a.example'}]", r"'application_id' \(the tokens' required audience\)"),
    ("providers = [{'type': 'customJwt', 'issuer': 'i', 'jwks': 'https://j', 'algorithm': 'HS256'}]",
     r"'algorithm' must be one of RS256, ES256, got 'HS256'"),
    ("providers = [{'type': 'customJwt', 'issuer': 'i', 'jwks': 'file.json', 'algorithm': 'RS256'}]",
     r"'jwks' must be the key set's URL"),
    ("providers = [{'type': 'oidc', 'domain': 'https://a'}]", r"'type' must be 'customJwt'"),
    ("providers = [{'domain': 'https://a.example', 'application_id': 'x', 'jwks': 'https://j'}]",
     r"unknown key\(s\) 'jwks' for an OIDC provider"),
    ("import os\nproviders = [os.environ['TAPE_NO_SUCH_VARIABLE']]",
     r"auth\.config\.py:2: KeyError: 'TAPE_NO_SUCH_VARIABLE'"),
])
def test_malformed_config_is_a_located_load_error(tmp_path: Path, config: str, message: str) -> None:
    with pytest.raises(AppLoadError, match=message):
        App.load(_app(tmp_path, config))


def test_hot_reload_picks_up_a_changed_auth_config(tmp_path: Path) -> None:
    directory = _app(tmp_path, "providers = []\n")
    app = App.load(directory)
    assert app.auth_providers == () and not app.changed()
    config = directory / "auth.config.py"
    config.write_text("providers = [{'domain': 'https://new.example', 'application_id': 'a'}]\n")
    later = time.time() + 2
    os.utime(config, (later, later))
    assert app.changed()
    fresh = app.reload()
    assert [p.issuer for p in fresh.auth_providers] == ["https://new.example"]
    assert isinstance(fresh.auth_providers[0], AuthProvider)


async def test_get_user_identity_is_none_for_anonymous_and_admin_calls() -> None:
    user = {"tokenIdentifier": "https://i|u1", "subject": "u1", "issuer": "https://i", "admin": True}
    assert await Auth(None).get_user_identity() is None
    assert await Auth(ADMIN_IDENTITY).get_user_identity() is None
    assert Auth(ADMIN_IDENTITY).is_admin and is_admin({"admin": True})
    seen = await Auth(user).get_user_identity()
    assert seen == user and not Auth(user).is_admin  # a claim named "admin" does not make a user the admin
    seen["subject"] = "changed by user code"
    assert user["subject"] == "u1"  # the caller's shared identity is a copy


async def test_queries_mutations_and_actions_see_the_identity(make_runtime, tmp_path: Path) -> None:
    runtime = await make_runtime("auth")
    alice = {"tokenIdentifier": "https://i|alice", "subject": "alice", "issuer": "https://i", "name": "Alice"}
    assert (await runtime.query("whoami:me", {}, identity=alice)).value == alice
    assert (await runtime.run_mutation("whoami:me_in_mutation", {}, identity=alice)).value == alice
    assert await runtime.run_action("whoami:me_everywhere", {}, identity=alice) == \
        {"action": alice, "query": alice, "mutation": alice}
    assert await runtime.run_action("whoami:me_everywhere", {}, identity=ADMIN_IDENTITY) == \
        {"action": None, "query": None, "mutation": None}
    assert (await runtime.query("whoami:is_admin", {}, identity=ADMIN_IDENTITY)).value is True
