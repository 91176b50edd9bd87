"""Slowloris: clients that open connections and send their request slowly, or not at all.

aiohttp on its own never times out a socket that sent part of a request
header. Tape closes a connection that has not delivered a complete header
within `ServerConfig.header_timeout` (15 s by default, `--header-timeout`) and answers 408 to a
request whose body has not arrived within `body_timeout`, while everyone else
is served normally.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from tests.gateway.served_node import closed_within, host_port, served_node
from tests.reliability.reliability_wire import WsClient, http_call

SLOW_SOCKETS = 50


async def _trickle(writer: asyncio.StreamWriter, stop: asyncio.Event, every: float = 0.5) -> None:
    """Keep sending one more header byte every `every` seconds (a slowloris client), until stopped or cut off."""
    while not stop.is_set():
        try:
            writer.write(b"a")
            await writer.drain()
        except (ConnectionError, RuntimeError):
            return
        try:
            await asyncio.wait_for(stop.wait(), every)
        except asyncio.TimeoutError:
            pass


async def test_partial_headers_are_cut_off_while_other_clients_are_served(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("kitchen", extra=["--header-timeout", "3"])
    host, port = host_port(server.url)
    stop = asyncio.Event()
    opened: list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]] = []
    trickles = []
    for i in range(SLOW_SOCKETS):
        reader, writer = await asyncio.open_connection(host, port)
        if i % 10 == 9:
            pass  # an idle connection: nothing at all is sent
        else:
            writer.write(b"POST /api/query HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            trickles.append(asyncio.create_task(_trickle(writer, stop)))
        opened.append((time.monotonic(), reader, writer))
    try:
        async def lifetime(started: float, reader: asyncio.StreamReader) -> float | None:
            return None if await closed_within(reader, 12.0) is None else time.monotonic() - started
        lifetimes = asyncio.gather(*(lifetime(t, r) for t, r, _ in opened))
        # Meanwhile a normal client subscribes, mutates and sees its update, over HTTP and WebSocket.
        async with aiohttp.ClientSession() as http:
            client = await WsClient(server.url).connect(http)
            qid = await client.subscribe("lists:all_lists")
            status, body = await http_call(http, server.url, "mutation", "lists:create", {"name": "meanwhile"})
            assert status == 200, body
            await client.wait_value(qid, lambda v: [d["name"] for d in v] == ["meanwhile"], timeout=5)
            assert client.fatal is None
            await client.close()
        seconds = await lifetimes
    finally:
        stop.set()
        await asyncio.gather(*trickles, return_exceptions=True)
        for _, _, writer in opened:
            writer.close()
    still_open = sum(1 for s in seconds if s is None)
    assert still_open == 0, f"{still_open} of {SLOW_SOCKETS} slow sockets still open after 12 s"
    assert max(s for s in seconds if s is not None) < 6.0, seconds
    # ... and the server still serves new clients afterwards.
    async with aiohttp.ClientSession() as http:
        status, body = await http_call(http, server.url, "query", "lists:all_lists", {})
        assert status == 200 and len(body["value"]) == 1


async def test_a_kept_alive_connection_that_goes_quiet_mid_header_is_closed(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data", header_timeout=1.0) as (_node, url):
        host, port = host_port(url)
        reader, writer = await asyncio.open_connection(host, port)
        body = b'{"path":"lists:all_lists","args":{}}'
        writer.write(b"POST /api/query HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200"), head
        writer.write(b"POST /api/query HTTP/1.1\r\nHost: x\r\n")  # the next request never completes
        started = time.monotonic()
        rest = await closed_within(reader, 5.0)
        writer.close()
        assert rest is not None, "a connection idling mid-header was never closed"
        assert time.monotonic() - started < 3.0


async def test_a_slow_body_gets_408_and_the_connection_is_closed(tmp_path: Path) -> None:
    async with served_node(tmp_path / "data", body_timeout=1.0) as (_node, url):
        host, port = host_port(url)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /api/mutation HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"path\":")
        stop = asyncio.Event()
        trickle = asyncio.create_task(_trickle(writer, stop, every=0.2))
        started = time.monotonic()
        raw = await closed_within(reader, 6.0)
        stop.set()
        await trickle
        writer.close()
        assert raw is not None, "a request whose body never completes held its connection open"
        assert time.monotonic() - started < 4.0
        assert raw.startswith(b"HTTP/1.1 408"), raw[:200]
        assert b'"code":"RequestTimeout"' in raw and b"did not arrive within 1 s" in raw
        async with aiohttp.ClientSession() as http:  # others are unaffected
            status, body = await http_call(http, url, "mutation", "lists:create", {"name": "fine"})
            assert status == 200, body
