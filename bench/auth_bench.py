"""Workload: auth (issue 15) — what verified identities cost on the hot path.

A bench-owned copy of the bank app (examples/bank plus an ``auth.config.py``
naming an OIDC issuer this process serves on loopback: discovery + JWKS, an
RSA 2048 key; tokens are RS256, one user per caller) runs in a Tape server.

1. **Transfers, authenticated vs anonymous, same run.** The transfer workload
   of `bench.transfer` (64 callers, α = 0) over HTTP (``Authorization: Bearer``
   on every request) and over the sync protocol (one ``Authenticate`` per
   socket), each configuration measured anonymous and authenticated in
   alternation (A B B A, three times in a full run), so drift on a shared
   machine hits both alike. The goal: authenticated TPS within 5 % of
   anonymous, judged on the median of the adjacent pairs' ratios (pooled TPS
   is reported too). The server's CPU time per completed transfer is reported
   beside it (it is less disturbed by other load on the machine than TPS).
2. **1,000 sockets re-authenticating at once.** 1,000 sockets, each
   authenticated as its own user and subscribed to ``accounts:balance``, all
   send ``Authenticate`` with a fresh, never-seen token at the same moment
   (so every one is verified, not served from the token cache):

   * *refresh* — the same user's next token: done at the Transition confirming
     the new identity version (nothing re-runs);
   * *switch* — another user's token: done at the Transition carrying the
     subscription re-run under the new identity.

   Reported: Authenticate → that Transition, p50/p99/max, and the wall time
   until all 1,000 have it.

    python -m bench.auth_bench [--quick]
"""
from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jwt
import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.common import (BANK_APP, HOST, BenchError, CpuMeter, Harness, Zipf, accounts_for, harness_for,
                          latency_summary, owner, seed_accounts)
from bench import transfer
from bench.wsdriver import SyncClient, open_many

clock = time.perf_counter
CLIENTS = 64
AUDIENCE = "tape-bench"
GOAL_WITHIN = 0.05
REAUTH_SOCKETS = 1000


class Issuer:
    """A loopback OIDC issuer on its own thread: discovery, JWKS, and RS256 tokens minted here."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.port = 0
        self._serial = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def token(self, sub: str, ttl: float = 3600.0) -> str:
        self._serial += 1
        now = int(time.time())
        return jwt.encode({"iss": self.url, "sub": sub, "aud": AUDIENCE, "iat": now, "exp": int(now + ttl),
                           "jti": str(self._serial)}, self.key, algorithm="RS256", headers={"kid": "bench-1"})

    def _app(self) -> web.Application:
        jwk = {**jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True),
               "kid": "bench-1", "alg": "RS256", "use": "sig"}

        async def discovery(_: web.Request) -> web.Response:
            return web.json_response({"issuer": self.url, "jwks_uri": self.url + "/jwks"})

        async def jwks(_: web.Request) -> web.Response:
            return web.json_response({"keys": [jwk]})
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks", jwks)
        return app

    def start(self) -> "Issuer":
        ready = threading.Event()

        def serve() -> None:
            loop = self._loop = asyncio.new_event_loop()
            runner = web.AppRunner(self._app(), access_log=None)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, HOST, 0).start())
            self.port = runner.addresses[0][1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()
        self._thread = threading.Thread(target=serve, name="bench-issuer", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise BenchError("the bench's OIDC issuer did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def bank_with_auth(directory: Path, issuer: Issuer) -> Path:
    """A copy of examples/bank with an auth.config.py naming `issuer`."""
    directory.mkdir(parents=True, exist_ok=True)
    for module in BANK_APP.glob("*.py"):
        shutil.copy(module, directory / module.name)
    (directory / "auth.config.py").write_text(
        f"providers = [{{'domain': {issuer.url!r}, 'application_id': {AUDIENCE!r}}}]\n")
    return directory


# -- transfers ------------------------------------------------------------------------------


async def drive_http(url: str, pairs: Sequence[tuple[int, int]], tokens: Sequence[str] | None, duration: float,
                     warmup: float) -> dict[str, Any]:
    """64 keep-alive HTTP callers posting transfers; each sends its own Bearer token when `tokens` is given."""
    result = await transfer.drive_http(url, pairs, CLIENTS, duration, warmup, tokens=tokens)
    result["authenticated"] = tokens is not None
    return result


def _identity_version(payload: bytes) -> int:
    return int(orjson.loads(payload)["endVersion"]["identity"])


async def authenticate_all(conns: Sequence[SyncClient], tokens: Sequence[str], timeout: float = 60.0
                           ) -> tuple[list[float], float]:
    """Send `tokens[i]` on `conns[i]`, all at once; (Authenticate → confirming Transition per socket, wall s).

    Each socket's identity version is tracked on the client object
    (``identity_version``); the confirming Transition is the first whose
    ``endVersion.identity`` reaches the new version.
    """
    loop = asyncio.get_running_loop()
    latencies: list[float] = [0.0] * len(conns)
    pending = len(conns)
    all_done = loop.create_future()
    sent_at: list[float] = [0.0] * len(conns)

    def hook(i: int, conn: SyncClient, target: int) -> Callable[[float, bytes], None]:
        def on_transition(now: float, payload: bytes) -> None:
            nonlocal pending
            if _identity_version(payload) >= target and conn.on_transition is not None:
                conn.on_transition = None
                latencies[i] = now - sent_at[i]
                pending -= 1
                if pending == 0 and not all_done.done():
                    all_done.set_result(None)
        return on_transition

    started = clock()
    for i, (conn, token) in enumerate(zip(conns, tokens)):
        base = getattr(conn, "identity_version", 0)
        conn.identity_version = base + 1  # type: ignore[attr-defined]
        conn.on_transition = hook(i, conn, base + 1)
        sent_at[i] = clock()
        conn.ws.send(orjson.dumps({"type": "Authenticate", "baseVersion": base, "tokenType": "User",
                                   "value": token}))
    try:
        await asyncio.wait_for(all_done, timeout)
    except asyncio.TimeoutError:
        raise BenchError(f"{pending} of {len(conns)} sockets saw no Transition confirming their Authenticate "
                         f"within {timeout:g} s") from None
    return latencies, clock() - started


async def drive_ws(port: int, pairs: Sequence[tuple[int, int]], tokens: Sequence[str] | None, duration: float,
                   warmup: float) -> dict[str, Any]:
    """64 sync-protocol sockets, one transfer in flight on each; authenticated first when `tokens` is given."""
    async def authenticate(conns: list[SyncClient]) -> None:
        await authenticate_all(conns, tokens)  # type: ignore[arg-type]
    result = await transfer.drive_ws(port, pairs, CLIENTS, duration, warmup,
                                     prepare=authenticate if tokens is not None else None)
    result["authenticated"] = tokens is not None
    return result


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled TPS (transfers ÷ seconds) and mean p50/p99 over the repetitions of one configuration."""
    seconds = sum(r["duration_s"] for r in runs)
    return {
        "tps": sum(r["transfers"] for r in runs) / seconds if seconds else 0.0,
        "p50_ms": sum(r["p50_ms"] for r in runs) / len(runs),
        "p99_ms": sum(r["p99_ms"] for r in runs) / len(runs),
        "server_cpu_us_per_transfer": 1e6 * sum(r["server_cpu_s"] for r in runs)
        / max(1, sum(r["completed_total"] for r in runs)),
        "errors": sum(r["errors"] for r in runs),
        "first_error": next((r["first_error"] for r in runs if r.get("first_error")), None),
        "runs_tps": [round(r["tps"], 1) for r in runs],
    }


def paired_ratios(sequence: Sequence[float]) -> list[float]:
    """authenticated ÷ anonymous TPS of adjacent runs in A B B A blocks: (1st, 2nd) and (4th, 3rd)."""
    out = []
    for i in range(0, len(sequence) - 3, 4):
        a1, b1, b2, a2 = sequence[i:i + 4]
        out += [b1 / a1 if a1 else float("nan"), b2 / a2 if a2 else float("nan")]
    return out


# -- re-authentication ------------------------------------------------------------------------


async def reauth(port: int, issuer: Issuer, sockets: int) -> dict[str, Any]:
    """1,000 authenticated subscribers re-authenticate at once: refresh (same user), then switch users."""
    conns: list[SyncClient] = await open_many(sockets, HOST, port)
    try:
        users = [f"user{i}" for i in range(sockets)]
        first_tokens = [issuer.token(u) for u in users]
        refresh_tokens = [issuer.token(u) for u in users]
        switch_tokens = [issuer.token(users[(i + 1) % sockets]) for i in range(sockets)]
        first, first_wall = await authenticate_all(conns, first_tokens)
        subscribed = asyncio.get_running_loop().create_future()
        results = 0

        def on_update(now: float, query_id: int, value: Any) -> None:
            nonlocal results
            results += 1
            if results == sockets and not subscribed.done():
                subscribed.set_result(None)
        for i, conn in enumerate(conns):
            conn.on_update = on_update
            conn.subscribe([(0, "accounts:balance", {"owner": owner(i)})])
        await asyncio.wait_for(subscribed, 60)
        for conn in conns:
            conn.on_update = None
        await asyncio.sleep(0.5)
        refresh, refresh_wall = await authenticate_all(conns, refresh_tokens)
        await asyncio.sleep(0.5)
        switch, switch_wall = await authenticate_all(conns, switch_tokens)
    finally:
        for c in conns:
            c.close()
    return {
        "sockets": sockets,
        "first": {**latency_summary(first), "wall_ms": first_wall * 1e3},
        "refresh": {**latency_summary(refresh), "wall_ms": refresh_wall * 1e3},
        "switch": {**latency_summary(switch), "wall_ms": switch_wall * 1e3},
    }


# -- the workload ------------------------------------------------------------------------------


def run(quick: bool = False, harness: Harness | None = None, *, duration: float | None = None,
        warmup: float | None = None, accounts: int | None = None, sockets: int | None = None) -> dict[str, Any]:
    """Transfers authenticated vs anonymous (HTTP and WebSocket), then 1,000 sockets re-authenticating."""
    duration = duration if duration is not None else (3.0 if quick else 4.0)
    warmup = warmup if warmup is not None else 0.5
    order = ("anonymous", "authenticated", "authenticated", "anonymous") * (1 if quick else 3)
    sockets = sockets or (200 if quick else REAUTH_SOCKETS)
    issuer = Issuer().start()
    try:
        with harness_for(quick, harness) as h:
            app = bank_with_auth(h.work_dir / "bank-auth", issuer)
            data = h.work_dir / "bank-auth-data"
            h.reporter.phase("auth: starting Tape on the bank app with auth.config.py")
            server = h.start_child("Tape server (auth)", lambda port: [
                sys.executable, "-m", "ops.cli", "serve", str(app), "--data", str(data), "--port", str(port)])
            try:
                accounts = accounts or accounts_for(quick)
                h.reporter.phase(f"auth: seeding {accounts:,} accounts")
                asyncio.run(seed_accounts(server.url, accounts))
                pairs = Zipf(accounts, 0.0, seed=11).pairs(50_000 if quick else 200_000)
                tokens = [issuer.token(f"caller{k}") for k in range(CLIENTS)]
                transfer: dict[str, Any] = {}
                for transport in ("http", "ws"):
                    runs: dict[str, list[dict[str, Any]]] = {"anonymous": [], "authenticated": []}
                    sequence: list[float] = []
                    for label in order:
                        h.reporter.phase(f"auth: transfers over {transport}, {label}", duration + warmup)
                        given = tokens if label == "authenticated" else None
                        cpu0 = CpuMeter.server_seconds(server.pid) or 0.0
                        if transport == "http":
                            res = asyncio.run(drive_http(server.url, pairs, given, duration, warmup))
                        else:
                            res = asyncio.run(drive_ws(server.port, pairs, given, duration, warmup))
                        res["server_cpu_s"] = (CpuMeter.server_seconds(server.pid) or 0.0) - cpu0
                        res.pop("latency_ms_sorted", None)
                        runs[label].append(res)
                        sequence.append(res["tps"])
                    anonymous, authenticated = _summary(runs["anonymous"]), _summary(runs["authenticated"])
                    pooled = authenticated["tps"] / anonymous["tps"] if anonymous["tps"] else float("nan")
                    pairs_ratio = paired_ratios(sequence)
                    ratio = statistics.median(pairs_ratio)
                    cpu_ratio = authenticated["server_cpu_us_per_transfer"] / anonymous["server_cpu_us_per_transfer"]
                    transfer[transport] = {"anonymous": anonymous, "authenticated": authenticated,
                                           "ratio": ratio, "pair_ratios": [round(x, 3) for x in pairs_ratio],
                                           "pooled_ratio": pooled, "cpu_per_transfer_ratio": cpu_ratio,
                                           "within_goal": ratio >= 1 - GOAL_WITHIN}
                h.reporter.phase(f"auth: {sockets:,} sockets re-authenticating at once")
                reauthentication = asyncio.run(reauth(server.port, issuer, sockets))
            finally:
                h.stop_child(server)
    finally:
        issuer.stop()
    return {
        "clients": CLIENTS, "alpha": 0.0, "duration_s": duration, "order": list(order), "algorithm": "RS256",
        "transfer": transfer,
        "reauth": reauthentication,
        "goal": {"within": GOAL_WITHIN, "met": all(t["within_goal"] for t in transfer.values())},
    }


def headline(r: dict[str, Any]) -> str:
    """One console line for `tape bench`."""
    t, ra = r["transfer"], r["reauth"]
    parts = [f"{name}: {x['authenticated']['tps']:,.0f} vs {x['anonymous']['tps']:,.0f} TPS "
             f"({(x['ratio'] - 1) * 100:+.1f} %, server CPU/transfer {(x['cpu_per_transfer_ratio'] - 1) * 100:+.1f} %)"
             for name, x in t.items()]
    return ("authenticated vs anonymous transfers " + "; ".join(parts)
            + f" (goal within {r['goal']['within'] * 100:g} %: {'met' if r['goal']['met'] else 'not met'}); "
            f"{ra['sockets']:,} sockets re-authenticating: refresh p50 {ra['refresh']['p50_ms']:.1f} / p99 "
            f"{ra['refresh']['p99_ms']:.1f} ms, switch user p50 {ra['switch']['p50_ms']:.1f} / p99 "
            f"{ra['switch']['p99_ms']:.1f} ms")


if __name__ == "__main__":  # pragma: no cover
    result = run(quick="--quick" in sys.argv)
    print(headline(result))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
