"""Issue 17: file upload and download throughput, Tape vs a bare aiohttp file server, with peak RSS.

    python -m bench.storage_bench [--quick]

Two child processes on loopback, measured in the same run, in alternating
order round by round: `tape serve` on bench/apps/storage (uploads through
single-use upload URLs: blob streamed to disk with SHA-256, fsynced, renamed,
directory fsynced, `_storage` document committed through the fsynced log;
downloads from ``/api/storage/{id}``) and `bench.storage_peer` (the same
bytes streamed to a file, fsynced, renamed, directory fsynced; served with
`web.FileResponse`). Both run on uvloop.

* large: files of `large_mib` MiB (100; each with distinct bytes), one at a
  time: MiB/s up and down;
* small: `small_files` files of 10 KiB (10,000), `concurrency` at a time:
  files/s up and down.

Upload URLs are generated before the timed part (one mutation per 500), so
both sides time the same HTTP transfers. Goals: Tape ≥ 0.8× the peer for
large files and ≥ 0.5× for small ones. Peak RSS is each server's VmHWM at
the end (a 100 MiB upload must not grow it by 100 MiB: uploads stream).
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import orjson

from bench.common import ROOT, BenchError, Harness, call

APP = ROOT / "bench" / "apps" / "storage"
MIB = 1 << 20
URL_BATCH = 500


def peak_rss_mib(pid: int) -> float | None:
    """A process's peak resident set size (VmHWM) in MiB, or None if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Side:
    """One server under test: how to get upload targets, upload a body, and download what it stored."""

    def __init__(self, name: str, url: str, pid: int, session: aiohttp.ClientSession) -> None:
        self.name, self.url, self.pid, self.session = name, url, pid, session

    async def targets(self, n: int) -> list[str]:
        raise NotImplementedError

    async def upload(self, target: str, body: bytes) -> str:
        async with self.session.post(target, data=body, headers={"Content-Type": "application/octet-stream"}) as r:
            reply = orjson.loads(await r.read())
            if r.status != 200:
                raise BenchError(f"{self.name} upload: HTTP {r.status}: {reply}")
        return self.file_url(reply)

    def file_url(self, reply: dict[str, Any]) -> str:
        raise NotImplementedError

    async def download(self, url: str) -> int:
        got = 0
        async with self.session.get(url) as r:
            if r.status != 200:
                raise BenchError(f"{self.name} download {url}: HTTP {r.status}")
            async for chunk in r.content.iter_chunked(MIB):
                got += len(chunk)
        return got


class TapeSide(Side):
    async def targets(self, n: int) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            out += await call(self.session, self.url, "mutation", "uploads:upload_urls",
                              {"count": min(URL_BATCH, n - len(out))})
        return out

    def file_url(self, reply: dict[str, Any]) -> str:
        return f"{self.url}/api/storage/{reply['storageId']}"


class PeerSide(Side):
    async def targets(self, n: int) -> list[str]:
        return [f"{self.url}/upload"] * n

    def file_url(self, reply: dict[str, Any]) -> str:
        return f"{self.url}/files/{reply['id']}"


def _distinct(base: bytes, i: int) -> bytes:
    """`base` with its first 8 bytes replaced by `i` (content-addressed stores see distinct files)."""
    return i.to_bytes(8, "big") + base[8:]


async def large_round(side: Side, base: bytes, files: int, first: int) -> dict[str, float]:
    targets = await side.targets(files)
    up = down = 0.0
    urls = []
    for i in range(files):
        body = _distinct(base, first + i)
        t0 = time.perf_counter()
        urls.append(await side.upload(targets[i], body))
        up += time.perf_counter() - t0
        del body
    for url in urls:
        t0 = time.perf_counter()
        got = await side.download(url)
        down += time.perf_counter() - t0
        if got != len(base):
            raise BenchError(f"{side.name}: downloaded {got} of {len(base)} bytes")
    mib = files * len(base) / MIB
    return {"upload_mib_s": mib / up, "download_mib_s": mib / down}


async def _pool(jobs: list[Callable[[], Awaitable[Any]]], concurrency: int) -> list[Any]:
    results: list[Any] = [None] * len(jobs)
    next_job = 0

    async def worker() -> None:
        nonlocal next_job
        while next_job < len(jobs):
            i = next_job
            next_job += 1
            results[i] = await jobs[i]()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def small_round(side: Side, base: bytes, files: int, first: int, concurrency: int) -> dict[str, float]:
    targets = await side.targets(files)
    bodies = [_distinct(base, first + i) for i in range(files)]
    t0 = time.perf_counter()
    urls = await _pool([lambda t=t, b=b: side.upload(t, b) for t, b in zip(targets, bodies)], concurrency)
    up = time.perf_counter() - t0
    t0 = time.perf_counter()
    sizes = await _pool([lambda u=u: side.download(u) for u in urls], concurrency)
    down = time.perf_counter() - t0
    if any(n != len(base) for n in sizes):
        raise BenchError(f"{side.name}: a small download came back short")
    return {"upload_files_s": files / up, "download_files_s": files / down}


def _median(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def run(quick: bool, harness: Harness | None = None, *, large_mib: int | None = None, large_files: int | None = None,
        small_files: int | None = None, small_kib: int = 10, rounds: int | None = None,
        concurrency: int = 16) -> dict[str, Any]:
    """Run the workload (see the module docstring); returns medians per side, ratios and peak RSS."""
    own = harness is None
    h = harness or Harness(quick)
    large_mib = large_mib or (8 if quick else 100)
    large_files = large_files or (2 if quick else 3)
    small_files = small_files or (300 if quick else 10_000)
    rounds = rounds or (1 if quick else 3)
    try:
        h.reporter.phase("storage: starting Tape and the bare aiohttp file server")
        data = h.work_dir / "storage-tape-data"
        tape = h.start_child("Tape storage server", lambda port: [
            sys.executable, "-m", "ops.cli", "serve", str(APP), "--data", str(data), "--port", str(port),
            "--max-upload-bytes", str(4 << 30)])
        peer = h.start_child("storage peer", lambda port: [
            sys.executable, "-m", "bench.storage_peer", "--port", str(port), "--dir",
            str(h.work_dir / "storage-peer-files")])
        rss_before = {"tape": rss_mib(tape.pid), "peer": rss_mib(peer.pid)}
        h.reporter.phase(f"storage: {rounds} round(s) of {large_files} × {large_mib} MiB and "
                         f"{small_files:,} × {small_kib} KiB, each side", None)
        result = asyncio.run(_measure(tape.url, tape.pid, peer.url, peer.pid, large_mib, large_files,
                                      small_files, small_kib, rounds, concurrency))
        result["rss_before_mib"] = rss_before
        result["peak_rss_mib"] = {"tape": peak_rss_mib(tape.pid), "peer": peak_rss_mib(peer.pid)}
        h.stop_child(tape)
        h.stop_child(peer)
        return result
    finally:
        if own:
            h.close()


async def _measure(tape_url: str, tape_pid: int, peer_url: str, peer_pid: int, large_mib: int, large_files: int,
                   small_files: int, small_kib: int, rounds: int, concurrency: int) -> dict[str, Any]:
    large_base = bytes(range(256)) * (large_mib * MIB // 256)
    small_base = bytes(range(256)) * (small_kib * 1024 // 256)
    per: dict[str, dict[str, list[dict[str, float]]]] = {"tape": {"large": [], "small": []},
                                                          "peer": {"large": [], "small": []}}
    kinds = {"tape": (TapeSide, tape_url, tape_pid), "peer": (PeerSide, peer_url, peer_pid)}

    def session() -> aiohttp.ClientSession:
        # A fresh pool per phase: a connection left idle while the other side ran may have been closed by
        # its server (keep-alive timeout), and a 100 MiB body sent into it would fail with a broken pipe.
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency * 2),
                                     timeout=aiohttp.ClientTimeout(total=None))
    first = 0
    for r in range(rounds):
        order = ["tape", "peer"] if r % 2 == 0 else ["peer", "tape"]
        for name in order:
            kind, url, pid = kinds[name]
            async with session() as s:
                per[name]["large"].append(await large_round(kind(name, url, pid, s), large_base, large_files, first))
            first += large_files
        for name in order:
            kind, url, pid = kinds[name]
            async with session() as s:
                per[name]["small"].append(await small_round(kind(name, url, pid, s), small_base, small_files, first,
                                                            concurrency))
            first += small_files
    out: dict[str, Any] = {"large_mib": large_mib, "large_files": large_files, "small_files": small_files,
                           "small_kib": small_kib, "rounds": rounds, "concurrency": concurrency}
    for name in ("tape", "peer"):
        out[name] = {
            "large_upload_mib_s": _median(per[name]["large"], "upload_mib_s"),
            "large_download_mib_s": _median(per[name]["large"], "download_mib_s"),
            "small_upload_files_s": _median(per[name]["small"], "upload_files_s"),
            "small_download_files_s": _median(per[name]["small"], "download_files_s"),
        }
    t, p = out["tape"], out["peer"]
    out["ratios"] = {key: t[key] / p[key] for key in t}
    out["goals"] = {"large": 0.8, "small": 0.5}
    out["met"] = {
        "large": min(out["ratios"]["large_upload_mib_s"], out["ratios"]["large_download_mib_s"]) >= 0.8,
        "small": min(out["ratios"]["small_upload_files_s"], out["ratios"]["small_download_files_s"]) >= 0.5,
    }
    return out


def headline(r: dict[str, Any]) -> str:
    """One line for the console."""
    t, ratio, rss = r["tape"], r["ratios"], r["peak_rss_mib"]
    return (f"{r['large_mib']} MiB files up {t['large_upload_mib_s']:,.0f} MiB/s ({ratio['large_upload_mib_s']:.2f}×), "
            f"down {t['large_download_mib_s']:,.0f} MiB/s ({ratio['large_download_mib_s']:.2f}×); "
            f"{r['small_kib']} KiB files up {t['small_upload_files_s']:,.0f}/s ({ratio['small_upload_files_s']:.2f}×), "
            f"down {t['small_download_files_s']:,.0f}/s ({ratio['small_download_files_s']:.2f}×); peak RSS Tape "
            f"{rss['tape'] or 0:.0f} MiB, peer {rss['peer'] or 0:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    result = run(args.quick)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(headline(result))


if __name__ == "__main__":
    main()
