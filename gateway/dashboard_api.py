"""The web dashboard at ``/_dashboard`` and the admin endpoints it (and `tape env`) uses.

The dashboard is a static bundle (`gateway/dashboard/`, built from `dashboard/`
at the repository root by ``make dashboard``); it signs in with the admin key,
subscribes to ``_system/dashboard:*`` queries over the sync protocol
(`engine.system_functions`) and calls the endpoints below. Every endpoint
needs ``Authorization: Convex <admin key>``.

* ``GET /api/admin/functions`` — every function of the app: path, kind, internal, args and returns
  validators (JSON, Convex's shape).
* ``GET /api/admin/crons`` — the app's cron jobs (`crons.py`): name, function, args, schedule, where it is
  registered, the last scheduled time and the next one (ms since the epoch).
* ``GET /api/admin/tables`` — every table (the schema's and those holding documents, system ones
  included): document count, indexes and fields, the schema's document validator.
* ``GET /api/admin/env`` — ``{"variables": [{"name", "value"}]}``;
  ``POST /api/admin/env`` — body ``{"set": {NAME: VALUE}, "remove": [NAME]}``, one logged record;
  answers the variables after the change with ``offset``/``ts`` of the record.
* ``GET /api/admin/commits?before=OFFSET&limit=N&include_system=0`` — the latest log records before
  OFFSET (default: the end), newest first: offset, ts, function, documents written (table, id, op).
* ``POST /api/admin/restore`` — body ``{"offset" | "ts", "dest"?}``: a new data directory as of that
  moment (`history.restore.restore_to_dir`; default ``<data dir>-restored-<offset>`` beside the data
  directory); answers ``{"dest", "offset", "ts", "command"}`` (the ``tape serve`` line to serve it).
* ``GET /api/admin/stats`` — log offset, sessions, subscriptions, lag, role, uptime, and per function path
  the calls, errors and p50/p99 durations since the process started (upper bounds of the
  `engine.metrics` histogram buckets holding those quantiles; ``null`` past the last bucket).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from engine.crons import CRON_TABLE
from engine.env_vars import EnvVarError, change_env, env_documents
from engine.errors import EngineError
from engine.metrics import FUNCTION_SECONDS, SUCCESS
from engine.system_functions import validator_json
from gateway.config import NODE_KEY
from history.errors import RestoreError
from history.points import Point, format_ns
from history.restore import restore_to_dir
from log.errors import LogError
from projections.errors import ProjectionError
from values import decode_doc

if TYPE_CHECKING:
    from gateway.node import Node

DASHBOARD_DIR = Path(__file__).parent / "dashboard"
DASHBOARD_PATH = "/_dashboard"
MAX_COMMITS = 500
_STARTED = web.AppKey("tape.dashboard.started", float)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _bad(message: str, code: str = "BadRequest", status: int = 400) -> web.Response:
    return _json({"code": code, "message": message}, status)


def _denied(request: web.Request) -> web.Response | None:
    """A 401 answer unless the request carries the admin key."""
    node: Node = request.app[NODE_KEY]
    if node.admin.check(request.headers.get("Authorization")):
        return None
    return _bad("this endpoint needs the admin key: send 'Authorization: Convex <admin key>'",
                code="Unauthorized", status=401)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(body=orjson.dumps({"code": "BadJsonBody", "message": f"request body is not "
                                                    f"valid JSON: {exc}"}), content_type="application/json")
    if type(body) is not dict:
        raise web.HTTPBadRequest(body=orjson.dumps({"code": "BadJsonBody", "message": "request body must be a "
                                                    "JSON object"}), content_type="application/json")
    return body


# ----------------------------------------------------------------- functions and tables


async def list_functions(request: web.Request) -> web.Response:
    """GET /api/admin/functions (see the module docstring)."""
    if (denied := _denied(request)) is not None:
        return denied
    node: Node = request.app[NODE_KEY]
    functions = [{"path": fn.path, "kind": fn.kind, "internal": fn.internal, "args": validator_json(fn.args),
                  "returns": validator_json(fn.returns)}
                 for fn in sorted(node.app.functions.values(), key=lambda f: f.path)]
    return _json({"functions": functions})


async def list_crons(request: web.Request) -> web.Response:
    """GET /api/admin/crons (see the module docstring)."""
    if (denied := _denied(request)) is not None:
        return denied
    node: Node = request.app[NODE_KEY]
    specs = node.app.crons.specs if node.app.crons is not None else {}
    states = {}
    for raw in node.runtime.projection.iter_documents(CRON_TABLE):
        doc = decode_doc(raw)
        states[doc["name"]] = doc
    crons = []
    for name, spec in sorted(specs.items()):
        state = states.get(name)
        last = state.get("lastScheduledTime") if state and state.get("schedule") == spec.describe() else None
        crons.append({"name": name, "function": spec.path, "args": spec.args, "schedule": spec.describe(),
                      "where": spec.where, "lastScheduledTime": last,
                      "nextScheduledTime": spec.next_after(last if last is not None else time.time() * 1000.0)})
    return _json({"crons": crons})


async def list_tables(request: web.Request) -> web.Response:
    """GET /api/admin/tables (see the module docstring)."""
    if (denied := _denied(request)) is not None:
        return denied
    node: Node = request.app[NODE_KEY]
    schema = node.app.schema
    projection = node.runtime.projection
    names = sorted(set(schema.tables) | set(projection.tables()))
    tables = []
    for name in names:
        definition = schema.table(name)
        indexes = {"by_creation_time": ["_creationTime"], "by_id": ["_id"]}
        if definition is not None:
            indexes.update({k: list(fields) for k, fields in definition.indexes.items()})
        tables.append({"name": name, "system": name.startswith("_"), "count": projection.count(name),
                       "indexes": indexes,
                       "document": validator_json(getattr(definition, "validator", None)) if definition else None})
    return _json({"tables": tables})


# ----------------------------------------------------------------- environment variables


def _variables(node: "Node") -> list[dict[str, str]]:
    docs = env_documents(node.runtime.projection)
    return [{"name": name, "value": docs[name]["value"]} for name in sorted(docs)]


async def get_env(request: web.Request) -> web.Response:
    """GET /api/admin/env: the environment variables."""
    if (denied := _denied(request)) is not None:
        return denied
    return _json({"variables": _variables(request.app[NODE_KEY])})


async def post_env(request: web.Request) -> web.Response:
    """POST /api/admin/env: set and remove variables in one logged record."""
    if (denied := _denied(request)) is not None:
        return denied
    node: Node = request.app[NODE_KEY]
    body = await _body(request)
    unknown = sorted(set(body) - {"set", "remove"})
    if unknown:
        return _bad(f"unexpected field {unknown[0]!r} (expected set, remove)")
    set_values, remove = body.get("set") or {}, body.get("remove") or []
    if type(set_values) is not dict:
        return _bad("set: expected an object {NAME: VALUE}")
    if type(remove) is not list:
        return _bad("remove: expected a list of names")
    try:
        outcome = await change_env(node.runtime, set_values, remove)
    except EnvVarError as exc:
        return _bad(str(exc), code="BadEnvironmentVariable")
    except EngineError as exc:
        return _bad(f"cannot change environment variables here: {exc} (send this to the committer node)",
                    code="NotCommitter", status=409)
    return _json({"variables": _variables(node), "offset": outcome.offset, "ts": str(outcome.ts)})


# ----------------------------------------------------------------- history


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise web.HTTPBadRequest(body=orjson.dumps({"code": "BadRequest", "message": f"{name}: expected an "
                                                    f"integer, got {text!r}"}), content_type="application/json")
    return min(max(value, lo), hi)


def _doc_summary(raw: bytes | None) -> Any:
    return decode_doc(raw) if raw is not None else None


async def list_commits(request: web.Request) -> web.Response:
    """GET /api/admin/commits (see the module docstring)."""
    if (denied := _denied(request)) is not None:
        return denied
    node: Node = request.app[NODE_KEY]
    end = node.log.next_offset()
    before = _int_param(request, "before", end, 0, end)
    limit = _int_param(request, "limit", 100, 1, MAX_COMMITS)
    include_system = request.query.get("include_system", "0").lower() in ("1", "true", "yes")
    with_docs = request.query.get("docs", "0").lower() in ("1", "true", "yes")
    start = max(0, before - limit)
    commits: list[dict[str, Any]] = []
    try:
        async for records in node.log.read(start, before):
            for record in records:
                writes = [w for w in record.writes if include_system or not w.table.startswith("_")]
                entry: dict[str, Any] = {
                    "offset": record.offset, "ts": str(record.ts), "time": format_ns(record.ts),
                    "function": record.function,
                    "writes": [{"table": w.table, "id": w.id,
                                "op": "delete" if w.doc is None else "insert" if w.prev is None else "update",
                                **({"doc": _doc_summary(w.doc), "prev": _doc_summary(w.prev)} if with_docs else {})}
                               for w in writes]}
                commits.append(entry)
    except LogError as exc:
        return _bad(f"cannot read the log: {exc}", code="LogError", status=500)
    commits.reverse()
    first_ts = None
    async for records in node.log.read(0, min(1, end)):
        first_ts = records[0].ts if records else None
        break
    return _json({"commits": commits, "end": end, "firstTs": str(first_ts) if first_ts else None,
                  "lastTs": str(node.runtime.projection.applied_ts)})


async def restore(request: web.Request) -> web.Response:
    """POST /api/admin/restore (see the module docstring)."""
    if (denied := _denied(request)) is not None:
        return denied
    node: Node = request.app[NODE_KEY]
    body = await _body(request)
    if ("offset" in body) == ("ts" in body):
        return _bad("give exactly one of offset or ts")
    kind = "offset" if "offset" in body else "ts"
    value = body[kind]
    if type(value) is str and value.lstrip("-").isdigit():
        value = int(value)
    if type(value) is not int or value < (-1 if kind == "offset" else 0):
        return _bad(f"{kind}: expected an integer, got {body[kind]!r}", code="BadOffset")
    data_dir = node.config.data_dir.absolute()
    dest_text = body.get("dest")
    if dest_text is not None and (type(dest_text) is not str or not dest_text.strip()):
        return _bad("dest: expected a directory path")
    label = f"offset-{value}" if kind == "offset" else f"ts-{value}"
    dest = Path(dest_text).expanduser() if dest_text else data_dir.parent / f"{data_dir.name}-restored-{label}"
    if not dest.is_absolute():
        dest = data_dir.parent / dest
    source = node.config.log_url or str(data_dir)
    try:
        report = await restore_to_dir(source, Point(kind, value), dest)
    except (RestoreError, LogError, ProjectionError, OSError) as exc:
        return _bad(f"restore failed: {exc}", code="RestoreFailed")
    command = f"tape serve {node.config.app_dir} --data {report.destination} --port {node.config.port + 10}"
    return _json({"dest": str(report.destination), "offset": report.upto, "ts": str(report.ts),
                  "time": format_ns(report.ts) if report.ts else None, "seconds": round(report.seconds, 3),
                  "command": command})


# ----------------------------------------------------------------- health


def _quantile(cumulative: list[tuple[float, int]], q: float) -> float | None:
    """The upper bound (seconds) of the bucket holding quantile `q`; None when none or past the last bound."""
    total = cumulative[-1][1] if cumulative else 0
    if total == 0:
        return None
    for bound, running in cumulative:
        if running >= q * total:
            return None if bound == float("inf") else bound
    return None


def _merged(cumulatives: list[list[tuple[float, int]]]) -> list[tuple[float, int]]:
    """Bucket-wise sums of cumulative histograms with the same bounds."""
    if not cumulatives:
        return []
    return [(bound, sum(c[i][1] for c in cumulatives)) for i, (bound, _n) in enumerate(cumulatives[0])]


def function_durations() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per path (calls, errors, p50, p99 in seconds) and the same over every call, from FUNCTION_SECONDS."""
    by_path: dict[str, dict[str, list[list[tuple[float, int]]]]] = {}
    for (path, outcome), histogram in FUNCTION_SECONDS.items():
        cumulative = histogram.snapshot()[0]
        entry = by_path.setdefault(path, {"all": [], "errors": []})
        entry["all"].append(cumulative)
        if outcome != SUCCESS:
            entry["errors"].append(cumulative)
    rows, everything = [], []
    for path in sorted(by_path):
        merged = _merged(by_path[path]["all"])
        everything.append(merged)
        errors = _merged(by_path[path]["errors"])
        rows.append({"path": path, "calls": merged[-1][1], "errors": errors[-1][1] if errors else 0,
                     "p50": _quantile(merged, 0.5), "p99": _quantile(merged, 0.99)})
    total = _merged(everything)
    return rows, {"calls": total[-1][1] if total else 0, "p50": _quantile(total, 0.5), "p99": _quantile(total, 0.99)}


async def stats(request: web.Request) -> web.Response:
    """GET /api/admin/stats: what the Health page shows."""
    if (denied := _denied(request)) is not None:
        return denied
    node: Node = request.app[NODE_KEY]
    projection = node.runtime.projection
    end = node.log.next_offset()
    functions, overall = function_durations()
    return _json({"role": node.config.role, "offset": projection.applied_offset, "ts": str(projection.applied_ts),
                  "logEnd": end, "lag": max(end - 1 - projection.applied_offset, 0),
                  "sessions": len(node.sessions), "subscriptions": node.subscriptions.query_count,
                  "reruns": node.subscriptions.reruns, "uptimeSeconds": round(time.time() - request.app[_STARTED], 1),
                  "time": time.time(), "functions": functions, "allFunctions": overall})


# ----------------------------------------------------------------- static files


async def dashboard_page(_: web.Request) -> web.StreamResponse:
    """GET /_dashboard: the single-page app (it asks for the admin key)."""
    index = DASHBOARD_DIR / "index.html"
    if not index.exists():
        return web.Response(status=404, text="the dashboard bundle is missing: run `make dashboard`")
    return web.FileResponse(index, headers={"Cache-Control": "no-cache"})


def add_routes(app: web.Application) -> None:
    """Install the dashboard and its admin endpoints on the node's aiohttp app."""
    app[_STARTED] = time.time()
    app.router.add_get("/api/admin/functions", list_functions)
    app.router.add_get("/api/admin/tables", list_tables)
    app.router.add_get("/api/admin/crons", list_crons)
    app.router.add_get("/api/admin/env", get_env)
    app.router.add_post("/api/admin/env", post_env)
    app.router.add_get("/api/admin/commits", list_commits)
    app.router.add_post("/api/admin/restore", restore)
    app.router.add_get("/api/admin/stats", stats)
    app.router.add_get(DASHBOARD_PATH, dashboard_page)
    app.router.add_get(DASHBOARD_PATH + "/", dashboard_page)
    if DASHBOARD_DIR.is_dir():
        app.router.add_static(DASHBOARD_PATH + "/assets", DASHBOARD_DIR, show_index=False)


__all__ = ["DASHBOARD_PATH", "add_routes"]
