"""Who is calling: users' JWTs verified against the app's auth providers, and admins acting as users.

The providers come from the app's ``auth.config.py`` (`engine.app.AuthProvider`).
A token is accepted when

* its ``iss`` names a configured provider (a trailing ``/`` is ignored) and its
  header's ``alg`` is one that provider pins (RS256/ES256; ``none`` and HMAC
  never: no algorithm confusion), matching the signing key's type;
* its signature verifies with one of the provider's keys: OIDC keys are found
  through ``{domain}/.well-known/openid-configuration`` → ``jwks_uri``, custom
  JWT keys at their ``jwks`` URL or inline. Keys are fetched once and cached;
  a token naming an unknown ``kid`` (key rotation) or keys older than
  `KEYS_MAX_AGE_SECONDS` trigger one refetch (bounded retries, at most one per
  `Verifier.min_refetch_seconds` per provider, concurrent callers share it);
  a provider that cannot be reached is named in the error;
* ``exp`` is in the future and ``nbf``/``iat`` are not (with `LEEWAY_SECONDS`),
  ``sub`` is a string, and ``aud`` contains the provider's ``application_id``
  when one is set.

Verified tokens are kept in a bounded LRU until they expire, so a token seen
before costs one dict lookup (`Verifier.verify_now`). Verification needs the
event loop only when keys must be fetched (`Verifier.verify`).

The identity is Convex's ``UserIdentity``: ``tokenIdentifier`` (``iss|sub``),
``subject``, ``issuer``, the standard OIDC claims under Convex's camelCase
names, and every other claim as it is, except the registered claims that
change on refresh (``aud exp nbf iat jti``): two tokens of one user with the
same claims give equal identities (and so share query executions). Numbers
become floats, as in Convex's JavaScript runtime; a numeric ``updated_at``
becomes an ISO-8601 string and an ``address`` object its JSON text (Convex
types both as strings); names starting with ``$`` are dropped (they are not
Convex field names).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hashlib
import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import orjson

from engine.app import AuthProvider

log = logging.getLogger("tape.auth")

LEEWAY_SECONDS = 30.0           # clock skew allowed on exp / nbf / iat
TOKEN_CACHE_SIZE = 10_000       # verified tokens remembered (LRU)
MIN_REFETCH_SECONDS = 10.0      # a provider's keys are fetched at most this often
KEYS_MAX_AGE_SECONDS = 3600.0   # keys older than this are refetched on the next verification
FETCH_ATTEMPTS = 3              # tries per fetch (connection errors, non-200, bad documents)
FETCH_BACKOFF_SECONDS = (0.1, 0.3)
FETCH_TIMEOUT_SECONDS = 5.0     # per try
MAX_DOCUMENT_BYTES = 1 << 20    # a discovery document or JWKS larger than this is refused
MAX_TOKEN_CHARS = 16 << 10

# OIDC standard claims → Convex's UserIdentity field names.
_CLAIM_NAMES = {
    "name": "name", "given_name": "givenName", "family_name": "familyName", "nickname": "nickname",
    "preferred_username": "preferredUsername", "profile": "profileUrl", "picture": "pictureUrl",
    "email": "email", "email_verified": "emailVerified", "gender": "gender", "birthdate": "birthday",
    "zoneinfo": "timezone", "locale": "language", "phone_number": "phoneNumber",
    "phone_number_verified": "phoneNumberVerified", "address": "address", "updated_at": "updatedAt",
}
_DROPPED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti"})
_KEY_ALGORITHMS = {("RSA", None): "RS256", ("EC", "P-256"): "ES256"}


class AuthFailure(Exception):
    """A token or identity that is not accepted; the message (one line) is what the caller is told."""


@dataclass(frozen=True, slots=True)
class Verified:
    """A verified token: the caller's identity, accepted until `expires_at` (unix seconds, leeway included).

    `caller_key` is 32 hex digits of the SHA-256 of the ``tokenIdentifier``:
    a stable name for the user that reveals neither token nor identity.
    """

    identity: dict[str, Any]
    expires_at: float
    caller_key: str


def _convex_json(value: Any) -> Any:
    """A JSON claim as a Convex value: integers become floats (JavaScript numbers), recursively; object
    keys starting with ``$`` (not Convex field names) are left out."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _convex_json(v) for k, v in value.items() if not str(k).startswith("$")}
    if isinstance(value, list):
        return [_convex_json(v) for v in value]
    return str(value)


def identity_from_claims(claims: dict[str, Any]) -> dict[str, Any]:
    """Convex's ``UserIdentity`` for verified claims (see the module docstring)."""
    issuer, subject = claims["iss"], claims["sub"]
    identity: dict[str, Any] = {"tokenIdentifier": f"{issuer}|{subject}", "subject": subject, "issuer": issuer}
    for claim, value in claims.items():
        if claim in _DROPPED_CLAIMS or claim.startswith("$"):
            continue
        name = _CLAIM_NAMES.get(claim)
        if name is None:
            identity[claim] = _convex_json(value)
        elif name == "updatedAt" and isinstance(value, (int, float)) and not isinstance(value, bool):
            identity[name] = datetime.datetime.fromtimestamp(value, datetime.timezone.utc).isoformat() \
                .replace("+00:00", "Z")
        elif name == "address" and isinstance(value, dict):
            identity[name] = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        else:
            identity[name] = _convex_json(value)
    return identity


def acting_identity(attributes: Any) -> dict[str, Any]:
    """The identity an admin acts as: Convex's ``UserIdentityAttributes`` plus ``tokenIdentifier``."""
    if not isinstance(attributes, dict):
        raise AuthFailure("the identity to act as must be a JSON object (UserIdentityAttributes)")
    subject, issuer = attributes.get("subject"), attributes.get("issuer")
    if not isinstance(subject, str) or not isinstance(issuer, str):
        raise AuthFailure("the identity to act as needs string 'subject' and 'issuer' fields")
    identity = _convex_json(attributes)
    if not isinstance(identity.get("tokenIdentifier"), str):
        identity["tokenIdentifier"] = f"{issuer}|{subject}"
    return identity


def decode_acting_as(credentials: str) -> dict[str, Any] | None:
    """The identity in ``<admin key>:<base64 of JSON identity>`` (``setAdminAuth(key, identity)``), or None."""
    _key, sep, encoded = credentials.partition(":")
    if not sep or not encoded.strip():
        return None
    encoded = encoded.strip()
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        attributes = orjson.loads(raw)
    except (binascii.Error, ValueError):
        raise AuthFailure("the identity after the admin key must be base64 of a JSON object") from None
    return acting_identity(attributes)


def _issuer_key(issuer: str) -> str:
    return issuer.rstrip("/")


class _FetchError(Exception):
    """One failed try at fetching a provider document."""


class KeySet:
    """One provider's signing keys: inline, or fetched (and refetched) from its URL."""

    def __init__(self, provider: AuthProvider) -> None:
        self.provider = provider
        self.by_kid: dict[str, tuple[str, Any]] = {}  # kid -> (algorithm, key)
        self.without_kid: list[tuple[str, Any]] = []
        self.fetched_at: float | None = None  # monotonic time of the last successful fetch
        self.last_attempt = float("-inf")
        self.last_error: str | None = None
        self._fetch: asyncio.Future[None] | None = None
        if isinstance(provider.jwks, dict):
            self.fetched_at = float("inf")  # never stale
            try:
                self._install(provider.jwks)
            except _FetchError as exc:
                self.last_error = f"its inline JWKS: {exc}"
                log.warning("auth provider %s: %s", provider.describe(), self.last_error)

    @property
    def fetched(self) -> bool:
        return self.fetched_at is not None

    def _install(self, document: Any) -> None:
        """Replace the keys with those of a JWKS document usable for signatures."""
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise _FetchError("not a JWKS document ({\"keys\": [...]})")
        by_kid: dict[str, tuple[str, Any]] = {}
        without_kid: list[tuple[str, Any]] = []
        for jwk in document["keys"]:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                continue
            kty = jwk.get("kty")
            algorithm = _KEY_ALGORITHMS.get((kty, jwk.get("crv") if kty == "EC" else None))
            if algorithm is None or jwk.get("alg", algorithm) != algorithm \
                    or algorithm not in self.provider.algorithms:
                continue
            try:
                key = jwt.PyJWK(jwk, algorithm=algorithm).key
            except (jwt.PyJWTError, ValueError, TypeError) as exc:
                log.warning("auth provider %s: skipping a malformed key (%s)", self.provider.issuer, exc)
                continue
            kid = jwk.get("kid")
            if isinstance(kid, str):
                by_kid[kid] = (algorithm, key)
            else:
                without_kid.append((algorithm, key))
        if not by_kid and not without_kid:  # (a glitch must not replace working keys by none)
            raise _FetchError(f"the JWKS has no usable {'/'.join(self.provider.algorithms)} signing key")
        self.by_kid, self.without_kid = by_kid, without_kid

    def candidates(self, kid: Any, algorithm: str) -> list[Any]:
        """Keys that may have signed a token with this header (`kid` given: only that key)."""
        if isinstance(kid, str):
            found = self.by_kid.get(kid)
            return [found[1]] if found is not None and found[0] == algorithm else []
        return [key for alg, key in [*self.without_kid, *self.by_kid.values()] if alg == algorithm]

    def wants_fetch(self, kid: Any, min_interval: float) -> bool:
        """Whether to fetch (or wait for the fetch in flight) before verifying: never fetched, stale, or an
        unknown `kid` (rotation)."""
        if isinstance(self.provider.jwks, dict):
            return False
        if self._fetch is not None and not self._fetch.done():
            return True
        now = time.monotonic()
        if now - self.last_attempt < min_interval:
            return False
        if self.fetched_at is None or now - self.fetched_at > KEYS_MAX_AGE_SECONDS:
            return True
        return isinstance(kid, str) and kid not in self.by_kid

    async def refresh(self) -> None:
        """Fetch the keys (one fetch at a time, shared by concurrent callers); AuthFailure if unreachable."""
        if self._fetch is None or self._fetch.done():
            self._fetch = asyncio.ensure_future(self._fetch_keys())
        await asyncio.shield(self._fetch)

    async def _fetch_keys(self) -> None:
        self.last_attempt = time.monotonic()
        provider = self.provider
        error = "no attempt"
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for attempt in range(FETCH_ATTEMPTS):
                if attempt:
                    await asyncio.sleep(FETCH_BACKOFF_SECONDS[min(attempt, len(FETCH_BACKOFF_SECONDS)) - 1])
                try:
                    url = provider.jwks if isinstance(provider.jwks, str) else await self._discover(http)
                    self._install(await _get_json(http, url))
                except _FetchError as exc:
                    error = str(exc)
                    continue
                self.fetched_at = time.monotonic()
                self.last_error = None
                log.info("auth provider %s: %d signing key(s) loaded", provider.issuer,
                         len(self.by_kid) + len(self.without_kid))
                return
        self.last_error = f"its keys cannot be fetched: {error}"
        log.warning("auth provider %s cannot be reached: %s", provider.describe(), error)
        raise AuthFailure(f"auth provider {provider.describe()} cannot be reached: {error}")

    async def _discover(self, http: aiohttp.ClientSession) -> str:
        """The OIDC provider's ``jwks_uri`` from its discovery document."""
        url = _issuer_key(self.provider.issuer) + "/.well-known/openid-configuration"
        document = await _get_json(http, url)
        jwks_uri = document.get("jwks_uri") if isinstance(document, dict) else None
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise _FetchError(f"GET {url}: the discovery document has no jwks_uri")
        return jwks_uri


async def _get_json(http: aiohttp.ClientSession, url: str) -> Any:
    """GET a JSON document of bounded size; `_FetchError` saying what went wrong."""
    try:
        async with http.get(url, headers={"Accept": "application/json"}) as response:
            if response.status != 200:
                raise _FetchError(f"GET {url}: HTTP {response.status}")
            body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise _FetchError(f"GET {url}: {type(exc).__name__}: {exc}".rstrip(": ")) from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise _FetchError(f"GET {url}: the document is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _FetchError(f"GET {url}: the answer is not JSON") from None


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a token, unverified, to pick the provider and key; AuthFailure when it is not a JWT.

    Only routing: `Verifier._decode` has PyJWT parse and check the token again,
    and the identity comes from what PyJWT verified. (Decoded here directly:
    PyJWT's unverified decode costs as much as a verification.)
    """
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise AuthFailure("the token is not a JWT (empty or over 16 KiB)")
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthFailure("the token is not a valid JWT: expected three dot-separated segments")
    try:
        header, claims = (orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
                          for part in parts[:2])
    except (binascii.Error, ValueError):
        raise AuthFailure("the token is not a valid JWT: its header or claims are not base64url JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise AuthFailure("the token is not a valid JWT: its header and claims must be JSON objects")
    return header, claims


class Verifier:
    """Verifies tokens against a set of providers, caching keys and verified tokens."""

    def __init__(self, providers: tuple[AuthProvider, ...]) -> None:
        self.providers: tuple[AuthProvider, ...] = ()
        self.min_refetch_seconds = MIN_REFETCH_SECONDS
        self._keysets: dict[Any, KeySet] = {}
        self._by_issuer: dict[str, list[tuple[AuthProvider, KeySet]]] = {}
        self._cache: OrderedDict[str, Verified] = OrderedDict()
        self.configure(providers)

    def configure(self, providers: tuple[AuthProvider, ...]) -> None:
        """Use these providers from now on (after a reload): keys of unchanged key sources are kept."""
        keysets: dict[Any, KeySet] = {}
        by_issuer: dict[str, list[tuple[AuthProvider, KeySet]]] = {}
        for provider in providers:
            jwks = provider.jwks if not isinstance(provider.jwks, dict) else orjson.dumps(
                provider.jwks, option=orjson.OPT_SORT_KEYS)
            source = (provider.type, provider.issuer, jwks, provider.algorithms)
            keyset = keysets.get(source) or self._keysets.get(source)
            if keyset is None or keyset.provider.algorithms != provider.algorithms:
                keyset = KeySet(provider)
            keysets[source] = keyset
            by_issuer.setdefault(_issuer_key(provider.issuer), []).append((provider, keyset))
        self.providers, self._keysets, self._by_issuer = providers, keysets, by_issuer
        self._cache.clear()

    # -- the hot path ---------------------------------------------------------------
    def verify_now(self, token: str) -> Verified | None:
        """A verified token without waiting: from the cache, or checked with keys in memory.

        None when keys must be fetched first (then call `verify`); AuthFailure
        when the token is not accepted.
        """
        hit = self._cache.get(token)
        if hit is not None:
            if hit.expires_at < time.time():
                del self._cache[token]
                raise AuthFailure("the token has expired")
            self._cache.move_to_end(token)
            return hit
        header, claims = _peek(token)
        candidates = self._providers_for(header, claims)
        if any(keyset.wants_fetch(header.get("kid"), self.min_refetch_seconds) for _, keyset in candidates):
            return None
        return self._check(token, header, claims, candidates)

    async def verify(self, token: str) -> Verified:
        """Verify a token, fetching the providers' keys first when needed; AuthFailure when not accepted."""
        verified = self.verify_now(token)
        if verified is not None:
            return verified
        header, claims = _peek(token)
        candidates = self._providers_for(header, claims)
        unreachable: list[str] = []
        for _, keyset in candidates:
            if keyset.wants_fetch(header.get("kid"), self.min_refetch_seconds):
                try:
                    await keyset.refresh()
                except AuthFailure as exc:
                    unreachable.append(str(exc))
        try:
            return self._check(token, header, claims, candidates)
        except AuthFailure as exc:
            if unreachable and not any(keyset.fetched for _, keyset in candidates):
                raise AuthFailure("; ".join(unreachable)) from None
            raise exc

    # -- checks -----------------------------------------------------------------------
    def _providers_for(self, header: dict[str, Any], claims: dict[str, Any]) -> list[tuple[AuthProvider, KeySet]]:
        if not self.providers:
            raise AuthFailure("this deployment has no auth provider configured (auth.config.py); "
                              "user tokens cannot be verified")
        issuer = claims.get("iss")
        if not isinstance(issuer, str):
            raise AuthFailure("the token has no 'iss' (issuer) claim")
        found = self._by_issuer.get(_issuer_key(issuer))
        if not found:
            known = ", ".join(sorted({p.issuer for p in self.providers}))
            raise AuthFailure(f"no auth provider matches the token's issuer {issuer!r} "
                              f"(auth.config.py accepts: {known})")
        algorithm = header.get("alg")
        if not any(algorithm in p.algorithms for p, _ in found):
            accepted = ", ".join(sorted({a for p, _ in found for a in p.algorithms}))
            raise AuthFailure(f"the token's algorithm {algorithm!r} is not accepted for issuer {issuer!r} "
                              f"(accepted: {accepted})")
        return found

    def _check(self, token: str, header: dict[str, Any], claims: dict[str, Any],
               candidates: list[tuple[AuthProvider, KeySet]]) -> Verified:
        algorithm, kid = header.get("alg"), header.get("kid")
        problems: list[str] = []
        for provider, keyset in candidates:
            if algorithm not in provider.algorithms:
                continue
            keys = keyset.candidates(kid, algorithm)
            if not keys:
                why = f"no {algorithm} signing key" + (f" with kid {kid!r}" if isinstance(kid, str) else "")
                if keyset.last_error is not None:
                    why += f" ({keyset.last_error})"
                problems.append(f"{why} at auth provider {provider.describe()}")
                continue
            for key in keys:
                try:
                    verified = self._decode(token, key, algorithm, provider)
                except jwt.InvalidSignatureError:
                    continue
                except jwt.ExpiredSignatureError:
                    exp = claims.get("exp")
                    ago = f" {time.time() - exp:.0f} s ago" if isinstance(exp, (int, float)) else ""
                    raise AuthFailure(f"the token expired{ago}") from None
                except jwt.ImmatureSignatureError:
                    raise AuthFailure("the token is not valid yet (nbf or iat is in the future)") from None
                except jwt.InvalidAudienceError:
                    problems.append(f"its audience {claims.get('aud')!r} is not {provider.application_id!r} "
                                    f"(auth provider {provider.describe()})")
                    break
                except jwt.MissingRequiredClaimError as exc:
                    raise AuthFailure(f"the token lacks the {exc.claim!r} claim") from None
                except jwt.PyJWTError as exc:
                    problems.append(f"{exc} (auth provider {provider.describe()})")
                    break
                self._remember(token, verified)
                return verified
            else:
                problems.append(f"its signature does not verify with the keys of auth provider "
                                f"{provider.describe()}")
        raise AuthFailure("the token is not accepted: " + "; ".join(problems))

    def _decode(self, token: str, key: Any, algorithm: str, provider: AuthProvider) -> Verified:
        """Verify signature and claims with one key; raises PyJWT's errors or AuthFailure."""
        claims = jwt.decode(token, key, algorithms=[algorithm], audience=provider.application_id,
                            leeway=LEEWAY_SECONDS,
                            options={"require": ["exp", "iss", "sub"],
                                     "verify_aud": provider.application_id is not None})
        if _issuer_key(str(claims.get("iss"))) != _issuer_key(provider.issuer):
            raise jwt.InvalidIssuerError("wrong issuer")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise AuthFailure("the token's 'sub' (subject) claim must be a non-empty string")
        iat = claims.get("iat")
        if isinstance(iat, (int, float)) and iat > time.time() + LEEWAY_SECONDS:
            raise jwt.ImmatureSignatureError("iat in the future")
        identity = identity_from_claims(claims)
        return Verified(identity, float(claims["exp"]) + LEEWAY_SECONDS,
                        hashlib.sha256(identity["tokenIdentifier"].encode()).hexdigest()[:32])

    def _remember(self, token: str, verified: Verified) -> None:
        cache = self._cache
        cache[token] = verified
        if len(cache) > TOKEN_CACHE_SIZE:
            cache.popitem(last=False)


_verifiers: "weakref.WeakKeyDictionary[Any, Verifier]" = weakref.WeakKeyDictionary()


def verifier_for(node: Any) -> Verifier:
    """The node's `Verifier`, following its app's providers across reloads (made on first use)."""
    providers = node.app.auth_providers
    verifier = _verifiers.get(node)
    if verifier is None:
        verifier = _verifiers[node] = Verifier(providers)
    elif verifier.providers is not providers:
        verifier.configure(providers)
    return verifier


__all__ = ["AuthFailure", "Verified", "Verifier", "acting_identity", "decode_acting_as", "identity_from_claims",
           "verifier_for"]
