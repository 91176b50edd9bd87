"""`tape bench`: run the benchmark workloads and write results.json, results.md and plots.

    tape bench [--quick] [--out DIR] [--only WORKLOAD,...] [--profile] [--base-port N] [--work-dir DIR]

(`--only` takes the names listed under --help's `--only`.)

Everything runs on loopback: a Tape server on the bank example app, the
aiohttp + SQLite peer and the raw broadcast floor each in their own process,
driven from this one. ``--quick`` finishes in under two minutes.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

WORKLOADS = ("log", "engine", "transfer", "baseline", "reactivity", "polling", "kafka", "restore", "isolation", "auth",
             "scheduler", "memory", "metrics", "migration", "search", "vector", "lifecycle", "storage", "checkpoint")
DESCRIPTIONS = {
    "log": "commit log append vs raw fsync, projection replay vs raw RocksDB put",
    "engine": "the transfer mutation in-process (runtime + FileLog + projection), α = 0 and 1.5",
    "transfer": "keynote transfer workload on Tape over HTTP and WebSocket, α = 0 and 1.5",
    "baseline": "the same transfers on aiohttp + SQLite (WAL, synchronous=FULL)",
    "reactivity": "commit → update latency, 1,000-socket fan-out vs raw floor, 10,000 subscriptions",
    "polling": "1,000 HTTP pollers vs 1,000 WebSocket subscribers",
    "kafka": "committer on a Kafka topic (local Tansu broker) and a replica's lag at 5,000 commits/s",
    "restore": "point-in-time restore with and without checkpoints, change export to a file",
    "isolation": "a bystander's query and subscribe latency, idle and while clients run CPU-bound functions",
    "auth": "transfers with every caller authenticated vs anonymous; 1,000 sockets re-authenticating at once",
    "scheduler": "10,000 jobs due at once vs the same mutations called directly; job lateness beside transfers",
    "memory": "server RSS over 10 minutes of the transfer workload (start, middle, end)",
    "metrics": "what counting for /metrics costs: per observation, and per WebSocket transfer (CPU share)",
    "migration": "Convex snapshot ZIP export/import vs Tape's Avro snapshots, same documents",
    "search": "full-text index build from the log and two-term queries vs SQLite FTS5; transfers beside searches; "
              "1,000 search subscriptions",
    "vector": "vector index build rate; 100,000 × 768 top-10 latency and recall@10 vs exact numpy search",
    "lifecycle": "a new replica joining 10,000,000 records of history (checkpoint copy vs plain copy); disk use "
                 "under --retain",
    "storage": "file upload/download throughput (100 MiB and 10 KiB files) vs a bare aiohttp file server, peak RSS",
    "checkpoint": "open + first search from a checkpoint of a 100,000-document full-text index: carried vs rebuilt",
}


def register(subparsers: Any) -> None:
    """Add the `bench` sub-command (called by ops.bench_cmd when `tape` builds its parser)."""
    p = subparsers.add_parser("bench", help="run the benchmarks and write results (JSON, Markdown, plots)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller and shorter runs (under two minutes in all)")
    p.add_argument("--out", default="bench-results/", help="directory for results.json, results.md and PNGs "
                   "(default: bench-results/)")
    p.add_argument("--only", help="comma-separated workloads to run: " + ",".join(WORKLOADS))
    p.add_argument("--profile", action="store_true",
                   help="sample the Tape server with py-spy during transfer and fan-out (needs py-spy)")
    p.add_argument("--base-port", type=int, help="use consecutive ports from N instead of free ones")
    p.add_argument("--work-dir", help="where the servers keep their data (default: a temporary directory)")
    p.set_defaults(func=cmd_bench)


def _cli_error(message: str) -> Exception:
    """The CliError that the running `tape` main() catches (``python -m ops.cli`` runs it as __main__)."""
    cls = getattr(sys.modules.get("__main__"), "CliError", None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        from ops.cli import CliError as cls
    return cls(message)


FULL_ONLY_WHEN_ASKED = frozenset({"lifecycle"})  # builds 10,000,000 records first (~30 min): run with --only


def _selected(only: str | None, quick: bool = True) -> list[str]:
    if not only:
        return [n for n in WORKLOADS if quick or n not in FULL_ONLY_WHEN_ASKED]
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise _cli_error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    return [n for n in WORKLOADS if n in names]


def run_log(quick: bool, harness: Any) -> dict[str, Any]:
    """Workload 5: the log and projection micro-benchmarks written alongside the engine."""
    from bench import log_bench, log_open, projection_bench
    harness.reporter.phase("log: FileLog appends vs raw fsync", 2.5 if quick else 10)
    out: dict[str, Any] = {"log": log_bench.run(quick)}
    harness.reporter.phase("log: projection replay vs raw RocksDB put")
    out["projection"] = projection_bench.run(quick)
    harness.reporter.phase("log: FileLog open, short vs long history", 15 if quick else 120)
    out["open"] = log_open.run(quick)
    return out


def run_engine(quick: bool, harness: Any) -> dict[str, Any]:
    """The engine alone: transfers from 256 in-process callers, with group commit and projection apply."""
    from bench import engine_bench
    harness.reporter.phase("engine: in-process transfers, α = 0 and 1.5", 7 if quick else 25)
    return engine_bench.run(quick)


def run_kafka(quick: bool, harness: Any) -> dict[str, Any]:
    """The committer on Kafka with group commit, and a replica process following the topic."""
    from bench import kafka_bench
    harness.reporter.phase("kafka: committer throughput, replica catch-up and lag", 20 if quick else 45)
    return kafka_bench.run(quick)


def run_restore(quick: bool, harness: Any) -> dict[str, Any]:
    """Restore to a point in time (with and without checkpoints) and streaming export."""
    from bench import restore_bench
    harness.reporter.phase("restore: build a log, restore it, export it", 30 if quick else 120)
    return restore_bench.run(quick)


def run_isolation(quick: bool, harness: Any) -> dict[str, Any]:
    """Issue 14: a bystander's latency alone, then while attackers run CPU-bound queries and mutations."""
    from bench import isolation
    return isolation.run(quick, harness)


def run_auth(quick: bool, harness: Any) -> dict[str, Any]:
    """Issue 15: verified identities on the hot path, and Authenticate → first result for 1,000 sockets."""
    from bench import auth_bench
    return auth_bench.run(quick, harness)


def run_scheduler(quick: bool, harness: Any) -> dict[str, Any]:
    """Issue 16: scheduled mutations against direct ones, and lateness at 1,000 jobs/s beside transfers."""
    from bench import scheduler_bench
    harness.reporter.phase("scheduler: a burst of due jobs, then lateness beside transfers", 20 if quick else 90)
    return scheduler_bench.run(quick)


def run_memory(quick: bool, harness: Any) -> dict[str, Any]:
    """Issue 22: memory stays flat under steady load (RSS at end ≤ 1.2× the middle)."""
    from bench import memory_soak
    return memory_soak.run(quick, harness)


def run_migration(quick: bool, harness: Any) -> dict[str, Any]:
    """Issue 18: Convex snapshot ZIPs (out and in) against Tape's own snapshot format."""
    from bench import migration_bench
    harness.reporter.phase("migration: Convex ZIP vs Tape Avro export and import", 45 if quick else 240)
    return migration_bench.run(quick)


def run_search(quick: bool, harness: Any) -> dict[str, Any]:
    """Issue 20: search index build (20,000 docs quick, 1,000,000 full), queries, load beside transfers, subscribers."""
    from bench import search_bench
    return search_bench.run(quick, harness, work_dir=harness.work_dir if hasattr(harness, "work_dir") else None)


def run_vector(quick: bool, harness: Any) -> dict[str, Any]:
    """Issue 20: vector index build rate, top-10 p50 and recall@10 against exact numpy search in the same run."""
    from bench import vector_bench
    return vector_bench.run(quick, harness)


def run_lifecycle(quick: bool, harness: Any) -> dict[str, Any]:
    """Issue 22: replica bootstrap from a checkpoint, and the retention window's disk use."""
    from bench import lifecycle_bench
    harness.reporter.phase("lifecycle: replica join from a checkpoint; disk use with --retain", 60 if quick else 900)
    return lifecycle_bench.run(quick, harness, work_dir=getattr(harness, "work_dir", None))


def run_storage(quick: bool, harness: Any) -> dict[str, Any]:
    """Issue 17: uploads and downloads through ctx.storage vs a bare aiohttp file server."""
    from bench import storage_bench
    return storage_bench.run(quick, harness)


def run_checkpoint(quick: bool, harness: Any) -> dict[str, Any]:
    """Opening a checkpoint whose full-text index it carries vs one that is rebuilt."""
    from bench import checkpoint_search_bench
    harness.reporter.phase("checkpoint: open + first search, index carried vs rebuilt", 5 if quick else 30)
    return checkpoint_search_bench.run(5_000 if quick else 100_000)


def _runner(name: str) -> Callable[[bool, Any], dict[str, Any]]:
    if name == "checkpoint":
        return run_checkpoint
    if name == "lifecycle":
        return run_lifecycle
    if name == "log":
        return run_log
    if name == "engine":
        return run_engine
    if name == "kafka":
        return run_kafka
    if name == "restore":
        return run_restore
    if name == "isolation":
        return run_isolation
    if name == "auth":
        return run_auth
    if name == "scheduler":
        return run_scheduler
    if name == "memory":
        return run_memory
    if name == "migration":
        return run_migration
    if name == "search":
        return run_search
    if name == "vector":
        return run_vector
    if name == "storage":
        return run_storage
    module = {"transfer": "bench.transfer", "baseline": "bench.sqlite_baseline",
              "reactivity": "bench.reactivity", "polling": "bench.polling", "metrics": "bench.metrics_cost"}[name]
    mod = __import__(module, fromlist=["run"])
    return lambda quick, harness: mod.run(quick, harness)


def headline(name: str, r: dict[str, Any]) -> str:
    """One line per finished workload for the console."""
    try:
        if name in ("transfer", "baseline"):
            parts = [f"{c['transport']} α={c['alpha']:g}: {c['tps']:,.0f} TPS p99 {c['p99_ms']:.1f} ms"
                     for c in r["configs"]]
            return "; ".join(parts) + f"; total {'unchanged' if r['total_unchanged'] else 'CHANGED'}"
        if name == "reactivity":
            lat, fan, d = r["latency"], r["fanout"], r["distinct"]
            return (f"commit→update p50 {lat['receipt_p50_ms']:.1f} ms p99 {lat['receipt_p99_ms']:.1f} ms; fan-out "
                    f"all p99 {fan['all_p99_ms']:.1f} ms (floor {r['floor_fanout']['all_p99_ms']:.1f}); "
                    f"{d['subscriptions']:,} subs: {d['commits_per_s']:,.0f} commits/s")
        if name == "polling":
            return (f"requests {r['polling']['requests']:,} vs {r['push']['requests']:,}; staleness "
                    f"{r['polling']['staleness_mean_ms']:,.0f} ms vs {r['push']['staleness_mean_ms']:,.1f} ms")
        if name == "engine":
            return "; ".join(f"α={x['alpha']:g}: {x['tps']:,.0f} mutations/s ({x['loop_cpu_us_per_mutation']:.0f} µs "
                             f"loop CPU each)" for x in r["runs"])
        if name == "kafka":
            t, lag = r["throughput"], r["lag_paced"]
            return (f"committer {t['tps']:,.0f} mutations/s; replica lag at {lag['achieved_per_s']:,.0f}/s "
                    f"p50 {lag['p50_ms']:.1f} ms p99 {lag['p99_ms']:.1f} ms")
        if name == "restore":
            return (f"restore to midpoint {r['restore_mid_s']:.2f} s; replay {r['replay_records_per_s']:,.0f} "
                    f"records/s; export {r['export_jsonl_events_per_s']:,.0f} events/s")
        if name == "isolation":
            idle, att = r["idle"], r["attack"]
            return (f"bystander p99 idle: HTTP {idle['http']['p99_ms']:,.1f} ms, subscribe "
                    f"{idle['subscribe']['p99_ms']:,.1f} ms; under attack: HTTP {att['http']['p99_ms']:,.1f} ms, "
                    f"subscribe {att['subscribe']['p99_ms']:,.1f} ms (goal ≤ {r['goal']['p99_ms']:g} ms "
                    f"{'met' if r['goal']['met'] else 'not met'})")
        if name == "auth":
            from bench import auth_bench
            return auth_bench.headline(r)
        if name == "memory":
            return (f"RSS {r['rss_start_mb']:.0f} → {r['rss_middle_mb']:.0f} → {r['rss_end_mb']:.0f} MiB over "
                    f"{r['mutations']:,} mutations: end/middle {r['end_over_middle']:.2f} (goal ≤ {r['goal_ratio']:g})")
        if name == "scheduler":
            b, late = r["burst"], r["lateness"]
            return (f"{b['jobs']:,} due jobs at {b['ratio']:.2f}× direct mutations (goal ≥ 0.8×); lateness at "
                    f"{late['rate']:,.0f} jobs/s beside transfers p99 {late['lateness_p99_ms']:.1f} ms (goal ≤ 50 ms)")
        if name == "metrics":
            from bench import metrics_cost
            return metrics_cost.headline(r)
        if name == "migration":
            from bench import migration_bench
            return migration_bench.headline(r)
        if name == "search":
            from bench import search_bench
            return search_bench.headline(r)
        if name == "vector":
            from bench import vector_bench
            return vector_bench.headline(r)
        if name == "lifecycle":
            from bench import lifecycle_bench
            return lifecycle_bench.headline(r)
        if name == "storage":
            from bench import storage_bench
            return storage_bench.headline(r)
        if name == "checkpoint":
            from bench import checkpoint_search_bench
            return checkpoint_search_bench.headline(r)
        if name == "log":
            lg, pj = r["log"], r["projection"]
            text = (f"append {lg['append_per_s']:,.0f}/s vs fsync {lg['fsync_per_s']:,.0f}/s; replay "
                    f"{pj['replay_records_per_s']:,}/s vs raw put {pj['raw_puts_per_s']:,}/s")
            if "open" in r:
                small, large = r["open"]["sizes"][0], r["open"]["sizes"][-1]
                text += (f"; open {large['records']:,} records {large['open_median_s']:.3f} s vs "
                         f"{small['records']:,} {small['open_median_s']:.3f} s "
                         f"(goal ≤ 1 s and ≤ 2×: {'met' if r['open']['met'] else 'not met'})")
            return text
    except (KeyError, TypeError):
        pass
    return "done"


class RichReporter:
    """Progress display: overall workloads, and the current step with a time bar when its length is known."""

    def __init__(self, progress: Any, console: Any) -> None:
        self.progress, self.console = progress, console
        self.step = progress.add_task("", total=None, workload="", seconds=0.0, t0=time.monotonic())

    def phase(self, text: str, seconds: float | None = None) -> None:
        self.progress.reset(self.step, total=None, description=text, seconds=seconds or 0.0, t0=time.monotonic())

    def note(self, text: str) -> None:
        self.console.print(text)


def _progress(console: Any) -> Any:
    from rich.progress import (BarColumn, Progress, ProgressBar, ProgressColumn, SpinnerColumn, TextColumn,
                               TimeElapsedColumn)
    from rich.text import Text

    class PhaseBar(ProgressColumn):
        """A bar filled by elapsed ÷ announced seconds (timed phases only)."""

        def render(self, task: Any) -> Any:
            seconds = task.fields.get("seconds") or 0.0
            if task.total is not None:
                return BarColumn(bar_width=30).render(task)
            if not seconds:
                return Text(" " * 30)
            frac = min(1.0, (time.monotonic() - task.fields.get("t0", time.monotonic())) / seconds)
            return ProgressBar(total=1.0, completed=frac, width=30)

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), PhaseBar(), TimeElapsedColumn(),
                    console=console, transient=False, refresh_per_second=8)


def cmd_bench(args: argparse.Namespace) -> None:
    from rich.console import Console

    from bench import report
    from bench.common import BenchError, Harness
    names = _selected(args.only, args.quick)
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cli_error(f"cannot create the output directory {out_dir}: {exc.strerror or exc}") from None
    console = Console(highlight=False)
    machine = report.machine_info()
    mode = "quick" if args.quick else "full"
    console.print(f"[bold]tape bench[/] ({mode}): {', '.join(names)} on {machine['cores']} cores "
                  f"({machine['cpu'] or 'unknown CPU'}) → {out_dir}/")
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.monotonic()
    results: dict[str, Any] = {
        "mode": mode, "started": started.isoformat(timespec="seconds"), "machine": machine,
        "command": " ".join(["tape bench", *sys.argv[(sys.argv.index("bench") + 1) if "bench" in sys.argv else 1:]]),
        "workloads": {}, "errors": {}, "timings_s": {},
    }
    work_dir = Path(args.work_dir) if args.work_dir else None
    progress = _progress(console)
    with progress:
        reporter = RichReporter(progress, console)
        overall = progress.add_task(f"[bold]0/{len(names)} workloads", total=len(names), workload="",
                                    seconds=0.0, t0=time.monotonic())
        harness = Harness(args.quick, work_dir=work_dir, reporter=reporter, base_port=args.base_port,
                          profile_dir=out_dir if args.profile else None)
        if args.profile:
            from bench.common import py_spy
            if py_spy() is None:
                console.print("[yellow]--profile: py-spy is not installed (pip install py-spy); no profiles[/]")
        try:
            for i, name in enumerate(names):
                progress.update(overall, description=f"[bold]{i}/{len(names)} workloads: {name}[/] — "
                                f"{DESCRIPTIONS[name]}")
                w0 = time.monotonic()
                try:
                    results["workloads"][name] = _runner(name)(args.quick, harness)
                    console.print(f"[green]✓[/] [bold]{name}[/] ({time.monotonic() - w0:.0f} s): "
                                  f"{headline(name, results['workloads'][name])}")
                except BenchError as exc:
                    results["errors"][name] = str(exc)
                    console.print(f"[red]✗ {name}:[/] {exc}")
                except ImportError as exc:
                    results["errors"][name] = f"cannot import the benchmark: {exc}"
                    console.print(f"[red]✗ {name}:[/] cannot import the benchmark: {exc}")
                except Exception as exc:  # keep the other workloads' results
                    results["errors"][name] = f"{type(exc).__name__}: {exc}"
                    console.print(f"[red]✗ {name}:[/] {type(exc).__name__}: {exc}")
                    console.print(traceback.format_exc(), markup=False)
                results["timings_s"][name] = round(time.monotonic() - w0, 2)
                progress.advance(overall)
            progress.update(overall, description=f"[bold]{len(names)}/{len(names)} workloads")
            reporter.phase("writing results")
        finally:
            harness.close()
        results["profiles"] = harness.profiles
        results["machine_end"] = report.machine_info()
        results["duration_s"] = time.monotonic() - t0
        written = report.write(results, out_dir)
        reporter.phase("done")
    console.print(f"Wrote {', '.join(str(p) for p in written)} in {results['duration_s']:.0f} s.")
    for row in results["comparisons"]:
        if row["ratio"] is not None:
            met = "" if row["met"] is None else ("  [green]met[/]" if row["met"] else "  [red]not met[/]")
            console.print(f"  {row['section']:<10} {row['metric']}: {report.ratio_text(row['ratio'])} "
                          f"({report.fmt(row['tape'])} vs {report.fmt(row['peer'])} {row['unit']}){met}")
    if results["errors"]:
        raise _cli_error("; ".join(f"{k}: {v.splitlines()[0]}" for k, v in results["errors"].items()))
