"""Workload 2: the same transfer workload against a plain aiohttp + SQLite JSON API (the peer).

The peer is this module run as a separate process on loopback
(``python -m bench.sqlite_baseline --port P --db FILE``). It answers the
same HTTP API shape as Tape (``POST /api/mutation`` / ``/api/query`` with
``{"path", "args", "format"}``, ``{"status": "success", "value"}``, HTTP 560
for a refused transfer) for ``accounts:seed``, ``accounts:transfer``,
``accounts:balance`` and ``accounts:total``, so the very same client drives
both systems.

SQLite runs in WAL mode with ``synchronous=FULL`` (every commit is fsynced,
as durable as Tape's acknowledged commits), one transaction per transfer
opened with ``BEGIN IMMEDIATE``, reading both accounts through the unique
index on ``owner``, refusing an overdraft and updating both rows. All
statements run on one dedicated writer thread (one connection), so the event
loop keeps parsing requests while a commit waits for its fsync; SQLite has
no group commit, so each transfer pays its own fsync.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import orjson

from bench.common import (CpuMeter, INITIAL_BALANCE, Harness, Zipf, accounts_for, fetch_total, harness_for,
                              seed_accounts)
from bench.transfer import CLIENTS, ALPHAS, drive_http, durations

FUNCTION_ERROR = 560


class Refused(Exception):
    """A transfer the rules refuse (the peer's AppError)."""

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(str(data))
        self.data = data


class Bank:
    """The bank app written directly against SQLite; every method runs on the writer thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.db: sqlite3.Connection | None = None

    def open(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL UNIQUE, "
                    "balance REAL NOT NULL)")
        self.db = db

    def seed(self, owners: list[str], balance: float) -> int:
        db = self.db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO accounts (owner, balance) VALUES (?, ?)", [(o, balance) for o in owners])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return len(owners)

    def transfer(self, src: str, dst: str, amount: float) -> float:
        db = self.db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            a = db.execute("SELECT id, balance FROM accounts WHERE owner = ?", (src,)).fetchone()
            b = db.execute("SELECT id, balance FROM accounts WHERE owner = ?", (dst,)).fetchone()
            if a is None or b is None:
                raise Refused({"code": "NO_SUCH_ACCOUNT"})
            if a[1] < amount:
                raise Refused({"code": "INSUFFICIENT_FUNDS", "balance": a[1]})
            if src != dst:
                db.execute("UPDATE accounts SET balance = ? WHERE id = ?", (a[1] - amount, a[0]))
                db.execute("UPDATE accounts SET balance = ? WHERE id = ?", (b[1] + amount, b[0]))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return a[1] - amount if src != dst else a[1]

    def balance(self, owner: str) -> float | None:
        assert self.db is not None
        row = self.db.execute("SELECT balance FROM accounts WHERE owner = ?", (owner,)).fetchone()
        return None if row is None else row[0]

    def total(self) -> float:
        assert self.db is not None
        return float(self.db.execute("SELECT COALESCE(SUM(balance), 0) FROM accounts").fetchone()[0])


def build_app(db_path: str) -> Any:
    from aiohttp import web
    bank = Bank(db_path)
    writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
    writer.submit(bank.open).result()
    functions = {
        "accounts:seed": lambda a: bank.seed(list(a["owners"]), float(a["balance"])),
        "accounts:transfer": lambda a: bank.transfer(a["src"], a["dst"], float(a["amount"])),
        "accounts:balance": lambda a: bank.balance(a["owner"]),
        "accounts:total": lambda a: bank.total(),
    }

    async def api(request: web.Request) -> web.Response:
        try:
            call = orjson.loads(await request.read())
            fn = functions[call["path"]]
            args = call.get("args") or {}
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return web.Response(body=orjson.dumps({"status": "error", "errorMessage": f"bad request: {exc}"}),
                                status=400, content_type="application/json")
        try:
            value = await asyncio.get_running_loop().run_in_executor(writer, fn, args)
        except Refused as exc:
            return web.Response(body=orjson.dumps({"status": "error", "errorMessage": str(exc), "errorData": exc.data}),
                                status=FUNCTION_ERROR, content_type="application/json")
        return web.Response(body=orjson.dumps({"status": "success", "value": value, "logLines": []}),
                            content_type="application/json")

    async def version(_: web.Request) -> web.Response:
        return web.Response(text=f"sqlite-baseline sqlite {sqlite3.sqlite_version}")

    app = web.Application()
    app.router.add_post("/api/mutation", api)
    app.router.add_post("/api/query", api)
    app.router.add_get("/version", version)

    async def on_cleanup(_: web.Application) -> None:
        writer.shutdown(wait=True)
    app.on_cleanup.append(on_cleanup)
    return app


def serve(port: int, db_path: str) -> None:
    from aiohttp import web
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover
        pass
    web.run_app(build_app(db_path), host="127.0.0.1", port=port, access_log=None, print=None)


def run(quick: bool = False, harness: Harness | None = None, *, accounts: int | None = None,
        duration: float | None = None, warmup: float | None = None, clients: int = CLIENTS,
        alphas: Sequence[float] = ALPHAS) -> dict[str, Any]:
    """Start the peer, seed it like Tape, run the HTTP transfer workload at each α; returns the figures."""
    full_duration, full_warmup = durations(quick)
    duration = full_duration if duration is None else duration
    warmup = full_warmup if warmup is None else warmup
    n = accounts or accounts_for(quick)
    with harness_for(quick, harness) as h:
        db_dir = Path(tempfile.mkdtemp(prefix="sqlite-", dir=h.work_dir))
        h.reporter.phase("baseline: starting the aiohttp + SQLite peer")
        server = h.start_child("SQLite peer", lambda port: [
            sys.executable, "-m", "bench.sqlite_baseline", "--port", str(port), "--db", str(db_dir / "bank.db")])
        try:
            h.reporter.phase(f"baseline: seeding {n:,} accounts")
            asyncio.run(seed_accounts(server.url, n, parallel=1))
            expected = float(n * INITIAL_BALANCE)
            configs = []
            for alpha in alphas:
                pairs = Zipf(n, alpha, seed=7).pairs(50_000 if quick else 200_000)
                h.reporter.phase(f"baseline: SQLite over http, α={alpha:g}, {clients} clients", duration + warmup)
                meter = CpuMeter(server.pid).start()
                res = asyncio.run(drive_http(server.url, pairs, clients, duration, warmup))
                res.update(meter.stop())
                res["alpha"] = alpha
                configs.append(res)
            total = asyncio.run(fetch_total(server.url))
        finally:
            h.stop_child(server)
    return {
        "system": "sqlite",
        "sqlite_version": sqlite3.sqlite_version,
        "settings": "WAL, synchronous=FULL, BEGIN IMMEDIATE, one transaction per transfer, one writer thread",
        "accounts": n,
        "clients": clients,
        "warmup_s": warmup,
        "configs": configs,
        "total_expected": expected,
        "total_after": total,
        "total_unchanged": total == expected,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the aiohttp + SQLite peer of `tape bench`")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True, help="SQLite database file")
    args = parser.parse_args(argv)
    serve(args.port, args.db)


if __name__ == "__main__":
    main()
