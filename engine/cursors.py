"""Opaque, tamper-evident pagination cursors and query journals.

A cursor names a position in one query's index range. On the wire it is the
index key sealed with AES-SIV (deterministic authenticated encryption) under a
key derived from the deployment's secret; the query's range and order are the
associated data. So a cursor reveals no table, index or value, a changed
cursor is refused, a cursor of another query or deployment is refused, and
the same position always seals to the same string (a re-run that ends at the
same place sends byte-identical results, which the subscription layer relies
on to skip unchanged updates).

Errors say ``InvalidCursor`` as Convex's do: `usePaginatedQuery` restarts
pagination from the first page when a page fails with such a message.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from engine.errors import ArgumentError

KEY_CONTEXT = b"tape pagination cursor key v1"


class InvalidCursor(ArgumentError):
    """A cursor or journal that this deployment did not issue for this query."""


class CursorSealer:
    """Seals index keys into cursors and opens them again (one per deployment)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("cursor secret must be at least 16 bytes")
        self._aead = AESSIV(hmac.new(secret, KEY_CONTEXT, hashlib.sha512).digest())

    @classmethod
    def ephemeral(cls) -> "CursorSealer":
        """A sealer with a random key (cursors are valid for this process only)."""
        return cls(secrets.token_bytes(32))

    @classmethod
    def from_text(cls, secret: str) -> "CursorSealer":
        """A sealer keyed from a deployment secret string (e.g. the admin key)."""
        return cls(secret.encode("utf-8"))

    def seal(self, key: bytes, scope: bytes) -> str:
        """The cursor for index key `key` of the query whose range/order is `scope`."""
        sealed = self._aead.encrypt(key, [scope])
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(self, cursor: object, scope: bytes, field: str) -> bytes:
        """The index key inside `cursor`; `InvalidCursor` naming `field` if it is not one of ours for `scope`."""
        if type(cursor) is not str:
            raise InvalidCursor(f"InvalidCursor: {field} must be a string returned by paginate(), "
                                f"got {type(cursor).__name__}")
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            return self._aead.decrypt(raw, [scope])
        except (ValueError, InvalidTag):
            shown = cursor if len(cursor) <= 40 else cursor[:37] + "..."
            raise InvalidCursor(
                f"InvalidCursor: {field} {shown!r} is not a cursor of this query: it was altered, or it "
                "comes from a different query, index, order or deployment") from None


DEFAULT_SEALER = CursorSealer.ephemeral()
