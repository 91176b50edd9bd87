"""Writing a run's results: results.json, results.md (ratios + absolute numbers) and PNG plots."""
from __future__ import annotations

import math
import os
import platform
import sys
from pathlib import Path
from typing import Any, Iterable

import orjson


def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        usable = os.cpu_count() or 0
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        load = []
    return {"cores": os.cpu_count() or 0, "usable_cores": usable, "loadavg_1_5_15": load,
            "cpu": cpu or platform.processor(),
            "python": platform.python_version(), "platform": platform.platform(),
            "implementation": platform.python_implementation()}


def _load(m: dict[str, Any]) -> str:
    load = m.get("loadavg_1_5_15") or []
    return "/".join(f"{x:.2f}" for x in load) if load else "–"


# --- comparisons -------------------------------------------------------------------------

def _row(section: str, metric: str, tape: float | None, peer_name: str, peer: float | None, unit: str,
         target: str = "", met: bool | None = None, note: str = "") -> dict[str, Any]:
    ratio = None
    if tape is not None and peer is not None and peer not in (0, 0.0) and not _nan(tape) and not _nan(peer):
        ratio = tape / peer
    return {"section": section, "metric": metric, "tape": tape, "peer_name": peer_name, "peer": peer,
            "unit": unit, "ratio": ratio, "target": target, "met": met, "note": note}


def _flat_items(x: dict[str, Any], prefix: str = "") -> Iterable[list[Any]]:
    """(dotted key, value) rows of a nested result dict, lists left out (for the per-workload tables)."""
    for k, v in x.items():
        if isinstance(v, dict):
            yield from _flat_items(v, f"{prefix}{k}.")
        elif not isinstance(v, (list, tuple)):
            yield [f"{prefix}{k}", v]


def _nan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _config(results: dict[str, Any] | None, transport: str, alpha: float) -> dict[str, Any] | None:
    if not results:
        return None
    for c in results.get("configs", []):
        if c.get("transport") == transport and c.get("alpha") == alpha:
            return c
    return None


def comparisons(w: dict[str, Any]) -> list[dict[str, Any]]:
    """Every comparing figure of a run, each as Tape ÷ peer (or ÷ floor) measured in the same run."""
    rows: list[dict[str, Any]] = []
    tape, sqlite = w.get("transfer"), w.get("baseline")
    log = (w.get("log") or {}).get("log")
    proj = (w.get("log") or {}).get("projection")
    for alpha in (0.0, 1.5):
        peer = _config(sqlite, "http", alpha)
        for transport in ("http", "ws"):
            mine = _config(tape, transport, alpha)
            if mine is None:
                continue
            label = f"TPS, Tape over {transport.upper() if transport == 'http' else 'WebSocket'}, α={alpha:g}"
            if peer is not None:
                ratio = mine["tps"] / peer["tps"] if peer["tps"] else None
                rows.append(_row("transfer", label, mine["tps"], "SQLite (HTTP)", peer["tps"], "transfers/s",
                                 "≥ 2× SQLite", None if ratio is None else ratio >= 2.0))
                rows.append(_row("transfer", f"p99 latency, Tape {transport}, α={alpha:g}", mine["p99_ms"],
                                 "SQLite (HTTP)", peer["p99_ms"], "ms", "Tape p99 ≤ 20 ms", mine["p99_ms"] <= 20.0))
            if log is not None:
                rows.append(_row("transfer", f"TPS ÷ raw fsync rate, Tape {transport}, α={alpha:g}", mine["tps"],
                                 "raw write+fdatasync", log["fsync_per_s"], "per s",
                                 note="> 1 only thanks to group commit"))
        if peer is not None and log is not None:
            rows.append(_row("transfer", f"TPS ÷ raw fsync rate, SQLite, α={alpha:g}", peer["tps"],
                             "raw write+fdatasync", log["fsync_per_s"], "per s", note="SQLite commits one fsync each"))
    for transport in ("http", "ws"):
        a0, a15 = _config(tape, transport, 0.0), _config(tape, transport, 1.5)
        if a0 and a15:
            ratio = a15["tps"] / a0["tps"] if a0["tps"] else None
            rows.append(_row("transfer", f"TPS α=1.5 ÷ α=0, Tape {transport}", a15["tps"], "Tape α=0", a0["tps"],
                             "transfers/s", "within 10% (≥ 0.9×)", None if ratio is None else ratio >= 0.90))
    a0, a15 = _config(sqlite, "http", 0.0), _config(sqlite, "http", 1.5)
    if a0 and a15:
        rows.append(_row("transfer", "TPS α=1.5 ÷ α=0, SQLite", a15["tps"], "SQLite α=0", a0["tps"], "transfers/s"))

    r = w.get("reactivity")
    if r:
        lat, flat = r.get("latency"), r.get("floor_latency")
        if lat and flat:
            n = lat["subscribers"]
            if "commit_receipt_p50_ms" in lat:
                # The figure: from the commit (the server's instant the transaction was durable and
                # applied) to each subscriber having the update, on the host's shared monotonic clock.
                for q, goal in (("p50", 2.0), ("p99", 10.0)):
                    rows.append(_row("reactivity", f"commit → update {q}, {n} subscribers (from the commit)",
                                     lat[f"commit_receipt_{q}_ms"], "raw broadcast floor (send → receipt)",
                                     flat[f"receipt_{q}_ms"], "ms", f"≤ {goal:g} ms",
                                     lat[f"commit_receipt_{q}_ms"] <= goal))
            for q, goal in (("p50", 2.0), ("p99", 10.0)):
                rows.append(_row("reactivity", f"writer's send → update {q}, {n} subscribers (incl. running the "
                                 "mutation and its fsync)", lat[f"receipt_{q}_ms"], "raw broadcast floor",
                                 flat[f"receipt_{q}_ms"], "ms", "" if "commit_receipt_p50_ms" in lat else f"≤ {goal:g} ms",
                                 None if "commit_receipt_p50_ms" in lat else lat[f"receipt_{q}_ms"] <= goal))
        fan, ffan = r.get("fanout"), r.get("floor_fanout")
        if fan and ffan:
            for q in ("p50", "p99"):
                ratio = fan[f"all_{q}_ms"] / ffan[f"all_{q}_ms"] if ffan[f"all_{q}_ms"] else None
                rows.append(_row("reactivity", f"fan-out to {fan['subscribers']:,}: all have it, {q} over rounds",
                                 fan[f"all_{q}_ms"], "raw broadcast floor", ffan[f"all_{q}_ms"], "ms",
                                 "≤ 1.5× floor" if q == "p99" else "",
                                 (ratio is not None and ratio <= 1.5) if q == "p99" else None))
        d = r.get("distinct")
        if d:
            rows.append(_row("reactivity", f"commits/s with {d['subscriptions']:,} live subscriptions",
                             d["commits_per_s"], "same writers, no subscriptions", d["no_subscription_commits_per_s"],
                             "commits/s", "≥ 5,000 commits/s", d["commits_per_s"] >= 5000))

    p = w.get("polling")
    if p:
        poll, push = p["polling"], p["push"]
        rows.append(_row("polling", "requests to the server (HTTP requests vs sync messages)", push["requests"],
                         "polling", poll["requests"], "requests", "≥ 99% fewer",
                         push["requests"] <= 0.01 * poll["requests"],
                         note="push: Connect + ModifyQuerySet per client, nothing after"))
        rows.append(_row("polling", "query executions on the server", push["query_executions"], "polling",
                         poll["query_executions"], "executions", "≥ 99% fewer",
                         push["query_executions"] <= 0.01 * poll["query_executions"],
                         note="push: one shared execution + one re-run per change"))
        rows.append(_row("polling", "bytes, both directions", push["bytes_total"], "polling", poll["bytes_total"],
                         "bytes", note="push also delivers every change, polling one in five"))
        rows.append(_row("polling", "mean staleness", push["staleness_mean_ms"], "polling",
                         poll["staleness_mean_ms"], "ms", "≥ 50× lower",
                         poll["staleness_mean_ms"] >= 50 * push["staleness_mean_ms"]))

    engine = w.get("engine")
    if engine:
        runs = {r["alpha"]: r for r in engine["runs"]}
        for alpha, r in sorted(runs.items()):
            rows.append(_row("engine", f"in-process transfer mutations/s, α={alpha:g}", r["tps"], "target",
                             float(engine.get("target_tps", 20_000)), "mutations/s",
                             f"≥ {engine.get('target_tps', 20_000):,}", r["tps"] >= engine.get("target_tps", 20_000)))
        if 0.0 in runs and 1.5 in runs:
            rows.append(_row("engine", "in-process TPS α=1.5 ÷ α=0", runs[1.5]["tps"], "α=0", runs[0.0]["tps"],
                             "mutations/s", "at any contention level", runs[1.5]["tps"] >= 0.9 * runs[0.0]["tps"]))
    kafka = w.get("kafka")
    if kafka:
        t, lag = kafka["throughput"], kafka["lag_paced"]
        rows.append(_row("kafka", "committer on Kafka, transfer mutations/s", t["tps"], "target", 5000.0,
                         "mutations/s", "≥ 5,000", t["tps"] >= 5000))
        rows.append(_row("kafka", f"replica lag p99 at {lag['rate_per_s']:,}/s (broker ack → applied on replica)",
                         lag["p99_ms"], "target", 20.0, "ms", "≤ 20 ms at 5,000/s",
                         bool((kafka.get("targets") or {}).get("lag_p99_20ms_at_5000")),
                         note=f"achieved {lag['achieved_per_s']:,.0f}/s, p50 {lag['p50_ms']:.1f} ms"))
    rs = w.get("restore")
    if rs:
        n = rs.get("records")
        big = n is None or n >= 1_000_000
        rows.append(_row("restore", f"restore of a {n or 0:,}-record log to its midpoint, with checkpoints",
                         rs["restore_mid_s"], "target", 5.0, "s", "≤ 5 s (1M records)",
                         rs["restore_mid_s"] <= 5.0 if big else None))
        rows.append(_row("restore", "replay from the log without checkpoints", rs["replay_records_per_s"], "target",
                         100_000.0, "records/s", "≥ 100,000", rs["replay_records_per_s"] >= 100_000))
        rows.append(_row("restore", "change export to a file, JSON lines", rs["export_jsonl_events_per_s"], "target",
                         100_000.0, "events/s", "≥ 100,000", rs["export_jsonl_events_per_s"] >= 100_000))
    se = w.get("search")
    if se:
        b, q, bs, sub, g = se["build"], se["query"], se["beside"], se["subscribers"], se["goals"]
        n = se["documents"]
        rows.append(_row("search", f"search index build from the log, {n:,} documents", b["docs_per_s"],
                         "SQLite FTS5 insert", b["sqlite_fts5_docs_per_s"], "docs/s",
                         f"≥ {g['build_docs_per_s']:,} (1M docs)",
                         b["docs_per_s"] >= g["build_docs_per_s"] if n >= 1_000_000 else None,
                         note=f"projection rebuild without the search index: {b['without_search_docs_per_s']:,.0f}/s"))
        for pct, goal in (("p50", g["query_p50_ms"]), ("p99", g["query_p99_ms"])):
            rows.append(_row("search", f"two-term top-10 query {pct}", q["tape"][f"{pct}_ms"], "SQLite FTS5",
                             q["sqlite_fts5"][f"{pct}_ms"], "ms", f"≤ {goal:g} ms", q["tape"][f"{pct}_ms"] <= goal))
        rows.append(_row("search", f"transfers/s beside {bs['search_rate_per_s']:g} searches/s", bs["tps_with_search"],
                         "transfers alone", bs["tps_alone"], "transfers/s", "≤ 10% slower", bs["met"]))
        rows.append(_row("search", f"new match → subscriber p99, {sub['subscriptions']:,} search subscriptions",
                         sub["p99_ms"], "target", g["subscriber_p99_ms"], "ms", f"≤ {g['subscriber_p99_ms']:g} ms",
                         sub["met"], note="from the mutation call, incl. its fsync"))
    iso = w.get("isolation")
    if iso:
        goal = iso["goal"]["p99_ms"]
        for key, label in (("http", "HTTP query"), ("subscribe", "subscribe round trip")):
            att, idle = iso["attack"][key], iso["idle"][key]
            rows.append(_row("isolation", f"bystander {label} p99 under attack", att["p99_ms"],
                             "same bystander, idle", idle["p99_ms"], "ms", f"≤ {goal:g} ms", att["p99_ms"] <= goal,
                             note=f"{att['timeouts']} of {att['n']} calls timed out "
                                  f"(counted as {iso['settings']['timeout_s']:g} s)"))
    mem = w.get("memory")
    if mem:
        rows.append(_row("memory", f"server RSS at the end of {mem['seconds']:.0f} s of transfers, MiB",
                         mem["rss_end_mb"], "RSS in the middle of the run", mem["rss_middle_mb"], "MiB",
                         f"≤ {mem['goal_ratio']:g}×", mem["end_over_middle"] <= mem["goal_ratio"],
                         note=f"{mem['mutations']:,} mutations; start {mem['rss_start_mb']:.0f} MiB"))
    sched = w.get("scheduler")
    if sched:
        b, late = sched["burst"], sched["lateness"]
        rows.append(_row("scheduler", f"{b['jobs']:,} jobs due at one instant: jobs/s", b["jobs_per_s"],
                         "the same mutations called directly", b["direct_per_s"], "per s", "≥ 0.8×",
                         b["ratio"] >= b["goal_ratio"]))
        rows.append(_row("scheduler", f"job lateness p99 at {late['rate']:,.0f} jobs/s beside transfers",
                         late["lateness_p99_ms"], "target", late["goal_p99_ms"], "ms", "≤ 50 ms",
                         late["lateness_p99_ms"] <= late["goal_p99_ms"],
                         note=f"transfers {late['transfer_ratio']:.2f}× of their rate without the jobs"))
    mig = w.get("migration")
    if mig:
        for kind in ("export", "import"):
            rows.append(_row("migration", f"Convex snapshot ZIP {kind}, {mig['documents']:,} documents: docs/s",
                             mig[f"convex_{kind}_docs_per_s"], f"Tape Avro snapshot {kind}",
                             mig[f"tape_{kind}_docs_per_s"], "docs/s"))
    vec = w.get("vector")
    if vec:
        size = f"{vec['n']:,} × {vec['dims']}"
        full = vec["n"] >= 100_000 and vec["dims"] >= 768
        rows.append(_row("vector", f"top-10 p50, {size}, vector index (recall@10 {vec['recall_at_10']:.3f})",
                         vec["ann_p50_ms"], "exact numpy search", vec["exact_p50_ms"], "ms",
                         "p50 ≤ 5 ms, recall@10 ≥ 0.95", vec["goal"]["met"] if full else None,
                         note=f"{vec['ann_cold_p50_ms']:.2f} ms p50 right after an exact scan (cold caches)"
                         if "ann_cold_p50_ms" in vec else ""))
        rows.append(_row("vector", f"index build from the projection, {size}", float(vec["build_docs_per_s"]),
                         "documents written to the projection", float(vec["write_docs_per_s"]), "docs/s"))
    st = w.get("storage")
    if st:
        t, p = st["tape"], st["peer"]
        peer = "bare aiohttp file server (fsync)"
        for key, label, unit, goal in (
                ("large_upload_mib_s", f"upload of {st['large_mib']} MiB files", "MiB/s", "large"),
                ("large_download_mib_s", f"download of {st['large_mib']} MiB files", "MiB/s", "large"),
                ("small_upload_files_s", f"upload of {st['small_kib']} KiB files ({st['concurrency']} at a time)",
                 "files/s", "small"),
                ("small_download_files_s", f"download of {st['small_kib']} KiB files", "files/s", "small")):
            rows.append(_row("storage", label, t[key], peer, p[key], unit, f"≥ {st['goals'][goal]:g}×",
                             t[key] >= st["goals"][goal] * p[key],
                             note=f"peak RSS Tape {st['peak_rss_mib']['tape'] or 0:.0f} MiB, "
                                  f"peer {st['peak_rss_mib']['peer'] or 0:.0f} MiB"))
    if log:
        rows.append(_row("log", "FileLog durable appends/s ÷ raw fsyncs/s (64 appenders)", log["append_per_s"],
                         "raw write+fdatasync", log["fsync_per_s"], "per s"))
        if "target_append_per_s" in log:
            rows.append(_row("log", "FileLog durable appends/s vs target", log["append_per_s"], "target",
                             float(log["target_append_per_s"]), "records/s", f"≥ {log['target_append_per_s']:,}",
                             log["append_per_s"] >= log["target_append_per_s"]))
    if proj:
        rows.append(_row("log", "projection replay records/s ÷ raw RocksDB puts/s",
                         float(proj["replay_records_per_s"]),
                         "raw RocksDB WriteBatch put", float(proj["raw_puts_per_s"]), "per s"))
        if "target_records_per_s" in proj:
            rows.append(_row("log", "projection replay records/s vs target", float(proj["replay_records_per_s"]),
                             "target", float(proj["target_records_per_s"]), "records/s",
                             f"≥ {proj['target_records_per_s']:,}", bool(proj.get("meets_target"))))
    return rows


# --- Markdown --------------------------------------------------------------------------

def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return "–"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        if abs(x) >= 100:
            return f"{x:.0f}"
        if abs(x) >= 10:
            return f"{x:.1f}"
        return f"{x:.{digits}g}"
    return str(x)


def ratio_text(r: float | None) -> str:
    if r is None:
        return "–"
    if r >= 100:
        return f"{r:,.0f}×"
    if r >= 10:
        return f"{r:.1f}×"
    return f"{r:.3g}×"


def _table(header: list[str], rows: Iterable[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    w = results["workloads"]
    out = [f"# tape bench — {results['mode']} run", ""]
    out.append(f"Machine: **{m['cores']} cores** ({m['usable_cores']} usable), {m['cpu']}, "
               f"Python {m['python']} ({m['platform']}). Started {results['started']}, "
               f"took {results['duration_s']:.0f} s. Command: `{results['command']}`. Load average (1/5/15 min) "
               f"at the start {_load(m)}, at the end {_load(results.get('machine_end') or {})}.")
    out.append("")
    out.append("Every ratio is Tape ÷ the peer or floor named beside it, both measured in this run on this "
               "machine (client and server share its cores). *Met* compares with the issue's goals, which "
               "are goals, not assertions.")
    out.append("")
    rows = results.get("comparisons", [])
    if rows:
        out.append("## Comparisons")
        out.append("")
        header = ["Workload", "Metric", "Tape", "vs", "Peer / floor", "Unit", "Ratio (Tape ÷ peer)", "Target", "Met"]
        out += _table(header, [[r["section"], r["metric"], r["tape"], r["peer_name"], r["peer"], r["unit"],
                                ratio_text(r["ratio"]), r["target"] or "",
                                "–" if r["met"] is None else ("yes" if r["met"] else "**no**")] for r in rows])
        out.append("")
    if results.get("errors"):
        out.append("## Failed workloads")
        out.append("")
        for name, text in results["errors"].items():
            out.append(f"* **{name}**: {text}")
        out.append("")

    for key, title in (("transfer", "Transfer — Tape"), ("baseline", "Transfer — SQLite peer")):
        t = w.get(key)
        if not t:
            continue
        out.append(f"## {title}")
        out.append("")
        extra = f", {t['settings']}" if "settings" in t else ""
        out.append(f"{t['accounts']:,} accounts × {t.get('initial_balance', 1_000_000_000):,}; "
                   f"{t['clients']} clients, "
                   f"one transfer in flight each{extra}. accounts:total after the run: {t['total_after']:,.0f} "
                   f"(expected {t['total_expected']:,.0f}: **{'unchanged' if t['total_unchanged'] else 'CHANGED'}**"
                   + (f"; summed with {t['total_method']}" if t.get("total_method") else "") + ").")
        out.append("")
        out += _table(["transport", "α", "seconds", "transfers", "TPS", "p50 ms", "p99 ms", "max ms", "refused",
                       "errors", "server CPU %", "client CPU %"],
                      [[c["transport"], f"{c['alpha']:g}", c["duration_s"], c["transfers"], c["tps"], c["p50_ms"],
                        c["p99_ms"], c["max_ms"], c["failed"], c["errors"], c.get("server_cpu_pct"),
                        c.get("client_cpu_pct")] for c in t["configs"]])
        out.append("")
        out.append("CPU % is of one core (the server process with all its threads; the load-generating client).")
        out.append("")

    r = w.get("reactivity")
    if r:
        out.append("## Reactivity")
        out.append("")
        out.append("Latency is the writer's send → each subscriber receiving the Transition; *all* is the latest "
                   "receipt of a round (every subscriber has the update). Floor: the same bytes "
                   f"({r.get('transition_bytes', 0)} B Transition) forwarded by a bare aiohttp server.")
        out.append("")
        body = []
        for key, label in (("latency", "Tape, commit → update"), ("floor_latency", "floor"),
                           ("fanout", "Tape, fan-out"), ("floor_fanout", "floor")):
            x = r.get(key)
            if x:
                body.append([label, x["subscribers"], x["rounds"], x["receipt_p50_ms"], x["receipt_p99_ms"],
                             x["first_p50_ms"], x["all_p50_ms"], x["all_p99_ms"], x["all_max_ms"],
                             x["incomplete_rounds"]])
        out += _table(["", "subscribers", "rounds", "receipt p50 ms", "receipt p99 ms", "first p50 ms",
                       "all p50 ms", "all p99 ms", "all max ms", "incomplete"], body)
        out.append("")
        solo = r.get("solo_commit")
        if solo:
            lat = r.get("latency") or {}
            out.append(f"For scale: one writer alone (no subscribers), sequential transfers: send → done p50 "
                       f"{fmt(solo['p50_ms'])} ms, p99 {fmt(solo['p99_ms'])} ms; with 100 subscribers the writer's "
                       f"own send → done p50 {fmt(lat.get('writer_ack_p50_ms'))} ms.")
            out.append("")
        d = r.get("distinct")
        if d:
            out.append(f"Distinct subscriptions: {d['subscriptions']:,} queries over {d['sockets']} sockets "
                       f"(subscribed in {d['subscribe_s']:.2f} s); 64 writer sockets: "
                       f"**{d['commits_per_s']:,.0f} commits/s** ({d.get('commits', 0):,} transfers in "
                       f"{d.get('drive_s', 0):.1f} s, warm-up and drain included; latency in the window p50 "
                       f"{fmt(d['p50_ms'])} ms, p99 {fmt(d['p99_ms'])} ms), "
                       f"{d['updates_per_s']:,.0f} updates delivered/s ({d['updates_per_commit']:.2f} per commit); "
                       "without subscriptions the same writers did "
                       f"{d['no_subscription_commits_per_s']:,.0f} commits/s.")
            out.append("")

    p = w.get("polling")
    if p:
        out.append("## Polling vs push")
        out.append("")
        s = p["settings"]
        out.append(f"{s['pollers']:,} pollers every {s['interval_s']:g} s vs {s['subscribers']:,} subscribers of the "
                   f"same query over {p['window_s']:.0f} s, {p['changes']} changes (one per second). Bytes counted "
                   "exactly at the client (HTTP request/status lines, headers, bodies; WebSocket upgrade and frames).")
        out.append("")
        rows2 = []
        for name in ("polling", "push"):
            x = p[name]
            rows2.append([name, x["requests"], x["query_executions"], x["bytes_to_server"], x["bytes_to_clients"],
                          x["staleness_n"], x["staleness_mean_ms"], x["staleness_p50_ms"], x["staleness_p99_ms"]])
        out += _table(["", "requests", "query executions", "bytes → server", "bytes → clients", "observations",
                       "mean staleness ms", "p50 ms", "p99 ms"], rows2)
        out.append("")

    eng = w.get("engine")
    if eng:
        out.append("## Engine, in-process")
        out.append("")
        out.append("The bank transfer mutation from 256 concurrent in-process callers through `Runtime.run_mutation`: "
                   "serial execution, FileLog group commit (fdatasync), projection apply, answer. Loop CPU is the "
                   "event-loop thread's CPU time per mutation; loop busy near 100% means one core (the GIL) is the "
                   "limit, not the disk.")
        out.append("")
        out += _table(["α", "accounts", "callers", "mutations", "mutations/s", "p50 ms", "p99 ms", "mean batch",
                       "loop CPU µs/mutation", "process CPU µs/mutation", "loop busy", "total unchanged"],
                      [[r["alpha"], r["accounts"], r["concurrency"], r["mutations"], r["tps"], r["p50_ms"], r["p99_ms"],
                        r["mean_batch"], r.get("loop_cpu_us_per_mutation"), r.get("cpu_us_per_mutation"),
                        r.get("loop_busy"), r["total_ok"]] for r in eng["runs"]])
        out.append("")

    out += isolation_section(w.get("isolation"))

    for name, title in (("kafka", "Kafka: committer and replica"), ("restore", "Restore and export"),
                        ("lifecycle", "Lifecycle: replica join from a checkpoint, retention disk use")):
        x = w.get(name)
        if x:
            out.append(f"## {title}")
            out.append("")
            out += _table(["figure", "value"], list(_flat_items(x)))
            out.append("")

    lg = w.get("log")
    if lg:
        out.append("## Log and projection")
        out.append("")
        for name in ("log", "projection"):
            x = lg.get(name)
            if x:
                out += _table(["figure", "value"], [[k, v] for k, v in x.items()])
                out.append("")

    profiles = results.get("profiles") or {}
    if profiles:
        out.append("## Server profiles (py-spy)")
        out.append("")
        for name, prof in profiles.items():
            out.append(f"### {name} ({prof['samples']:,} samples)")
            out.append("")
            out += _table(["self %", "function"], [[f"{pct:.1f}", f"`{fn}`"] for fn, pct in prof["self"][:10]])
            out.append("")
            out += _table(["total %", "function"], [[f"{pct:.1f}", f"`{fn}`"] for fn, pct in prof["total"][:15]])
            out.append("")
    out += METHOD
    plots = results.get("plots") or []
    if plots:
        out.append("## Plots")
        out.append("")
        for name in plots:
            out.append(f"![{name}]({name})")
        out.append("")
    return "\n".join(out) + "\n"


def isolation_section(iso: dict[str, Any] | None) -> list[str]:
    """The Markdown of the isolation workload: bystander latency per phase, the attackers, server memory."""
    if not iso:
        return []
    s = iso["settings"]
    out = ["## Isolation", "",
           f"A bystander queries one document over HTTP and subscribes to it over a held WebSocket (each a closed "
           f"loop, {s['pause_s'] * 1e3:g} ms apart) for {s['phase_s']:g} s alone, then for {s['phase_s']:g} s "
           f"while the attackers below run. Calls time out after {s['timeout_s']:g} s and count as that long.", ""]
    rows = []
    for phase in ("idle", "attack"):
        x = iso[phase]
        for key, label in (("http", "HTTP query"), ("subscribe", "subscribe round trip")):
            y = x[key]
            rows.append([phase, label, y["n"], y["ok"], y["errors"], y["timeouts"], y["p50_ms"], y["p90_ms"],
                         y["p99_ms"], y["max_ms"], x.get("server_cpu_pct")])
    out += _table(["phase", "bystander", "samples", "ok", "errors", "timeouts", "p50 ms", "p90 ms", "p99 ms",
                   "max ms", "server CPU %"], rows)
    out.append("")
    rows = []
    for name, a in (iso["attack"].get("attackers") or {}).items():
        kinds = "; ".join(f"{k['count']}× `{k['first'][:160]}`".replace("|", "\\|") for k in a["error_kinds"])
        rows.append([name, a["description"], a["sent"], a["completed"], a["ok"], a["errors"], a["timeouts"],
                     kinds or "–"])
    out += _table(["attacker", "what", "sent", "completed", "ok", "errors", "timeouts", "errors seen"], rows)
    out.append("")
    start, end = iso["memory"]["start"], iso["memory"]["end"]
    rec = iso.get("recovery_s")
    out.append(f"Server RSS {fmt(start.get('rss_kb'))} kB after seeding, {fmt(end.get('rss_kb'))} kB at the end "
               f"(peak {fmt(end.get('peak_rss_kb'))} kB, {fmt(end.get('threads'))} threads). After the attackers "
               f"stopped the server answered the bystander again "
               f"{'after ' + fmt(rec) + ' s' if rec is not None else 'not at all (within the limit)'}.")
    out.append("")
    return out


METHOD = [
    "## Method",
    "",
    "* Every server (Tape `tape serve` on `examples/bank`, the aiohttp + SQLite peer, the raw broadcast floor) runs "
    "in its own process on 127.0.0.1 with uvloop; all clients run in the `tape bench` process, so clients and "
    "server share the machine's cores. The load average lines above tell how busy the machine was otherwise.",
    "* Transfer: 64 closed-loop clients, one transfer in flight each; TPS counts transfers that started and "
    "finished inside the measured window (after a warm-up); latency is client send → done. HTTP: one keep-alive "
    "aiohttp connection per client. WebSocket: one socket per client with a raw sync-protocol driver; a mutation "
    "is done when its MutationResponse and the Transition covering its ts have arrived (as the official clients "
    "wait). SQLite: WAL, synchronous=FULL, BEGIN IMMEDIATE, one transaction (and so one fsync) per transfer. The "
    "raw fsync rate is 100-byte appends + fdatasync (from `bench.log_bench`).",
    "* Reactivity: receipt times are taken in the client's `data_received`, before parsing; the floor server "
    "forwards the exact bytes of a Tape Transition to the same number of sockets, read by the same client code. "
    "10,000 subscriptions: commits/s over the whole drive, warm-up and drain included.",
    "* Polling vs push: bytes are counted exactly by minimal raw clients (HTTP/WebSocket level, no TCP/IP "
    "overhead). Staleness runs from the writer's send of a change to the client first seeing that version or a "
    "later one. Push query executions are derived (one shared execution, one re-run per change).",
    "",
]


# --- plots -------------------------------------------------------------------------

def plots(results: dict[str, Any], out_dir: Path) -> list[str]:
    """PNG charts of the run (matplotlib, Agg); returns the file names written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made: list[str] = []
    w = results["workloads"]

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        made.append(name)

    tape, sqlite = w.get("transfer"), w.get("baseline")
    if tape or sqlite:
        series = []
        for label, res, transport in (("Tape HTTP", tape, "http"), ("Tape WebSocket", tape, "ws"),
                                      ("SQLite HTTP", sqlite, "http")):
            vals = [(_config(res, transport, a) or {}).get("tps", 0.0) for a in (0.0, 1.5)]
            if any(vals):
                series.append((label, vals))
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / max(1, len(series))
        for i, (label, vals) in enumerate(series):
            xs = [j + i * width for j in range(2)]
            bars = ax.bar(xs, vals, width, label=label)
            ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(2)], ["α = 0 (uniform)", "α = 1.5"])
        ax.set_ylabel("transfers / s")
        ax.set_title(f"Transfer throughput, 64 clients ({results['machine']['cores']} cores)")
        ax.legend()
        save(fig, "transfer_tps.png")

        fig, ax = plt.subplots(figsize=(7, 4))
        for label, res in (("Tape", tape), ("SQLite", sqlite)):
            for c in (res or {}).get("configs", []):
                xs = c.get("latency_ms_sorted") or []
                if xs:
                    ys = [(i + 1) / len(xs) for i in range(len(xs))]
                    ax.plot(xs, ys, label=f"{label} {c['transport']} α={c['alpha']:g}")
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("fraction of transfers")
        ax.set_title("Transfer latency CDF")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "transfer_latency.png")

    r = w.get("reactivity")
    if r:
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, label, style, color in (("latency", "Tape, 100 subscribers", "-", "tab:blue"),
                                         ("floor_latency", "raw floor, 100", "--", "tab:blue"),
                                         ("fanout", "Tape, 1,000 subscribers", "-", "tab:green"),
                                         ("floor_fanout", "raw floor, 1,000", "--", "tab:green")):
            xs = (r.get(key) or {}).get("receipt_ms_sorted") or []
            if xs:
                ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], style, color=color, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("send → subscriber receives the update (ms, log scale)")
        ax.set_ylabel("fraction of receipts")
        ax.set_title("Commit → update latency vs raw broadcast floor")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "reactivity_latency.png")

    p = w.get("polling")
    if p:
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
        names = ["polling", "push"]
        colors = ["tab:orange", "tab:blue"]
        for ax, key, title in ((axes[0], "requests", "requests to the server"),
                               (axes[1], "bytes_total", "bytes (both directions)"),
                               (axes[2], "staleness_mean_ms", "mean staleness (ms)")):
            vals = [p[n][key] for n in names]
            bars = ax.bar(names, vals, color=colors)
            ax.bar_label(bars, labels=[fmt(v) for v in vals], fontsize=8)
            ax.set_title(title, fontsize=10)
            if key == "staleness_mean_ms":
                ax.set_yscale("log")
        fig.suptitle(f"Polling every {p['settings']['interval_s']:g} s vs push, "
                     f"{p['settings']['pollers']:,} clients each")
        save(fig, "polling_vs_push.png")

    lg = w.get("log") or {}
    if lg.get("log") or lg.get("projection"):
        labels, vals = [], []
        if lg.get("log"):
            labels += ["raw fsync/s", "FileLog appends/s"]
            vals += [lg["log"]["fsync_per_s"], lg["log"]["append_per_s"]]
        if lg.get("projection"):
            labels += ["raw RocksDB puts/s", "replay records/s"]
            vals += [lg["projection"]["raw_puts_per_s"], lg["projection"]["replay_records_per_s"]]
        fig, ax = plt.subplots(figsize=(7, 3.6))
        bars = ax.bar(labels, vals, color=["tab:gray", "tab:blue"] * 2)
        ax.bar_label(bars, labels=[fmt(float(v)) for v in vals], fontsize=8)
        ax.set_yscale("log")
        ax.set_title("Log append and projection replay vs physical floors")
        save(fig, "log_projection.png")
    return made


def write(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write results.json, the PNGs and results.md into `out_dir`; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results["comparisons"] = comparisons(results["workloads"])
    results["plots"] = plots(results, out_dir)
    json_path = out_dir / "results.json"
    json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY,
                                       default=_default))
    md_path = out_dir / "results.md"
    md_path.write_text(markdown(results))
    return [json_path, md_path] + [out_dir / p for p in results["plots"]]


def _default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return None
    raise TypeError(f"cannot serialise {type(obj).__name__}")


if __name__ == "__main__":  # pragma: no cover - re-render a results.json
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results/results.json")
    data = orjson.loads(src.read_bytes())
    write(data, src.parent)
