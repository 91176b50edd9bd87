"""HTTP actions served on the site port: webhooks, routing, streaming both ways, errors, limits, auth, CORS."""
from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import orjson
import pytest

from engine.limits import DEFAULT_LIMITS
from gateway.replica import ADMIN_KEY_ENV
from tests.gateway.auth_issuer import TestIssuer, oidc_provider, write_auth_config
from tests.gateway.served_node import closed_within, host_port
from tests.gateway.site_node import served_site

APPS = Path(__file__).resolve().parents[1] / "apps"


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[Any, str, str]]:
    async with served_site(APPS / "http", tmp_path / "data", max_http_body_bytes=64 << 10) as running:
        yield running


async def _get(url: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.request(kw.pop("method", "GET"), url, **kw) as response:
            return response.status, dict(response.headers), await response.read()


async def test_a_json_webhook_writes_through_run_mutation_and_a_query_sees_it(site) -> None:
    node, api, url = site
    status, _, body = await _get(url + "/stripe/webhook", method="POST", json={"type": "charge", "amount": 42})
    assert status == 200 and "received" in orjson.loads(body)
    status, _, body = await _get(api + "/api/query", method="POST", json={"path": "events:all", "args": {}})
    assert orjson.loads(body)["value"] == [{"kind": "charge", "amount": 42}]


async def test_routes_by_exact_path_then_longest_prefix_and_by_method(site) -> None:
    _, _, url = site
    status, headers, body = await _get(url + "/echo/a/b?x=1&y=two", headers={"X-Test": "hi"})
    echoed = orjson.loads(body)
    assert status == 200 and headers["X-Echo"] == "yes" and headers["Content-Type"].startswith("application/json")
    assert echoed["method"] == "GET" and echoed["path"] == "/echo/a/b" and echoed["query"] == {"x": "1", "y": "two"}
    assert echoed["header"] == "hi" and echoed["url"].endswith("/echo/a/b?x=1&y=two")
    status, _, body = await _get(url + "/echo/a", method="POST", data=b"posted")
    assert status == 200 and orjson.loads(body)["text"] == "posted"
    status, headers, body = await _get(url + "/echo/exact")
    assert (status, body) == (200, b"exact") and headers["Content-Type"].startswith("text/plain")


async def test_unmatched_paths_are_404_and_other_methods_405(site) -> None:
    _, _, url = site
    status, _, body = await _get(url + "/nowhere")
    assert status == 404 and orjson.loads(body)["code"] == "NotFound"
    status, headers, body = await _get(url + "/stripe/webhook")  # a GET on a POST-only path
    assert status == 405 and headers["Allow"] == "POST" and orjson.loads(body)["code"] == "MethodNotAllowed"
    status, headers, _ = await _get(url + "/echo/x", method="DELETE")
    assert status == 405 and headers["Allow"] == "GET, POST"
    status, headers, body = await _get(url + "/echo/exact", method="HEAD")  # HEAD runs the GET route
    assert status == 200 and body == b"" and headers["Content-Length"] == "5"
    host, port = host_port(url)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"HEAD /numbers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # a streamed GET route
    raw = await closed_within(reader, 5)
    writer.close()
    assert raw is not None and raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"\r\n\r\n")  # headers only


async def test_a_streamed_response_arrives_chunk_by_chunk(site) -> None:
    _, _, url = site
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/numbers?n=500") as response:
            assert response.status == 200 and response.headers.get("Transfer-Encoding") == "chunked"
            text = (await response.read()).decode()
    assert text.splitlines() == [str(i) for i in range(500)]


async def test_framing_is_the_servers_and_bodiless_statuses_send_no_body(site) -> None:
    _, _, url = site
    status, headers, body = await _get(url + "/framing")
    assert (status, body, headers["Content-Length"], headers["X-Kept"]) == (200, b"four", "4", "1")
    assert "Transfer-Encoding" not in headers
    host, port = host_port(url)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /framing?stream=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = await closed_within(reader, 5)
    writer.close()
    assert raw is not None and raw.startswith(b"HTTP/1.1 304") and b"never sent" not in raw


async def test_a_request_body_is_streamed_in_chunks(site) -> None:
    _, _, url = site

    async def body() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"x" * 5000
            await asyncio.sleep(0.01)
    status, _, payload = await _get(url + "/count", method="POST", data=body())  # chunked: no Content-Length
    result = orjson.loads(payload)
    assert status == 200 and result["bytes"] == 40_000 and result["chunks"] >= 2


async def test_bodies_over_the_limit_are_413_whether_declared_or_streamed(site) -> None:
    _, _, url = site
    status, _, body = await _get(url + "/count", method="POST", data=b"x" * (65 << 10))
    assert status == 413 and orjson.loads(body)["code"] == "PayloadTooLarge"

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"y" * 4096
    status, _, body = await _get(url + "/count", method="POST", data=endless())  # no Content-Length
    assert status == 413 and "65536 byte limit" in orjson.loads(body)["message"]


async def test_handler_errors_are_500_with_a_request_id_and_no_traceback(site, caplog) -> None:
    _, _, url = site
    with caplog.at_level(logging.ERROR, logger="tape.http_actions"):
        status, _, body = await _get(url + "/boom")
    answer = orjson.loads(body)
    assert status == 500 and answer["code"] == "InternalServerError" and len(answer["requestId"]) == 16
    assert "secret" not in body.decode() and "Traceback" not in body.decode()
    logged = [r for r in caplog.records if answer["requestId"] in r.getMessage()]
    assert logged and logged[0].exc_info is not None and "secret internals" in str(logged[0].exc_info[1])
    status, _, body = await _get(url + "/not-a-response")
    assert status == 500 and "requestId" in orjson.loads(body)
    status, _, body = await _get(url + "/stripe/webhook", method="POST", data=b"{not json")
    assert status == 400 and "not valid JSON" in orjson.loads(body)["message"]


async def test_handlers_run_off_the_server_loop_and_within_the_action_timeout(tmp_path: Path) -> None:
    limits = replace(DEFAULT_LIMITS, max_action_seconds=0.5)
    async with served_site(APPS / "http", tmp_path / "data", limits=limits) as (_, api, url):
        async with aiohttp.ClientSession() as session:
            spinning = asyncio.ensure_future(session.get(url + "/spin?seconds=0.3"))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            async with session.get(api + "/version") as response:  # answered while the handler spins
                assert response.status == 200
            assert time.monotonic() - started < 0.25
            response = await spinning
            assert response.status == 200 and await response.text() == "spun"
            async with session.get(url + "/spin?seconds=5") as response:
                answer = await response.json()
        assert response.status == 500 and answer["code"] == "Timeout" and "0.5s" in answer["message"]


async def test_cors_helper_answers_preflights_and_marks_responses(site) -> None:
    _, _, url = site
    status, headers, _ = await _get(url + "/api/items", method="OPTIONS", headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert headers["Access-Control-Allow-Methods"] == "GET, OPTIONS" and "Authorization" in \
        headers["Access-Control-Allow-Headers"]
    status, headers, _ = await _get(url + "/api/items", method="OPTIONS", headers={"Origin": "https://evil.example"})
    assert status == 403
    status, headers, _ = await _get(url + "/api/items", headers={"Origin": "https://app.example.com"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert headers["Vary"] == "Origin"
    status, headers, _ = await _get(url + "/echo/x", headers={"Origin": "https://app.example.com"})
    assert "Access-Control-Allow-Origin" not in headers  # only the routes the helper covers


async def test_bearer_tokens_give_the_user_identity(tmp_path: Path) -> None:
    app = tmp_path / "app"
    shutil.copytree(APPS / "http", app)
    with TestIssuer() as issuer:
        write_auth_config(app, [oidc_provider(issuer)])
        async with served_site(app, tmp_path / "data") as (_, _, url):
            token = issuer.token("alice")
            status, _, body = await _get(url + "/whoami", headers={"Authorization": f"Bearer {token}"})
            answer = orjson.loads(body)
            assert status == 200 and answer["identity"]["subject"] == "alice"
            assert answer["query"] == answer["identity"]  # the functions it calls see the same user
            status, _, body = await _get(url + "/whoami")
            assert status == 200 and orjson.loads(body) == {"identity": None, "query": None}
            bad = issuer.token("alice", ttl=-600)
            status, _, body = await _get(url + "/whoami", headers={"Authorization": f"Bearer {bad}"})
            assert status == 401 and "Could not verify" in orjson.loads(body)["error"]
            status, _, body = await _get(url + "/whoami", headers={"Authorization": "Basic dXNlcjpwdw=="})
            assert status == 401 and "Bearer" in orjson.loads(body)["error"]


async def test_a_slow_client_body_is_408(tmp_path: Path) -> None:
    async with served_site(APPS / "http", tmp_path / "data", body_timeout=0.3) as (_, _, url):
        host, port = host_port(url)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial")
        raw = await closed_within(reader, 5)
        writer.close()
    assert raw is not None and raw.startswith(b"HTTP/1.1 408") and b"RequestTimeout" in raw


async def test_a_replica_serves_http_actions_and_forwards_their_mutations(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    async with served_site(APPS / "http", tmp_path / "committer") as (committer, committer_api, _):
        monkeypatch.setenv(ADMIN_KEY_ENV, committer.admin.value)
        async with served_site(APPS / "http", tmp_path / "replica", role="replica", committer_url=committer_api,
                               log_url=str(tmp_path / "committer" / "log")) as (_, replica_api, replica_site):
            status, _, _ = await _get(replica_site + "/stripe/webhook", method="POST",
                                      json={"type": "refund", "amount": 7})
            assert status == 200
            for base in (replica_api, committer_api):  # read-your-writes on the replica, committed on the committer
                _, _, body = await _get(base + "/api/query", method="POST", json={"path": "events:all", "args": {}})
                assert orjson.loads(body)["value"] == [{"kind": "refund", "amount": 7}]


async def test_a_client_leaving_a_streamed_response_frees_its_worker(site) -> None:
    node, _, url = site
    async with aiohttp.ClientSession() as session:
        response = await session.get(url + "/forever")
        assert len(await response.content.read(4096)) > 0
        assert node.runtime.actions._running  # the handler is streaming on a worker
        response.close()  # the client goes away mid-body
    deadline = time.monotonic() + 5
    while node.runtime.actions._running and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not node.runtime.actions._running and node.runtime.actions.abandoned == 0
    status, _, body = await _get(url + "/echo/exact")
    assert (status, body) == (200, b"exact")
