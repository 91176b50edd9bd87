"""The unmodified official `convex` npm client (tests/js/*.mjs) against a real `tape dev` server.

Each test runs one of the Node scenario scripts in tests/js (one JSON config
argument, JSON lines on stdout, exit 0 = scenario passed) and checks what the
client saw, then asks the server over plain HTTP what was really stored.
The scripts need tests/js/node_modules (`make js` or `cd tests/js && npm ci`);
without it these tests fail, they never skip.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from values import from_wire, to_wire
from tests.server_process import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "tests" / "js"


@pytest.fixture(autouse=True)
def _node_scripts_installed() -> None:
    if shutil.which("node") is None:
        pytest.fail("`node` is not on PATH: the official JS client tests need Node.js 18+")
    if not (JS_DIR / "node_modules" / "convex" / "package.json").is_file() or \
            not (JS_DIR / "node_modules" / "ws" / "package.json").is_file():
        pytest.fail(f"{JS_DIR / 'node_modules'} is missing the `convex`/`ws` packages: "
                    f"run `make js` (or `cd tests/js && npm ci`) first")


# --- running the Node scripts -----------------------------------------------------------------

def _parse_lines(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            events.append(json.loads(line))
    return events


def run_script(script: str, config: dict[str, Any], timeout: float = 30.0) -> tuple[int, list[dict[str, Any]], str]:
    """Run tests/js/<script> to completion: (exit code, JSON events, stderr)."""
    proc = subprocess.run(["node", str(JS_DIR / script), json.dumps(config)], cwd=JS_DIR,
                          capture_output=True, text=True, timeout=timeout)
    try:
        events = _parse_lines(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{script} printed a non-JSON line ({exc}):\n{proc.stdout}\n{proc.stderr}") from None
    return proc.returncode, events, proc.stderr


def run_ok(script: str, config: dict[str, Any], timeout: float = 30.0) -> list[dict[str, Any]]:
    code, events, stderr = run_script(script, config, timeout)
    assert code == 0, f"{script} exited {code}:\n" + "\n".join(map(json.dumps, events)) + f"\n--- stderr:\n{stderr}"
    assert events[-1]["event"] == "done"
    return events


class LiveScript:
    """A Node script running in the background whose JSON lines are collected as they arrive."""

    def __init__(self, script: str, config: dict[str, Any]) -> None:
        self.script = script
        self.proc = subprocess.Popen(["node", str(JS_DIR / script), json.dumps(config)], cwd=JS_DIR,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._stderr: list[str] = []
        self._reader = threading.Thread(target=self._read_out, daemon=True)
        self._reader.start()
        threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True).start()  # type: ignore[arg-type]

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                with self._changed:
                    self.events.append(json.loads(line))
                    self._changed.notify_all()

    def acks(self) -> list[dict[str, Any]]:
        with self._changed:
            return [e for e in self.events if e["event"] == "ack"]

    def wait_for(self, predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
        """Block until predicate(events) holds; fail if the script exits or time runs out first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    break
                self._changed.wait(min(left, 0.1))
            else:
                return
        time.sleep(0.2)  # let the reader threads drain before describing the failure
        if not predicate(self.events):
            raise AssertionError(f"{self.script}: gave up waiting for {what}\n{self.describe()}")

    def finish(self, timeout: float) -> list[dict[str, Any]]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.script} did not finish in {timeout}s\n{self.describe()}") from None
        self._reader.join(5)  # every line read
        assert code == 0, f"{self.script} exited {code}\n{self.describe()}"
        return list(self.events)

    def describe(self) -> str:
        return "\n".join(map(json.dumps, self.events[-40:])) + "\n--- stderr:\n" + "".join(self._stderr)[-3000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def live_scripts():  # type: ignore[no-untyped-def]
    started: list[LiveScript] = []

    def start(script: str, config: dict[str, Any]) -> LiveScript:
        run = LiveScript(script, config)
        started.append(run)
        return run

    yield start
    for run in started:
        run.close()


# --- talking to the server directly (plain HTTP, independent of any client library) ----------

def http_call(url: str, kind: str, path: str, args: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"path": path, "args": to_wire(args or {}), "format": "convex_encoded_json"}).encode()
    request = urllib.request.Request(f"{url}/api/{kind}", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def server_value(url: str, kind: str, path: str, args: dict[str, Any] | None = None) -> Any:
    status, body = http_call(url, kind, path, args)
    assert status == 200 and body["status"] == "success", (status, body)
    return from_wire(body["value"])


def new_list(url: str, name: str = "groceries") -> str:
    return server_value(url, "mutation", "lists:create", {"name": name})


def updates(events: list[dict[str, Any]]) -> list[Any]:
    return [from_wire(e["value"]) for e in events if e["event"] == "update"]


# --- subscribe, mutate from another client, get the update --------------------------------------

def test_subscriber_sees_other_clients_mutations(server_factory) -> None:
    server = server_factory("kitchen")
    list_id = new_list(server.url)
    events = run_ok("subscribe_mutate.mjs", {
        "url": server.url,
        "query": {"path": "lists:items", "args": {"list_id": list_id}},
        "mutations": [{"path": "lists:add", "args": {"list_id": list_id, "text": "milk"}},
                      {"path": "lists:add", "args": {"list_id": list_id, "text": "eggs"}}],
    })
    seen = [[item["text"] for item in value] for value in updates(events)]
    assert seen == [[], ["milk"], ["milk", "eggs"]]
    ids = [from_wire(e["value"]) for e in events if e["event"] == "mutation" and e["ok"]]
    assert ids == [item["_id"] for item in updates(events)[-1]]
    assert server_value(server.url, "query", "lists:open_items", {"list_id": list_id}) == ["milk", "eggs"]


def test_subscriber_sees_toggle_and_remove(server_factory) -> None:
    server = server_factory("kitchen")
    list_id = new_list(server.url)
    item_id = server_value(server.url, "mutation", "lists:add", {"list_id": list_id, "text": "bread"})
    events = run_ok("subscribe_mutate.mjs", {
        "url": server.url,
        "query": {"path": "lists:items", "args": {"list_id": list_id}},
        "mutations": [{"path": "lists:toggle", "args": {"id": item_id}},
                      {"path": "lists:remove", "args": {"id": item_id}}],
    })
    seen = [[(item["text"], item["done"]) for item in value] for value in updates(events)]
    assert seen == [[("bread", False)], [("bread", True)], []]


# --- errors --------------------------------------------------------------------------------------

def test_errors_over_websocket(server_factory) -> None:
    server = server_factory("kitchen")
    list_id = new_list(server.url)
    events = run_ok("subscribe_mutate.mjs", {
        "url": server.url,
        "query": {"path": "lists:items", "args": {"list_id": list_id}},
        "mutations": [{"path": "lists:add", "args": {"list_id": list_id, "text": ""}},
                      {"path": "lists:crash", "args": {}},
                      {"path": "lists:no_such_function", "args": {}},
                      {"path": "lists:add_then_fail", "args": {"list_id": list_id, "n": 3}},
                      {"path": "lists:add", "args": {"list_id": list_id, "text": "milk"}}],
    })
    results = [e for e in events if e["event"] == "mutation"]
    assert [r["ok"] for r in results] == [False, False, False, False, True]
    app_error, crash, unknown, rolled_back = (r["error"] for r in results[:4])
    # AppError data arrives as ConvexError.data
    assert app_error["name"] == "ConvexError" and app_error["data"] == {"code": "EMPTY_TEXT"}
    # an internal error hides its details behind a request id
    assert crash["name"] != "ConvexError" and "data" not in crash
    assert "Request ID" in crash["message"] and "Server Error" in crash["message"]
    assert "secret internal detail" not in crash["message"] and "RuntimeError" not in crash["message"]
    assert "Could not find public function for 'lists:no_such_function'" in unknown["message"]
    assert "data" not in unknown
    # AppError with a plain string payload: still a ConvexError, and its writes were rolled back
    assert rolled_back["name"] == "ConvexError" and rolled_back["data"] == "rolled back"
    # failed mutations changed nothing: the subscriber saw exactly [] then [milk]
    assert [[i["text"] for i in v] for v in updates(events)] == [[], ["milk"]]
    assert [i["text"] for i in server_value(server.url, "query", "lists:items", {"list_id": list_id})] == ["milk"]
    # the internal detail is in the server's log, not on the wire
    assert "secret internal detail" in server.output()


def test_query_errors_over_websocket(server_factory) -> None:
    server = server_factory("kitchen")
    for path, message in [("lists:no_such_query", "Could not find public function for 'lists:no_such_query'"),
                          ("lists:secret", "Could not find public function for 'lists:secret'"),
                          ("lists:tries_to_write", "queries cannot write")]:
        events = run_ok("subscribe_mutate.mjs", {"url": server.url, "query": {"path": path, "args": {}},
                                                 "expectUpdates": 1})
        errors = [e for e in events if e["event"] == "query_error"]
        assert len(errors) == 1 and not updates(events), events
        assert message in errors[0]["message"] and "data" not in errors[0], errors


def test_errors_over_http_client(server_factory) -> None:
    server = server_factory("kitchen")
    list_id = new_list(server.url)
    events = run_ok("http_client.mjs", {"url": server.url, "calls": [
        {"kind": "mutation", "path": "lists:add", "args": {"list_id": list_id, "text": ""}},
        {"kind": "mutation", "path": "lists:crash", "args": {}},
        {"kind": "query", "path": "lists:secret", "args": {}},
        {"kind": "mutation", "path": "nope:nothing", "args": {}},
        {"kind": "function", "path": "lists:add", "args": {"list_id": list_id, "text": ""}},
        {"kind": "mutation", "path": "lists:add", "args": {"list_id": list_id, "text": "milk"}},
        {"kind": "query", "path": "lists:open_items", "args": {"list_id": list_id}},
        {"kind": "consistentQuery", "path": "lists:open_items", "args": {"list_id": list_id}},
        {"kind": "action", "path": "lists:create_via_action", "args": {"name": "via action"}},
    ]})
    results = [e for e in events if e["event"] == "result"]
    assert [r["ok"] for r in results] == [False, False, False, False, False, True, True, True, True]
    app_error, crash, internal, unknown, via_function = (r["error"] for r in results[:5])
    assert app_error["name"] == "ConvexError" and app_error["data"] == {"code": "EMPTY_TEXT"}
    assert via_function["name"] == "ConvexError" and via_function["data"] == {"code": "EMPTY_TEXT"}
    assert "data" not in crash and "Request ID" in crash["message"]
    assert "secret internal detail" not in crash["message"] and "RuntimeError" not in crash["message"]
    assert "Could not find public function for 'lists:secret'" in internal["message"]
    assert "Could not find public function for 'nope:nothing'" in unknown["message"]
    assert from_wire(results[6]["value"]) == ["milk"] == from_wire(results[7]["value"])
    assert from_wire(results[8]["value"])["name"] == "via action"
    assert from_wire(results[8]["value"])["secret"] == "internal"
    assert events[-1] == {"event": "done", "ok": 4, "errors": 5}

    # on the wire: ConvexHttpClient only reads errorData from an HTTP 560 body
    status, body = http_call(server.url, "mutation", "lists:add", {"list_id": list_id, "text": ""})
    assert status == 560 and body["errorData"] == {"code": "EMPTY_TEXT"}
    status, body = http_call(server.url, "mutation", "lists:crash", {})
    assert status == 560 and "errorData" not in body and "secret internal detail" not in json.dumps(body)


# --- several queries change in one Transition ------------------------------------------------------

def test_two_queries_updated_in_one_transition(server_factory) -> None:
    server = server_factory("kitchen")
    list_id = new_list(server.url)
    events = run_ok("two_queries.mjs", {
        "url": server.url,
        "queries": [{"path": "lists:items", "args": {"list_id": list_id}},
                    {"path": "lists:open_items", "args": {"list_id": list_id}},
                    {"path": "lists:latest", "args": {"list_id": list_id, "n": 1}}],
        "mutation": {"path": "lists:add", "args": {"list_id": list_id, "text": "milk"}},
    })
    assert events[-1] == {"event": "done", "sameTransition": True}
    final = {}
    for e in events:
        if e["event"] == "update":
            final[e["query"]] = from_wire(e["value"])
    assert final[1] == ["milk"] and [i["text"] for i in final[0]] == ["milk"] == [i["text"] for i in final[2]]


def test_two_accounts_updated_in_one_transition(server_factory) -> None:
    server = server_factory("bank")
    assert server_value(server.url, "mutation", "accounts:seed", {"owners": ["a", "b"], "balance": 100.0}) == 2
    events = run_ok("two_queries.mjs", {
        "url": server.url,
        "queries": [{"path": "accounts:balance", "args": {"owner": "a"}},
                    {"path": "accounts:balance", "args": {"owner": "b"}}],
        "mutation": {"path": "accounts:transfer", "args": {"src": "a", "dst": "b", "amount": 30.0}},
    })
    assert events[-1] == {"event": "done", "sameTransition": True}
    seen = [(e["query"], from_wire(e["value"])) for e in events if e["event"] == "update"]
    assert seen[-2:] in ([(0, 70.0), (1, 130.0)], [(1, 130.0), (0, 70.0)])
    # a reader of both balances never observes money in flight: the Transition is atomic
    assert server_value(server.url, "query", "accounts:total") == 200.0


# --- reconnection ---------------------------------------------------------------------------------

def _reconnect_config(url: str, list_id: str, prefix: str, count: int, **kw: Any) -> dict[str, Any]:
    return {"url": url, "count": count, "timeoutMs": 40000,
            "mutation": {"path": "lists:add", "args": {"list_id": list_id, "text": f"{prefix}-$i"}}, **kw}


def _check_exactly_once(url: str, list_id: str, prefix: str, count: int,
                        events: list[dict[str, Any]]) -> dict[str, str]:
    """Every mutation acknowledged once, applied once, with the id its ack reported."""
    acks = [e for e in events if e["event"] == "ack"]
    failed = [e for e in acks if not e["ok"]]
    assert not failed, f"mutations failed instead of being retried: {failed}"
    assert sorted(e["i"] for e in acks) == list(range(count)), "each mutation must be acknowledged exactly once"
    assert events[-1]["event"] == "done" and events[-1]["acks"] == count
    items = server_value(url, "query", "lists:items", {"list_id": list_id})
    mine = [item for item in items if item["text"].startswith(prefix + "-")]
    texts = Counter(item["text"] for item in mine)
    duplicates = {t: n for t, n in texts.items() if n > 1}
    assert not duplicates, f"mutations applied more than once: {duplicates}"
    assert set(texts) == {f"{prefix}-{i}" for i in range(count)}
    by_text = {item["text"]: item["_id"] for item in mine}
    for ack in acks:
        assert from_wire(ack["value"]) == by_text[f"{prefix}-{ack['i']}"], \
            f"ack {ack['i']} reported an id that is not the stored document's"
    return by_text


def test_reconnects_after_clean_restart(server_factory, live_scripts) -> None:
    server = server_factory("kitchen")
    list_id = new_list(server.url)
    count = 24
    run = live_scripts("reconnect.mjs", _reconnect_config(server.url, list_id, "clean", count, intervalMs=40))
    run.wait_for(lambda ev: sum(e["event"] == "ack" for e in ev) >= 6, 15, "6 acks before the restart")
    assert server.stop() == 0, server.output()
    time.sleep(0.3)
    server.start()
    events = run.finish(45)
    _check_exactly_once(server.url, list_id, "clean", count, events)
    assert events[-1]["reconnects"] >= 1
    assert [e["connected"] for e in events if e["event"] == "connection"].count(True) >= 2


def test_reconnects_after_sigkill_mid_run(server_factory, live_scripts) -> None:
    server = server_factory("kitchen")
    list_id = new_list(server.url)
    count = 40
    run = live_scripts("reconnect.mjs", _reconnect_config(server.url, list_id, "kill", count,
                                                          intervalMs=10, concurrency=4))
    run.wait_for(lambda ev: sum(e["event"] == "ack" for e in ev) >= 10, 15, "10 acks before the kill")
    server.kill()
    time.sleep(0.2)
    server.start()
    events = run.finish(45)
    _check_exactly_once(server.url, list_id, "kill", count, events)
    assert events[-1]["reconnects"] >= 1


def _stored_items(app_dir: Path, data_dir: Path, list_id: str, prefix: str) -> dict[str, list[str]]:
    """What a SIGKILLed server had committed (text -> ids): open its data dir on a side port and look."""
    side = ServerProcess(app_dir, data_dir, port=free_port()).start()
    try:
        items = server_value(side.url, "query", "lists:items", {"list_id": list_id})
    finally:
        assert side.stop() == 0, side.output()
    stored: dict[str, list[str]] = {}
    for item in items:
        if item["text"].startswith(prefix + "-"):
            stored.setdefault(item["text"], []).append(item["_id"])
    return stored


def test_sigkill_between_commit_and_answer_never_duplicates(server_factory, live_scripts) -> None:
    """SIGKILL at random moments while many mutations are in flight.

    After each kill the data dir is inspected on another port (so the client cannot
    reconnect yet). A mutation stored there whose ack the client never got was committed
    but not answered: after the restart the client re-sends it with the same session and
    request id, and the server must answer it from that commit instead of running it again.
    Rounds go on until that window has been hit (at most 8 rounds; usually the first).
    """
    server = server_factory("kitchen")
    list_id = new_list(server.url)
    seed = int(os.environ.get("TAPE_TEST_SEED", time.time_ns() % 100000))
    rng = random.Random(seed)
    count, rounds, hits = 150, 0, []
    while rounds < 8 and not hits:
        prefix = f"r{rounds}"
        run = live_scripts("reconnect.mjs", _reconnect_config(server.url, list_id, prefix, count,
                                                              intervalMs=0, concurrency=48))
        kill_after = rng.randint(10, 90)
        run.wait_for(lambda ev: sum(e["event"] == "ack" for e in ev) >= kill_after, 20, f"{kill_after} acks")
        # not right at an ack (the server is then busy running the next batch, before its
        # log write) but a few ms later, which hits a written-but-unanswered batch far more often
        time.sleep(rng.uniform(0.0, 0.01))
        server.kill()
        stored = _stored_items(server.app_dir, server.data_dir, list_id, prefix)
        acked = {f"{prefix}-{e['i']}" for e in run.acks()}  # includes acks still in flight at the kill
        context = f"(seed {seed}, round {rounds})"
        assert not {t: ids for t, ids in stored.items() if len(ids) > 1}, f"duplicates before restart {context}"
        assert acked <= set(stored), f"acknowledged, then lost by SIGKILL {context}: {sorted(acked - set(stored))}"
        unanswered = set(stored) - acked
        if unanswered:
            hits.append(len(unanswered))
        server.start()
        events = run.finish(45)
        by_text = _check_exactly_once(server.url, list_id, prefix, count, events)
        for text in unanswered:  # answered after the restart with the document committed before the kill
            assert by_text[text] == stored[text][0], f"{text} was run again after the restart {context}"
        rounds += 1
    assert hits, f"no round (of {rounds}, seed {seed}) killed the server between a commit and its answer"
    items = server_value(server.url, "query", "lists:items", {"list_id": list_id})
    assert len(items) == rounds * count == len({item["text"] for item in items})
