"""HTTP API hardening: undecodable headers and bodies, and Idempotency-Key scoped to the caller.

* An ``Authorization`` header that is not ASCII, a bad ``Content-Encoding``
  body or any body that cannot be decoded gets HTTP 400 with a one-line
  message - not a 500, and no traceback in the server's log.
* ``Idempotency-Key`` namespaces are per caller (anonymous, admin, each user
  - here the admin acting as two users): the same key from two callers runs two mutations.
"""
from __future__ import annotations

import base64
import gzip
from typing import Any

import aiohttp
import orjson

from tests.gateway.served_node import raw_request

QUERY = b'{"path":"lists:all_lists","args":{}}'


def head(path: str, *headers: bytes) -> bytes:
    return b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + \
        b"".join(h + b"\r\n" for h in headers)


def one_line_json(status: int, body: bytes) -> dict[str, Any]:
    decoded = orjson.loads(body)
    assert "\n" not in decoded["message"] and decoded["message"].strip(), decoded
    return decoded


async def test_undecodable_headers_and_bodies_get_400_without_a_traceback(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("kitchen")
    for header in (b"Authorization: Bearer \xff\xfe\xe9", b"Authorization: Convex \xc3\xa9t\xc3\xa9",
                   b"Authorization: Convex tape_admin_\x80"):
        status, body = await raw_request(server.url, head("/api/query", header), QUERY)
        assert status == 400, (header, status, body)
        assert one_line_json(status, body) == {"code": "BadHeader", "message": "Authorization header must be ASCII"}
    status, body = await raw_request(server.url, head("/api/mutation", b"Idempotency-Key: k:\xc2\xb2"),
                                     b'{"path":"lists:create","args":{"name":"x"}}')
    assert status == 400, body
    assert one_line_json(status, body) == {"code": "BadHeader", "message": "Idempotency-Key header must be ASCII"}
    # The admin API shares the key check: a non-ASCII key is simply not the key.
    status, body = await raw_request(server.url, head("/api/admin/query_at", b"Authorization: Convex \xff"), QUERY)
    assert status == 401, (status, body)

    for encoding, payload in ((b"gzip", QUERY), (b"gzip", b"\x1f\x8b" + b"\xff" * 30), (b"deflate", b"\x00" * 40)):
        status, body = await raw_request(server.url, head("/api/query", b"Content-Encoding: " + encoding), payload)
        assert status == 400, (encoding, status, body)
        decoded = one_line_json(status, body)
        assert decoded["code"] == "BadBody", decoded
        assert decoded["message"].startswith("request body could not be read: "), decoded
    # A stream cut short decodes to a prefix: refused as what it is, JSON that does not parse.
    status, body = await raw_request(server.url, head("/api/query", b"Content-Encoding: gzip"),
                                     gzip.compress(QUERY)[:-12])
    assert status == 400 and one_line_json(status, body)["code"] in ("BadBody", "BadJsonBody"), body
    status, body = await raw_request(server.url, head("/api/query", b"Content-Encoding: br"), QUERY)
    assert status == 400, (status, body)  # refused by aiohttp's parser (no Brotli decoder): one line too
    status, body = await raw_request(server.url, head("/api/query", b"Content-Encoding: gzip"), gzip.compress(QUERY))
    assert status == 200 and orjson.loads(body)["status"] == "success", body  # a good gzip body is fine

    async with aiohttp.ClientSession() as http:  # the server is healthy
        async with http.post(server.url + "/api/query", data=QUERY) as r:
            assert r.status == 200
    log = server.output()
    assert "Traceback" not in log and " 500 " not in log, log


def _identity(subject: str) -> str:
    """An identity to act as, encoded the way the npm client's setAdminAuth(key, identity) sends it."""
    return base64.b64encode(orjson.dumps({"subject": subject, "issuer": "https://idp.example"})).decode()


async def test_idempotency_keys_are_scoped_to_the_caller(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("kitchen")
    admin_key = (server.data_dir / "admin_key").read_text().strip()
    callers: dict[str, dict[str, str]] = {
        "anonymous": {},
        "admin": {"Authorization": f"Convex {admin_key}"},
        "user A": {"Authorization": f"Convex {admin_key}:{_identity('a')}"},
        "user B": {"Authorization": f"Convex {admin_key}:{_identity('b')}"},
    }
    async with aiohttp.ClientSession() as http:
        async def create(name: str, headers: dict[str, str]) -> tuple[int, Any]:
            body = orjson.dumps({"path": "lists:create", "args": {"name": name}})
            async with http.post(server.url + "/api/mutation", data=body,
                                 headers={**headers, "Idempotency-Key": "shared-key:1"}) as r:
                return r.status, orjson.loads(await r.read())

        first = {who: await create(who, headers) for who, headers in callers.items()}
        again = {who: await create(who, headers) for who, headers in callers.items()}
        assert all(status == 200 for status, _ in first.values()), first
        assert again == first  # each caller's retry gets its own first answer
        assert len({body["value"] for _, body in first.values()}) == len(callers)
        async with http.post(server.url + "/api/query", data=QUERY) as r:
            names = sorted(d["name"] for d in orjson.loads(await r.read())["value"])
        assert names == sorted(callers), names
