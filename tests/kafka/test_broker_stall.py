"""A Kafka broker stalled past the append timeout (SIGSTOP/SIGCONT) heals, and no client is told a lie.

A committer and two replicas (real `tape serve` processes) on one Tansu
broker; writers on every node over WebSocket (the Tape client resends an
unanswered mutation with its request id after a reconnect, as the official
clients do) and over HTTP with an ``Idempotency-Key``; a subscriber on every
node. The broker process is stopped for longer than the append timeout, then
continued. Checked: every answer is true (an acknowledged item is on every
node exactly once, an item refused as "did not run" is on none, an unknown
outcome is resolved by repeating the request id), the committer writes again
within seconds of the broker's return without a restart, `/health` says 503
while it cannot write and 200 after, and all nodes end equal.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from client import Client, FunctionError
from tests.kafka.test_replicas import Cluster, call, eventually, items
from tests.kafka_broker import TansuBroker
from tests.server_process import ServerProcess

pytestmark = pytest.mark.slow

APPEND_TIMEOUT = 1.5
RECOVERY_BOUND = 6.0  # seconds from the broker's return to the committer's first new write


@dataclass
class Ledger:
    """What every writer was told, per item text."""

    ok: set[str] = field(default_factory=set)
    did_not_run: dict[str, str] = field(default_factory=dict)
    unknown_answers: int = 0  # HTTP 503 MutationOutcomeUnknown answers, each resolved by a repeat
    other: dict[str, str] = field(default_factory=dict)  # any other error: a lie or a bug
    recovered_after: list[float] = field(default_factory=list)  # broker back -> committer's first new write (s)


@pytest.fixture
def cluster(tmp_path: Path, own_broker: TansuBroker, kafka_topic: str) -> Iterator[Cluster]:
    made = Cluster(tmp_path, own_broker.url(kafka_topic) + f"?append_timeout={APPEND_TIMEOUT}")
    yield made
    made.stop()


async def health(server: ServerProcess, query: str = "") -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/health{query}", timeout=aiohttp.ClientTimeout(total=10)) as resp:
            return resp.status, await resp.json()


async def ws_writer(server: ServerProcess, list_id: str, prefix: str, stop: asyncio.Event, ledger: Ledger) -> None:
    async with Client(server.url, backoff_initial=0.05, backoff_max=0.5) as client:
        i = 0
        while not stop.is_set():
            text = f"{prefix}{i}"
            i += 1
            try:
                await asyncio.wait_for(client.mutation("lists:add", {"list_id": list_id, "text": text}), 60)
                ledger.ok.add(text)
            except FunctionError as exc:
                if "did not run" in str(exc):
                    ledger.did_not_run[text] = str(exc)
                else:
                    ledger.other[text] = str(exc)
            await asyncio.sleep(0.02)


async def http_writer(server: ServerProcess, list_id: str, prefix: str, stop: asyncio.Event, ledger: Ledger) -> None:
    async with aiohttp.ClientSession() as http:
        i = 0
        while not stop.is_set():
            text = f"{prefix}{i}"
            headers = {"Idempotency-Key": f"{prefix}:{i}"}
            i += 1
            while True:  # repeat the same key until the answer is certain
                async with http.post(f"{server.url}/api/mutation", headers=headers,
                                     json={"path": "lists:add", "args": {"list_id": list_id, "text": text},
                                           "format": "json"}, timeout=aiohttp.ClientTimeout(total=60)) as resp:
                    body = await resp.json()
                    status = resp.status
                if status == 200 and body["status"] == "success":
                    ledger.ok.add(text)
                elif status == 503 and body.get("errorCode") == "MutationOutcomeUnknown":
                    ledger.unknown_answers += 1
                    await asyncio.sleep(0.1)
                    continue
                elif status == 503 and body.get("errorCode") == "WritesUnavailable":
                    ledger.did_not_run[text] = body["errorMessage"]
                else:
                    ledger.other[text] = f"HTTP {status}: {body}"
                break
            await asyncio.sleep(0.02)


async def latest(sub: Any, expected: list[str], timeout: float = 20.0) -> list[str]:
    """Read the subscription until it shows `expected` (or time runs out); returns the last value."""
    deadline = time.monotonic() + timeout
    last: list[str] = []
    while time.monotonic() < deadline:
        try:
            last = [d["text"] for d in await sub.next(max(deadline - time.monotonic(), 0.01))]
        except asyncio.TimeoutError:
            break
        if last == expected:
            break
    return last


async def first_write_after(server: ServerProcess, list_id: str, since: float, name: str) -> float:
    """Seconds from `since` until a fresh mutation on `server` succeeds."""
    n = 0
    while True:
        n += 1
        body = await call(server, "mutation", "lists:add", {"list_id": list_id, "text": f"probe-{name}-{n}"})
        if body["status"] == "success":
            return time.monotonic() - since
        assert time.monotonic() - since < 30, f"the committer never wrote again: {body}"
        await asyncio.sleep(0.1)


async def post_mutation(server: ServerProcess, list_id: str, text: str, key: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/api/mutation", headers={"Idempotency-Key": key},
                             json={"path": "lists:add", "args": {"list_id": list_id, "text": text}, "format": "json"},
                             timeout=aiohttp.ClientTimeout(total=60)) as resp:
            return resp.status, await resp.json()


def closes_for_unknown(nodes: list[ServerProcess]) -> int:
    """How many sockets the nodes closed so a client would resend a mutation in doubt."""
    return sum(node.log_path.read_text(errors="replace").count("closing the socket so the client resends it")
               for node in nodes)


async def stall_under_load(nodes: list[ServerProcess], broker: TansuBroker, list_id: str, rounds: int,
                           stall_seconds: float, calm_seconds: float) -> Ledger:
    """Writers and subscribers on every node while the broker stalls `rounds` times; returns what writers were told."""
    committer, replicas = nodes[0], nodes[1:]
    ledger = Ledger()
    stop = asyncio.Event()
    writers = [asyncio.create_task(ws_writer(node, list_id, f"ws{n}-", stop, ledger)) for n, node in enumerate(nodes)]
    writers += [asyncio.create_task(http_writer(node, list_id, f"http{n}-", stop, ledger))
                for n, node in enumerate((committer, replicas[0]))]
    try:
        for round_ in range(rounds):
            await asyncio.sleep(calm_seconds)
            assert all([(await health(node))[0] == 200 for node in nodes])
            os.kill(broker.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            try:
                await asyncio.sleep(APPEND_TIMEOUT + 1.0)
                status, report = await health(committer)  # a committer that cannot write is not healthy
                assert status == 503 and report["state"] in ("recovering", "log_unreachable"), report
                await asyncio.sleep(max(stall_seconds - APPEND_TIMEOUT - 1.0 - 0.5, 0.0))
            finally:
                os.kill(broker.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
            took = await first_write_after(committer, list_id, time.monotonic(), str(round_))
            assert took < RECOVERY_BOUND, f"the committer wrote again only {took:.1f}s after the broker returned"
            ledger.recovered_after.append(took)
            status, report = await health(committer)
            assert status == 200 and report["state"] == "ok" and report["role"] == "committer", report
        await asyncio.sleep(calm_seconds)
    finally:
        stop.set()
        await asyncio.gather(*writers, return_exceptions=True)
    for task in writers:
        task.result()  # a writer that crashed fails the test with its own error
    assert not ledger.other, f"answers that were neither success, unknown nor 'did not run': {ledger.other}"
    assert ledger.unknown_answers + closes_for_unknown(nodes) > 0, "no writer met an unknown outcome"
    print(f"\nstall rounds: {rounds}; acknowledged {len(ledger.ok)}, did not run {len(ledger.did_not_run)}, "
          f"HTTP unknown answers {ledger.unknown_answers}, sockets closed for unknown {closes_for_unknown(nodes)}; "
          f"committer writing again after SIGCONT: {', '.join(f'{t:.2f}s' for t in ledger.recovered_after)}")
    return ledger


async def stall_while_quiet(nodes: list[ServerProcess], broker: TansuBroker, list_id: str, ledger: Ledger) -> None:
    """One mutation in doubt, step by step: unknown, refused while recovering, then the true answer anywhere."""
    committer, r1, r2 = nodes
    os.kill(broker.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        t0 = time.monotonic()
        status, body = await post_mutation(r1, list_id, "doubtful", "quiet:1")  # forwarded to the committer
        assert status == 503 and body["errorCode"] == "MutationOutcomeUnknown", body
        assert "unknown" in body["errorMessage"] and time.monotonic() - t0 < APPEND_TIMEOUT + 3
        t0 = time.monotonic()
        status, body = await post_mutation(committer, list_id, "refused", "quiet:2")  # a new write: did not run
        assert status == 503 and body["errorCode"] == "WritesUnavailable", body
        assert "did not run" in body["errorMessage"] and time.monotonic() - t0 < 1.0
        ledger.did_not_run["refused"] = body["errorMessage"]
        for node in nodes:  # nobody can vouch for being current while the broker does not answer
            status, report = await health(node)
            assert status == 503 and report["state"] in ("recovering", "log_unreachable"), report
        repeat = asyncio.create_task(post_mutation(r2, list_id, "doubtful", "quiet:1"))  # waits for the truth
        await asyncio.sleep(0.5)
        assert not repeat.done()
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
    status, body = await asyncio.wait_for(repeat, 30)
    assert status == 200 and body["status"] == "success", body
    again_status, again = await post_mutation(committer, list_id, "doubtful", "quiet:1")
    assert again_status == 200 and again["value"] == body["value"], again  # the same answer, from the log
    ledger.ok.add("doubtful")
    status, body = await post_mutation(committer, list_id, "after", "quiet:3")
    assert status == 200, body
    ledger.ok.add("after")


async def check_all_equal(nodes: list[ServerProcess], list_id: str, ledger: Ledger, subs: list[Any]) -> None:
    """Every node holds the same items in the same order, each once: exactly the acknowledged ones."""
    final = await items(nodes[0], list_id)

    async def converged() -> bool:
        return all([await items(node, list_id) == final for node in nodes[1:]])
    await eventually(converged, timeout=20, what="the replicas to equal the committer")
    twice = sorted({t for t in final if final.count(t) > 1})
    assert not twice, f"applied twice: {twice}"
    written = {t for t in final if not t.startswith("probe")}
    assert ledger.ok <= written, f"acknowledged but missing: {sorted(ledger.ok - written)[:10]}"
    assert not (set(ledger.did_not_run) & written), "an item refused as 'did not run' was committed"
    assert written <= ledger.ok, f"committed but never acknowledged: {sorted(written - ledger.ok)[:10]}"
    for sub in subs:  # every subscriber saw the final state
        assert await latest(sub, final) == final
    for node in nodes:
        status, report = await health(node)
        assert status == 200 and report["state"] == "ok" and report["lag"] == 0, report
    status, report = await health(nodes[1], "?max_lag=-1")  # a replica behind the bound is not healthy
    assert status == 503 and report["state"] == "lagging" and report["role"] == "replica", report


async def run_scenario(cluster: Cluster, broker: TansuBroker, rounds: int, stall_seconds: float,
                       calm_seconds: float, subscribers_per_node: int = 1) -> None:
    committer = cluster.start_committer()
    nodes = [committer, cluster.start_replica("replica1"), cluster.start_replica("replica2")]
    committer_pid = committer.proc.pid  # type: ignore[union-attr]
    list_id = (await call(committer, "mutation", "lists:create", {"name": "stall"}))["value"]
    watchers = [Client(node.url) for node in nodes for _ in range(subscribers_per_node)]
    try:
        subs = [w.subscribe("lists:items", {"list_id": list_id}) for w in watchers]
        ledger = await stall_under_load(nodes, broker, list_id, rounds, stall_seconds, calm_seconds)
        await stall_while_quiet(nodes, broker, list_id, ledger)
        assert committer.proc is not None and committer.proc.poll() is None and committer.proc.pid == committer_pid
        await check_all_equal(nodes, list_id, ledger, subs)
    finally:
        for watcher in watchers:
            await watcher.close()


async def test_broker_stall_heals_without_a_restart_and_tells_no_lie(cluster: Cluster,
                                                                     own_broker: TansuBroker) -> None:
    await run_scenario(cluster, own_broker, rounds=1, stall_seconds=3.5, calm_seconds=1.0)


@pytest.mark.soak
async def test_repeated_broker_stalls_heal(cluster: Cluster, own_broker: TansuBroker) -> None:
    await run_scenario(cluster, own_broker, rounds=5, stall_seconds=5.0, calm_seconds=3.0, subscribers_per_node=100)
