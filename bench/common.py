"""Shared machinery of `tape bench`: child servers, ports, statistics, Zipf draws, seeding.

Every workload module exposes ``run(quick, harness=None) -> dict``. A
`Harness` owns what a run starts (Tape servers, the SQLite peer, the
broadcast floor), hands out loopback ports, reports progress and, with
``--profile``, samples a server with py-spy while a workload is measured.
Without a harness a workload makes its own and cleans up after itself.
"""
from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import orjson

ROOT = Path(__file__).resolve().parents[1]
BANK_APP = ROOT / "examples" / "bank"
INITIAL_BALANCE = 1_000_000_000
SEED_CHUNK = 1000
HOST = "127.0.0.1"


class BenchError(Exception):
    """A benchmark could not run (a port is taken, a peer did not start, a check failed)."""


# --- ports ------------------------------------------------------------------------

def free_port() -> int:
    """A port on the loopback interface that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def raise_fd_limit(wanted: int = 16384) -> int:
    """Raise the soft open-files limit (children inherit it); returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


# --- statistics -----------------------------------------------------------------

def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in [0, 1]); nan when empty."""
    n = len(sorted_values)
    if n == 0:
        return float("nan")
    rank = max(1, math.ceil(q * n))
    return sorted_values[min(n, rank) - 1]


def latency_summary(seconds: Sequence[float], prefix: str = "") -> dict[str, float]:
    """p50/p99/mean/max in milliseconds and the sample count of a list of durations."""
    xs = sorted(seconds)
    n = len(xs)
    return {
        f"{prefix}n": n,
        f"{prefix}p50_ms": percentile(xs, 0.50) * 1e3,
        f"{prefix}p99_ms": percentile(xs, 0.99) * 1e3,
        f"{prefix}mean_ms": (sum(xs) / n * 1e3) if n else float("nan"),
        f"{prefix}max_ms": (xs[-1] * 1e3) if n else float("nan"),
    }


def histogram_ms(seconds: Sequence[float], limit: int = 4000) -> list[float]:
    """Up to `limit` evenly spaced order statistics (ms) of a sample, for plots in results.json."""
    xs = sorted(seconds)
    if len(xs) <= limit:
        return [round(x * 1e3, 4) for x in xs]
    step = len(xs) / limit
    return [round(xs[int(i * step)] * 1e3, 4) for i in range(limit)]


class CpuMeter:
    """CPU used by a server process (all its threads) and by this client process over a span.

    Percentages are of one core: 100 means one core kept busy for the whole span.
    """

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self._t0 = self._server0 = self._client0 = 0.0

    @staticmethod
    def server_seconds(pid: int | None) -> float | None:
        if pid is None:
            return None
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    @staticmethod
    def client_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def start(self) -> "CpuMeter":
        self._t0 = time.perf_counter()
        self._server0 = self.server_seconds(self.pid) or 0.0
        self._client0 = self.client_seconds()
        return self

    def stop(self) -> dict[str, float]:
        wall = max(1e-9, time.perf_counter() - self._t0)
        out = {"client_cpu_pct": round(100.0 * (self.client_seconds() - self._client0) / wall, 1)}
        server = self.server_seconds(self.pid)
        if server is not None:
            out["server_cpu_pct"] = round(100.0 * (server - self._server0) / wall, 1)
        return out


# --- account draws ---------------------------------------------------------------

async def transfer_loop(runtime: Any, owners: Sequence[str], draw: Callable[[], int], stop_at: float,
                        latencies: list[float]) -> None:
    """One closed-loop in-process caller: transfers of 1 between two distinct drawn accounts until `stop_at`.

    Appends each call's duration (refused transfers included) to `latencies`.
    """
    from engine.errors import AppError
    while time.perf_counter() < stop_at:
        a, b = draw(), draw()
        while b == a:
            b = draw()
        t0 = time.perf_counter()
        try:
            await runtime.run_mutation("accounts:transfer", {"src": owners[a], "dst": owners[b], "amount": 1.0})
        except AppError:
            pass
        latencies.append(time.perf_counter() - t0)


def owner(rank: int) -> str:
    """The owner name of the account with Zipf rank `rank` (0: the most popular)."""
    return f"u{rank}"


class Zipf:
    """Draws account ranks in [0, n) with P(k) ∝ (k+1)^-alpha (alpha=0: uniform).

    Uses numpy's inverse-CDF search when numpy is installed, else a table of
    cumulative weights searched with `bisect` (same distribution, slower).
    """

    def __init__(self, n: int, alpha: float, seed: int = 1) -> None:
        self.n, self.alpha, self.seed = n, alpha, seed
        try:
            import numpy as np
        except ImportError:  # pragma: no cover - numpy is present with matplotlib
            np = None
        self._np = np
        if np is not None:
            weights = np.arange(1, n + 1, dtype=np.float64) ** -alpha
            cdf = np.cumsum(weights)
            self._cdf = cdf / cdf[-1]
        else:
            total = 0.0
            cdf = []
            for k in range(1, n + 1):
                total += k ** -alpha
                cdf.append(total)
            self._cdf = [c / total for c in cdf]

    def pairs(self, count: int) -> list[tuple[int, int]]:
        """`count` (src, dst) rank pairs with src != dst, both drawn from the distribution."""
        np = self._np
        out: list[tuple[int, int]] = []
        if np is not None:
            rng = np.random.default_rng(self.seed)
            while len(out) < count:
                need = int((count - len(out)) * 1.3) + 16
                a = np.searchsorted(self._cdf, rng.random(need), side="right")
                b = np.searchsorted(self._cdf, rng.random(need), side="right")
                np.minimum(a, self.n - 1, out=a)
                np.minimum(b, self.n - 1, out=b)
                keep = a != b
                out.extend(zip(a[keep].tolist(), b[keep].tolist()))
            return out[:count]
        rnd = random.Random(self.seed)
        cdf, last = self._cdf, self.n - 1
        while len(out) < count:
            a = min(bisect.bisect_right(cdf, rnd.random()), last)
            b = min(bisect.bisect_right(cdf, rnd.random()), last)
            if a != b:
                out.append((a, b))
        return out

    def top_share(self) -> float:
        """Probability of the most popular account (for the report)."""
        return float(self._cdf[0])


# --- progress ------------------------------------------------------------------

class Reporter(Protocol):
    def phase(self, text: str, seconds: float | None = None) -> None:
        """A new step began; `seconds`, if known, is how long it will take."""

    def note(self, text: str) -> None:
        """A line worth keeping above the progress display."""


class QuietReporter:
    """Reports nothing (tests, library use)."""

    def phase(self, text: str, seconds: float | None = None) -> None:
        pass

    def note(self, text: str) -> None:
        pass


# --- child servers -------------------------------------------------------------

class ChildServer:
    """A server in a child process on a loopback port, ready once `health` answers 200."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path, health: str = "/version") -> None:
        self.name, self.argv, self.port, self.log_path, self.health = name, argv, port, log_path, health
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""

    def start(self, timeout: float = 30.0) -> "ChildServer":
        if not port_is_free(self.port):
            raise BenchError(f"port {self.port} on {HOST} is taken, so {self.name} cannot listen there: "
                             f"stop whatever uses it or pick other ports (--base-port)")
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=ROOT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise BenchError(f"{self.name} could not start (exit status {code}); its output:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + self.health, timeout=1) as r:
                    if r.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.05)
        self.stop()
        raise BenchError(f"{self.name} did not answer {self.url}{self.health} within {timeout:.0f}s; "
                         f"its output:\n{self.output()}")

    def stop(self, timeout: float = 20.0) -> None:
        """Ctrl-C, then SIGKILL if it does not exit in time."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class TapeHandle:
    """A running Tape server with the bank app and `accounts` seeded accounts."""

    server: ChildServer
    accounts: int
    total: float
    sync_used: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port


# --- HTTP helpers (aiohttp) --------------------------------------------------------

async def call(session: Any, url: str, kind: str, path: str, args: dict[str, Any]) -> Any:
    """POST /api/{kind}; returns the value or raises BenchError with the server's message."""
    body = orjson.dumps({"path": path, "args": args, "format": "json"})
    async with session.post(f"{url}/api/{kind}", data=body, headers={"Content-Type": "application/json"}) as r:
        data = await r.read()
    try:
        reply = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise BenchError(f"{path}: HTTP {r.status}: {data[:200]!r}") from None
    if r.status != 200 or reply.get("status") != "success":
        raise BenchError(f"{path}: HTTP {r.status}: {reply.get('errorMessage', reply)}")
    return reply["value"]


async def seed_accounts(url: str, n: int, balance: float = INITIAL_BALANCE, chunk: int = SEED_CHUNK,
                        parallel: int = 4) -> None:
    """Create accounts u0..u{n-1} through `accounts:seed`, `chunk` owners per mutation."""
    import aiohttp
    chunks = [[owner(i) for i in range(lo, min(n, lo + chunk))] for lo in range(0, n, chunk)]
    async with aiohttp.ClientSession() as session:
        queue = list(reversed(chunks))

        async def worker() -> None:
            while queue:
                owners = queue.pop()
                await call(session, url, "mutation", "accounts:seed", {"owners": owners, "balance": float(balance)})
        await asyncio.gather(*(worker() for _ in range(parallel)))


TOTAL_CHUNK = 1000  # accounts:balances answers an object: at most 1,024 fields


async def fetch_total(url: str, accounts: int | None = None) -> float:
    """The sum of all balances: `accounts:total`, or — when that one query would read more documents
    than a transaction may (100,000 accounts) — `accounts:balances` over chunks of owners, summed here.
    Only call it while nothing writes (the chunks are separate snapshots)."""
    return (await total_and_method(url, accounts))[0]


async def total_and_method(url: str, accounts: int | None) -> tuple[float, str]:
    import aiohttp
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        try:
            return float(await call(session, url, "query", "accounts:total", {})), "accounts:total"
        except BenchError as exc:
            if accounts is None or "read more than" not in str(exc):
                raise
        total = 0.0
        for lo in range(0, accounts, TOTAL_CHUNK):
            owners = [owner(i) for i in range(lo, min(accounts, lo + TOTAL_CHUNK))]
            balances = await call(session, url, "query", "accounts:balances", {"owners": owners})
            missing = [o for o in owners if balances.get(o) is None]
            if missing:
                raise BenchError(f"accounts missing from accounts:balances: {missing[:5]}")
            total += sum(float(balances[o]) for o in owners)
        return total, f"accounts:balances in chunks of {TOTAL_CHUNK} (accounts:total reads too many documents)"


# --- profiling -----------------------------------------------------------------------

def py_spy() -> str | None:
    """Path of the py-spy executable, if installed."""
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def summarize_collapsed(path: Path, top: int = 15) -> dict[str, Any]:
    """Top functions of a py-spy ``--format raw`` (collapsed stacks) file: self and total %."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [f for f in stack.split(";") if f]
        seen: set[str] = set()
        for frame in frames:
            name = _frame_name(frame)
            if name not in seen:
                seen.add(name)
                total[name] = total.get(name, 0) + count
        if frames:
            leaf = _frame_name(frames[-1])
            own[leaf] = own.get(leaf, 0) + count

    def ranked(table: dict[str, int], skip_generic: bool) -> list[list[Any]]:
        rows = sorted(((k, v) for k, v in table.items() if not (skip_generic and _generic(k))),
                      key=lambda kv: -kv[1])[:top]
        return [[name, round(100.0 * c / max(1, samples), 1)] for name, c in rows]
    return {"samples": samples, "self": ranked(own, False), "total": ranked(total, True)}


_GENERIC = ("(<frozen runpy>)", "(ops/cli.py)", "(threading.py)", "Runner.run (asyncio/runners.py)",
            "run (asyncio/runners.py)")


def _generic(name: str) -> bool:
    """Frames every sample passes through (process entry, thread bootstrap): no information."""
    return name.endswith(_GENERIC[:3]) or name in _GENERIC[3:]


def _frame_name(frame: str) -> str:
    # py-spy frames look like "function (path/to/file.py:123)"; drop the line number and the
    # directory prefix so one function is one row.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file_part = where.rsplit(":", 1)[0]
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in file_part:
            file_part = file_part.split(marker, 1)[1]
            break
    else:
        try:
            file_part = str(Path(file_part).resolve().relative_to(ROOT))
        except (ValueError, OSError):
            pass
    return f"{name} ({file_part})" if file_part else name


class Profiler:
    """Samples one process with ``py-spy record`` while a `with` block runs."""

    def __init__(self, out_dir: Path, name: str, pid: int) -> None:
        self.out_dir, self.name, self.pid = out_dir, name, pid
        self.raw = out_dir / f"profile-{name}.txt"
        self.proc: subprocess.Popen[bytes] | None = None
        self.summary: dict[str, Any] | None = None

    def __enter__(self) -> "Profiler":
        exe = py_spy()
        if exe is None:
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([exe, "record", "--pid", str(self.pid), "--rate", "200", "--nonblocking", "--gil",
                                      "--format", "raw", "-o", str(self.raw)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: Any) -> None:
        proc = self.proc
        if proc is None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self.raw.exists():
            self.summary = summarize_collapsed(self.raw)


# --- the harness -------------------------------------------------------------------------

class Harness:
    """Owns the processes of one benchmark run and the settings shared by its workloads."""

    def __init__(self, quick: bool, work_dir: Path | None = None, reporter: Reporter | None = None,
                 base_port: int | None = None, profile_dir: Path | None = None) -> None:
        self.quick = quick
        self._own_work = work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="tape-bench-")) if work_dir is None else work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.reporter: Reporter = reporter or QuietReporter()
        self._next_port = base_port
        self.profile_dir = profile_dir
        self.profiles: dict[str, dict[str, Any]] = {}
        self._children: list[ChildServer] = []
        self._tape: TapeHandle | None = None
        self._tape_error: tuple[int, str] | None = None
        self.shared: dict[str, Any] = {}  # figures one workload leaves for another (e.g. TPS without subscribers)
        raise_fd_limit()

    # -- ports & processes --
    def port(self) -> int:
        if self._next_port is None:
            return free_port()
        port, self._next_port = self._next_port, self._next_port + 1
        return port

    def start_child(self, name: str, argv_for_port: Any, health: str = "/version",
                    timeout: float = 30.0) -> ChildServer:
        port = self.port()
        slug = name.lower().replace(" ", "-")
        child = ChildServer(name, argv_for_port(port), port, self.work_dir / f"{slug}-{port}.log", health)
        self._children.append(child)
        return child.start(timeout)

    def stop_child(self, child: ChildServer) -> None:
        child.stop()
        if child in self._children:
            self._children.remove(child)

    def tape(self, accounts: int) -> TapeHandle:
        """A Tape server on the bank app with `accounts` seeded accounts (started and seeded once per run)."""
        if self._tape is not None and self._tape.accounts >= accounts:
            return self._tape
        if self._tape_error is not None and self._tape_error[0] >= accounts:
            raise BenchError(self._tape_error[1])
        try:
            return self._start_tape(accounts)
        except BenchError as exc:
            self._tape_error = (accounts, str(exc))
            raise

    def _start_tape(self, accounts: int) -> TapeHandle:
        if self._tape is not None:
            self.stop_child(self._tape.server)
            self._tape = None
        if not (BANK_APP / "accounts.py").exists():
            raise BenchError(f"the bank example app is missing ({BANK_APP})")
        data = Path(tempfile.mkdtemp(prefix="tape-data-", dir=self.work_dir))
        self.reporter.phase("starting Tape (bank app)")
        server = self.start_child("Tape server", lambda port: [
            sys.executable, "-m", "ops.cli", "serve", str(BANK_APP), "--data", str(data), "--port", str(port)])
        self.reporter.phase(f"seeding {accounts:,} accounts through accounts:seed")
        t0 = time.perf_counter()
        asyncio.run(seed_accounts(server.url, accounts))
        seeded_s = time.perf_counter() - t0
        total, method = asyncio.run(total_and_method(server.url, accounts))
        expected = float(accounts * INITIAL_BALANCE)
        if total != expected:
            raise BenchError(f"after seeding, accounts:total is {total}, expected {expected}")
        self._tape = TapeHandle(server, accounts, total, extra={"seed_s": seeded_s, "total_method": method})
        return self._tape

    @contextlib.contextmanager
    def profile(self, name: str, pid: int) -> Iterator[None]:
        """Sample `pid` with py-spy during the block when profiling is on (and py-spy installed)."""
        if self.profile_dir is None:
            yield
            return
        prof = Profiler(self.profile_dir, name, pid)
        with prof:
            yield
        if prof.summary is not None:
            self.profiles[name] = prof.summary

    def close(self) -> None:
        for child in reversed(self._children):
            child.stop()
        self._children.clear()
        self._tape = None
        if self._own_work:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "Harness":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def harness_for(quick: bool, harness: Harness | None) -> Iterator[Harness]:
    """Use `harness`, or make a private one closed at the end of the block."""
    if harness is not None:
        yield harness
        return
    own = Harness(quick)
    try:
        yield own
    finally:
        own.close()


def accounts_for(quick: bool) -> int:
    return 10_000 if quick else 100_000
