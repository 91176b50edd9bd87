"""Function logs, ConvexError, validation wording and the int/float rule as the official clients see them,
and `tape logs` following a live deployment (tests/apps/fidelity)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.gateway.test_official_js_client import _node_scripts_installed, http_call, run_ok  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def test_npm_clients_print_log_lines_and_parse_convex_errors(server_factory) -> None:
    server = server_factory("fidelity")
    events = run_ok("fidelity.mjs", {"url": server.url})
    console = [(e["client"], e["text"]) for e in events if e["event"] == "console"]
    steps = {e["name"]: e for e in events if e["event"] == "step"}
    for expected in [("ws", "[CONVEX Q(logs:hello)] [LOG] hello ada"),
                     ("ws", "[CONVEX Q(logs:hello)] [INFO] info for ada"),
                     ("ws", "[CONVEX Q(logs:hello)] [DEBUG] debug detail"),
                     ("ws", "[CONVEX M(logs:chatty)] [LOG] line 0"),
                     ("ws", "[CONVEX M(logs:chatty)] [LOG] line 1"),
                     ("ws", "[CONVEX A(logs:tagged)] [LOG] act 0"),
                     ("ws", "[CONVEX A(logs:tagged)] [ERROR] act done"),
                     ("ws", "[CONVEX M(logs:warn_and_fail)] [LOG] about to fail"),
                     ("ws", "[CONVEX M(logs:warn_and_fail)] [WARN] careful: 3"),
                     ("http", "[CONVEX Q(logs:hello)] [LOG] hello bob")]:
        assert expected in console, (expected, console)
    assert not any("Could not parse" in text for _, text in console), console
    # ConvexError, as public Convex apps test it: `err instanceof ConvexError && err.data.code === "NOPE"`.
    failed = steps["mutation_error"]
    assert not failed["ok"] and failed["isConvexError"] and failed["code"] == "NOPE"
    assert 'Uncaught ConvexError: {"code":"NOPE"}' in failed["message"]
    http_failed = steps["http_error"]
    assert http_failed["isConvexError"] and http_failed["code"] == "HTTP_NOPE"
    assert http_failed["data"] == {"code": "HTTP_NOPE", "n": 3}  # a number, not a BigInt
    # Numbers: len() arrives as a JS number; v.int64() positions (returns, schema) stay BigInt.
    assert steps["count"]["type"] == "number" and steps["count"]["plusOne"] == 4
    assert steps["numbers"]["types"] == {"exact": "bigint", "approx": "number", "plain": "number", "maybe": "bigint"}
    counters = steps["counters"]
    assert (counters["count"], counters["score"], counters["other"], counters["sum"]) == \
        ("bigint", "number", "number", 5.5)
    # Server errors worded as Convex words them.
    mismatch = steps["returns_mismatch"]
    assert not mismatch["ok"] and not mismatch["isConvexError"]
    assert "ReturnsValidationError: Value does not match validator.\nPath: .items[1].n\nValue: 5n\n" \
           "Validator: v.string()\nFunction: shapes:wrong_deep" in mismatch["message"]
    assert "ArgumentValidationError: Value does not match validator.\nPath: .count\nValue: 1\n" \
           "Validator: v.int64()" in steps["bad_args"]["message"]
    assert "Array length is too long (9000 > maximum length 8192)" in steps["too_long"]["message"]


def test_http_bodies_carry_log_lines(server_factory) -> None:
    server = server_factory("fidelity")
    status, body = http_call(server.url, "mutation", "logs:chatty", {"n": 2.0})
    assert status == 200 and body["logLines"] == ["[LOG] line 0", "[LOG] line 1"]
    status, body = http_call(server.url, "mutation", "logs:warn_and_fail")
    assert status == 560 and body["errorData"] == {"code": "NOPE"}
    assert body["errorMessage"] == 'Uncaught ConvexError: {"code":"NOPE"}'
    assert body["logLines"] == ["[LOG] about to fail", "[WARN] careful: 3"]
    status, body = http_call(server.url, "action", "logs:tagged", {"tag": "h", "lines": 1.0, "pause": 0.0})
    assert status == 200 and body["logLines"] == ["[LOG] h 0", "[ERROR] h done"]
    # The same lines are in the server's log with the function path and the request id.
    deadline = time.monotonic() + 5
    while "mutation logs:chatty [request " not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "mutation logs:chatty [request " in server.output() and "[LOG] line 1" in server.output()


def test_python_client_follows_the_int_float_rule(server_factory) -> None:
    from convex import ConvexClient  # the PyPI client

    server = server_factory("fidelity")
    client = ConvexClient(server.url)
    count = client.query("shapes:count", {"n": 3.0})
    assert count == 3 and type(count) is float
    numbers = client.query("shapes:numbers")  # int64 arrives as the PyPI client's ConvexInt64
    assert {k: type(v).__name__ for k, v in numbers.items()} == \
        {"exact": "ConvexInt64", "approx": "float", "plain": "float", "maybe": "ConvexInt64"}
    assert numbers["exact"].value == 5 and numbers["plain"] == 5.0


async def test_tape_python_client_follows_the_int_float_rule(server_factory, caplog) -> None:
    from client import Client

    server = server_factory("fidelity")
    caplog.set_level(logging.INFO, logger="tape.client.functions")
    async with Client(server.url) as tape:
        await tape.mutation("logs:chatty", {"n": 1.0})
        assert "[CONVEX M(logs:chatty)] [LOG] line 0" in [r.getMessage() for r in caplog.records]
        assert await tape.query("shapes:count", {"n": 3.0}) == 3.0
        numbers = await tape.query("shapes:numbers", {})
        assert {k: type(v) for k, v in numbers.items()} == {"exact": int, "approx": float, "plain": float, "maybe": int}
        assert await tape.query("shapes:big", {}) == [2**60, -(2**53), 2**53 + 1]
        assert [type(x) for x in await tape.query("shapes:big", {})] == [int, float, int]


def _tape(*args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "ops.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                            **kw)


def test_tape_logs_streams_live_with_a_function_filter(server_factory) -> None:
    server = server_factory("fidelity")
    follower = _tape("logs", server.url, "--data", str(server.data_dir), "--jsonl", "--function", "logs:chatty",
                     "--function", "shapes")
    lines: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: lines.extend(json.loads(x) for x in follower.stdout if x.strip()),
                              daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 15
        n = 0
        while not any(e.get("path") == "logs:chatty" for e in lines) and time.monotonic() < deadline:
            n += 1  # calls made before the follower connected are not streamed: call until one is
            http_call(server.url, "mutation", "logs:chatty", {"n": 1.0})
            time.sleep(0.2)
        http_call(server.url, "query", "logs:hello", {"who": "filtered out"})
        http_call(server.url, "mutation", "shapes:refuse", {"code": "X"})
        while not any(e.get("path") == "shapes:refuse" for e in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        follower.terminate()
        follower.wait(10)
    chatty = next(e for e in lines if e["path"] == "logs:chatty")
    assert chatty["kind"] == "mutation" and chatty["logLines"] == ["[LOG] line 0"] and chatty["requestId"]
    refused = next(e for e in lines if e["path"] == "shapes:refuse")
    assert refused["error"] == 'Uncaught ConvexError: {"code":"X","n":3}' and refused["logLines"] == []
    assert not any(e["path"] == "logs:hello" for e in lines)  # not asked for

    # History, as text, then stop.
    done = _tape("logs", server.url, "--data", str(server.data_dir), "--history", "50", "--no-follow")
    out, err = done.communicate(timeout=20)
    assert done.returncode == 0, err
    assert "[CONVEX M(logs:chatty)] [LOG] line 0" in out
    assert "[CONVEX Q(logs:hello)] [LOG] hello filtered out" in out
    assert "[CONVEX M(shapes:refuse)] Uncaught ConvexError" in out


def test_logs_endpoint_needs_the_admin_key(server_factory) -> None:
    server = server_factory("fidelity")
    try:
        urllib.request.urlopen(server.url + "/api/admin/logs?follow=0", timeout=5)
        raise AssertionError("expected 401")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    refused = _tape("logs", server.url, "--admin-key-file", str(server.data_dir / "nope"))
    _, err = refused.communicate(timeout=20)
    assert refused.returncode == 1 and "nope" in err
