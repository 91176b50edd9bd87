"""Crash durability: SIGKILL a real `tape dev` server while 64 clients write, restart, check everything.

Each round runs 32 WebSocket clients (raw sync protocol, one session each,
kept across reconnects) and 32 HTTP clients (`POST /api/mutation` with
``Idempotency-Key: <client>:<n>``) doing bank transfers (some refused for
insufficient funds) and inserts (`accounts:seed` of a fresh zero-balance
account), then SIGKILLs the server. When the kill lands depends on the
round's seed:

* ``commit``: a probe mutation is sent and the kill follows 0-3 ms later,
  while that mutation (and the batch around it) is being executed or made
  durable: a group commit (write + fdatasync) takes a few ms here.
* ``apply``: the kill follows 0-0.5 ms after an acknowledgement arrives,
  i.e. right after the committer applied a batch to the projection and
  answered, while the next queued batch is being appended/applied.
* ``random``: anywhere in 0.15-0.6 s of sustained load.

The load is continuous, so every kill lands with mutations in flight; the
figures printed at the end show how many in-flight mutations turned out
to be committed (killed between fsync and acknowledgement) or not.

After each kill, with the server dead: the on-disk projection (RocksDB
without WAL: the last flush point) must equal a fresh replay of the log up
to its applied offset. After the restart: mutations whose outcome the
client did not see are retried with the same key (exactly-once must answer
a committed one from the log and run a missing one once), every
acknowledged insert is visible and the total balance is unchanged. At the
end (clean stop): every acknowledged mutation is in the log exactly once
with the acknowledged result and has its `_requests` document, no failed
one is, every transfer record conserves money, and the projection equals a
fresh replay of the whole log (`content_digest`).

The kill is a process crash: the OS keeps written pages, so this checks the
ordering (fsync before ack, projection after log), not power loss; torn
writes are covered by test_corruption.py.
"""
from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.committer import request_doc_id
from values import decode_doc, decode_value, from_wire
from tests.reliability.reliability_wire import (
    ServerGone,
    WsClient,
    bank_catalog,
    http_call,
    projection_digest,
    query,
    read_log,
    replay_digest,
)

ACCOUNTS = [f"acct{i:02d}" for i in range(16)]
INITIAL = 1000.0
TOTAL = INITIAL * len(ACCOUNTS)
N_WS = 32
N_HTTP = 32


@dataclass
class Op:
    channel: str        # "ws" or "http"
    client: str         # WS session id / HTTP client name
    request_id: int
    path: str
    args: dict[str, Any]
    status: str = "pending"  # acked | failed | unknown | error
    result: Any = None
    error: str | None = None
    in_flight_at_kill: bool = False
    kill_round: int = -1

    @property
    def session(self) -> str:
        """The session id the server stores in the log record."""
        return self.client if self.channel == "ws" else f"http:{self.client}"

    @property
    def key(self) -> tuple[str, int]:
        return self.session, self.request_id


@dataclass
class Ledger:
    ops: list[Op] = field(default_factory=list)
    next_id: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    log_end_at_kill: dict[int, int] = field(default_factory=dict)

    def new_op(self, channel: str, client: str, rng: random.Random, owners: list[str]) -> Op:
        n = self.next_id[client]
        self.next_id[client] = n + 1
        if rng.random() < 0.15:
            path, args = "accounts:seed", {"owners": [f"{client[:8]}-{n}"], "balance": 0.0}
        else:
            src, dst = rng.sample(owners, 2)
            path, args = "accounts:transfer", {"src": src, "dst": dst, "amount": float(rng.randint(1, 400))}
        op = Op(channel, client, n, path, args)
        self.ops.append(op)
        return op

    def settle(self, op: Op, ok: bool, value: Any) -> None:
        if ok:
            op.status, op.result = "acked", value
            self.acked.set()
        else:
            op.status, op.error = "failed", value


async def ws_worker(url: str, session: str, count: int, rng: random.Random, ledger: Ledger,
                    stop: asyncio.Event, http: aiohttp.ClientSession) -> None:
    client = WsClient(url, session_id=session, connection_count=count)
    try:
        await client.connect(http)
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
        return
    try:
        while not stop.is_set():
            op = ledger.new_op("ws", session, rng, ACCOUNTS)
            try:
                resp = await client.mutate(op.path, op.args, op.request_id)
            except (ServerGone, asyncio.TimeoutError):
                op.status = "unknown"
                return
            ledger.settle(op, resp["success"], from_wire(resp["result"]) if resp["success"] else resp["result"])
    finally:
        await client.close()


async def http_worker(url: str, name: str, rng: random.Random, ledger: Ledger, stop: asyncio.Event,
                      http: aiohttp.ClientSession) -> None:
    while not stop.is_set():
        op = ledger.new_op("http", name, rng, ACCOUNTS)
        await http_op(url, op, ledger, http)
        if op.status == "unknown":
            return


async def http_op(url: str, op: Op, ledger: Ledger, http: aiohttp.ClientSession) -> None:
    try:
        status, body = await http_call(http, url, "mutation", op.path, op.args, key=f"{op.client}:{op.request_id}")
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
        op.status = "unknown"
        return
    if status == 200:
        ledger.settle(op, True, from_wire(body["value"]))
    elif status == 560:
        ledger.settle(op, False, body.get("errorMessage"))
    else:
        op.status, op.error = "error", f"HTTP {status}: {body}"


async def killer(server: Any, rng: random.Random, mode: str, ledger: Ledger, http: aiohttp.ClientSession,
                 round_no: int, first_op: int) -> None:
    await asyncio.sleep(rng.uniform(0.15, 0.6))
    if mode == "commit":
        probe = ledger.new_op("http", "probe", rng, ACCOUNTS)
        task = asyncio.get_running_loop().create_task(http_op(server.url, probe, ledger, http))
        await asyncio.sleep(0)  # let the probe go out
        await asyncio.sleep(rng.uniform(0, 0.003))
    elif mode == "apply":
        ledger.acked.clear()
        try:
            await asyncio.wait_for(ledger.acked.wait(), 10)
        except asyncio.TimeoutError:
            counts: dict[str, int] = defaultdict(int)
            for op in ledger.ops[first_op:]:
                counts[op.status] += 1
            alive = server.proc is not None and server.proc.poll() is None
            raise AssertionError(f"round {round_no}: no mutation acknowledged for 10 s (ops this round by status: "
                                 f"{dict(counts)}, server alive: {alive}); server output:\n{server.output()[-3000:]}")
        await asyncio.sleep(rng.uniform(0, 0.0005))
    server.kill()
    if mode == "commit":
        await task


async def run_round(server: Any, round_no: int, seed: int, ledger: Ledger, ws_sessions: list[str],
                    work: Path, catalog: dict[str, Any]) -> dict[str, Any]:
    rng = random.Random(seed)
    mode = rng.choice(["commit", "apply", "random"])
    stop = asyncio.Event()
    first_new = len(ledger.ops)
    async with aiohttp.ClientSession() as http:
        workers = [ws_worker(server.url, s, round_no, random.Random(rng.random()), ledger, stop, http)
                   for s in ws_sessions]
        workers += [http_worker(server.url, f"h{i:02d}", random.Random(rng.random()), ledger, stop, http)
                    for i in range(N_HTTP)]
        tasks = [asyncio.get_running_loop().create_task(w) for w in workers]
        await killer(server, rng, mode, ledger, http, round_no, first_new)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    new_ops = ledger.ops[first_new:]
    errors = [op for op in new_ops if op.status == "error"]
    assert not errors, f"unexpected responses: {[op.error for op in errors[:5]]}"
    in_flight = [op for op in new_ops if op.status in ("unknown", "pending")]
    for op in in_flight:
        op.status, op.in_flight_at_kill, op.kill_round = "unknown", True, round_no

    # Server dead: the projection on disk must be a consistent prefix of the log.
    data = server.data_dir
    records = await read_log(data / "log")
    ledger.log_end_at_kill[round_no] = len(records)
    digest, applied, stored_catalog = projection_digest(data / "projection")
    fresh, fresh_applied = await replay_digest(data / "log", work / f"prefix{round_no}", stored_catalog,
                                               upto=applied)
    assert (fresh, fresh_applied) == (digest, applied), f"round {round_no}: projection is not a log prefix"

    server.start()
    async with aiohttp.ClientSession() as http:
        await retry_unknown(server.url, in_flight, ledger, http, round_no)
        # Inserts acknowledged in this round (older ones were checked in their round and at the end).
        acked_inserts = [op.args["owners"][0] for op in ledger.ops[first_new:]
                         if op.path == "accounts:seed" and op.status == "acked"]
        for i in range(0, len(acked_inserts), 200):
            found = await query(http, server.url, "accounts:balances", {"owners": acked_inserts[i:i + 200]})
            missing = [o for o, b in found.items() if b != 0.0]
            assert not missing, f"round {round_no}: acknowledged inserts lost after the crash: {missing[:5]}"
        balances = await query(http, server.url, "accounts:balances", {"owners": ACCOUNTS})
        assert all(b >= 0 for b in balances.values())
        assert sum(balances.values()) == TOTAL, f"round {round_no}: money created or destroyed: {balances}"
        if round_no < 20:  # accounts:total reads every account; thousands of inserts later it is slow
            assert await query(http, server.url, "accounts:total", {}) == TOTAL
    return {"mode": mode, "ops": len(new_ops), "in_flight": len(in_flight), "log_end": len(records)}


async def retry_unknown(url: str, ops: list[Op], ledger: Ledger, http: aiohttp.ClientSession, round_no: int) -> None:
    """Resend every mutation whose outcome the client never saw, with the same key."""
    by_session: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.channel == "ws":
            by_session[op.client].append(op)

    async def ws_retry(session: str, pending: list[Op]) -> None:
        client = await WsClient(url, session_id=session, connection_count=100 + round_no).connect(http)
        try:
            for op in pending:
                resp = await client.mutate(op.path, op.args, op.request_id)
                ledger.settle(op, resp["success"], from_wire(resp["result"]) if resp["success"] else resp["result"])
        finally:
            await client.close()

    jobs = [ws_retry(s, p) for s, p in by_session.items()]
    jobs += [http_op(url, op, ledger, http) for op in ops if op.channel == "http"]
    await asyncio.gather(*jobs)
    stuck = [op for op in ops if op.status not in ("acked", "failed")]
    assert not stuck, f"retries after the restart did not get an answer: {[(o.key, o.status, o.error) for o in stuck[:5]]}"


async def final_checks(server: Any, ledger: Ledger, work: Path, catalog: dict[str, Any]) -> dict[str, int]:
    assert server.stop() == 0, server.output()
    data = server.data_dir
    records = await read_log(data / "log")
    by_key: dict[tuple[str, int], list[Any]] = defaultdict(list)
    for rec in records:
        if rec.session_id is not None:
            by_key[(rec.session_id, rec.request_id)].append(rec)
    dupes = {k: len(v) for k, v in by_key.items() if len(v) > 1}
    assert not dupes, f"mutations committed more than once: {list(dupes.items())[:5]}"
    lost = [op.key for op in ledger.ops if op.status == "acked" and op.key not in by_key]
    assert not lost, f"{len(lost)} acknowledged mutations are not in the log: {lost[:5]}"
    wrong = [op.key for op in ledger.ops if op.status == "acked"
             and decode_value(by_key[op.key][0].result) != op.result]
    assert not wrong, f"log results differ from the acknowledged ones: {wrong[:5]}"
    ghosts = [op.key for op in ledger.ops if op.status == "failed" and op.key in by_key]
    assert not ghosts, f"failed mutations were committed: {ghosts[:5]}"
    for rec in records:  # no partial transaction: every transfer moves money, never creates it
        if rec.function != "accounts:transfer":
            continue
        account_writes = [w for w in rec.writes if w.table == "accounts"]
        assert len(account_writes) in (0, 2), rec
        delta = sum(decode_doc(w.doc)["balance"] - decode_doc(w.prev)["balance"] for w in account_writes)
        assert delta == 0, f"transfer at offset {rec.offset} changes the total by {delta}"

    from projections.store import Projection
    projection = Projection(data / "projection")
    try:
        assert projection.applied_offset == len(records) - 1
        for op in ledger.ops:
            present = projection.get(request_doc_id(*op.key)) is not None
            assert present == (op.status == "acked"), (op.key, op.status)
        docs = [decode_doc(raw) for raw in projection.iter_documents("accounts")]
        owners = {d["owner"] for d in docs}
        assert sum(d["balance"] for d in docs) == TOTAL
        assert all(d["balance"] >= 0 for d in docs)
        inserted = {op.args["owners"][0] for op in ledger.ops if op.path == "accounts:seed" and op.status == "acked"}
        assert inserted <= owners
        digest = projection.content_digest()
    finally:
        projection.close()
    fresh, applied = await replay_digest(data / "log", work / "final", catalog)
    assert applied == len(records) - 1
    assert fresh == digest, "the projection differs from a fresh replay of the log"
    return {"records": len(records)}


async def crash_rounds(server_factory: Any, tmp_path: Path, seeds: list[int]) -> None:
    server = server_factory("bank")
    catalog = bank_catalog()
    ledger = Ledger()
    async with aiohttp.ClientSession() as http:
        status, body = await http_call(http, server.url, "mutation", "accounts:seed",
                                       {"owners": ACCOUNTS, "balance": INITIAL}, key="setup:0")
        assert status == 200, body
    ws_sessions = [f"ws{i:02d}-{random.Random(seeds[0] + i).getrandbits(64):016x}" for i in range(N_WS)]
    stats = []
    for round_no, seed in enumerate(seeds):
        stats.append(await run_round(server, round_no, seed, ledger, ws_sessions, tmp_path, catalog))
        if seed % 2:  # a clean restart now and then gives the next kill a flushed projection to start from
            assert server.stop() == 0, server.output()
            server.start()
    final = await final_checks(server, ledger, tmp_path, catalog)
    ops = ledger.ops
    in_flight = [op for op in ops if op.in_flight_at_kill]
    committed_before_kill = [op for op in in_flight if op.status == "acked" and op.kill_round >= 0]
    records = await read_log(server.data_dir / "log")
    offsets = {(r.session_id, r.request_id): r.offset for r in records if r.session_id is not None}
    landed = sum(1 for op in committed_before_kill
                 if offsets.get(op.key, 1 << 62) < ledger.log_end_at_kill[op.kill_round])
    modes = defaultdict(int)
    for s in stats:
        modes[s["mode"]] += 1
    print(f"\ncrash durability: {len(seeds)} rounds survived (kills: {dict(modes)}), {len(ops)} mutations, "
          f"{sum(o.status == 'acked' for o in ops)} acknowledged, {sum(o.status == 'failed' for o in ops)} failed, "
          f"{len(in_flight)} in flight at a kill of which {landed} had been committed before the kill "
          f"(killed between fsync and acknowledgement), {final['records']} log records; "
          "acknowledged writes lost: 0")


async def test_crash_durability(server_factory, tmp_path):  # type: ignore[no-untyped-def]
    await crash_rounds(server_factory, tmp_path, [11, 12, 13, 14, 15])


@pytest.mark.soak
async def test_crash_durability_soak(server_factory, tmp_path):  # type: ignore[no-untyped-def]
    await crash_rounds(server_factory, tmp_path, list(range(1000, 1200)))
