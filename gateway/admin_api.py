"""Admin-only HTTP endpoints: time travel, the change stream and checkpoints.

Every endpoint needs ``Authorization: Convex <admin key>`` (or ``Bearer``);
without it the answer is 401 ``{"code": "Unauthorized", "message"}`` and
nothing is done.

* ``POST /api/admin/query_at`` — body ``{"path", "args", "ts" | "offset" | "time", "format"?}``:
  runs a query as of a past point. ``ts``: a commit timestamp (ns, as an
  integer, a decimal string, or the encoded u64 `/api/query_ts` returns) — the
  state after every record with ts <= it; ``offset``: the state after log
  record N; ``time``: an ISO-8601 time. Answers like ``/api/query`` plus
  ``offset``/``ts``/``time`` of the state used (``ts`` as a decimal string).
  The live deployment is not disturbed (see `gateway.time_travel`). With
  ``Authorization: Convex <admin key>:<base64 of a JSON identity>`` the query
  runs as that user (`ctx.auth.get_user_identity()`). (The admin key calls
  internal functions through the public routes: ``/api/query``, ``/api/function``, ….)
* ``GET /api/admin/changes?from=OFFSET|TIME&table=T&doc_format=json|convex&follow=1&include_system=0``
  — change events (`log.changes`) from ``from`` (default 0; ``end`` = only new
  ones), then live as commits happen (``follow=0``: stop at the current end).
  A WebSocket upgrade gets one text message per event; a plain GET gets
  NDJSON (``application/x-ndjson``), one event per line.
* ``GET /api/admin/checkpoints`` — the projection checkpoints of the data directory.
* ``GET /api/admin/commit_times`` — the latest applied batches as ``[[ts, t_ns], ...]``: the
  batch's last commit ts and the server's ``time.perf_counter_ns()`` when the batch was durable
  and applied, just before subscriptions were updated (``clock`` names the clock, so a client on
  the same host can time commit → update against its own ``perf_counter``).
* ``POST /api/admin/checkpoints`` — take a checkpoint now.
* ``GET /api/admin/checkpoints/latest[?indexes=1]`` — a fresh checkpoint (taken now, or the newest if nothing
  changed since) as a tar stream ending with SHA-256 digests of its members
  (`projections.checkpoint_transfer`); headers ``X-Tape-Checkpoint-Offset``, ``-Ts`` and ``-Bytes``.
  ``indexes=1`` includes the search and vector indexes it carries. New replicas bootstrap from it
  (`gateway.bootstrap`).
* ``POST /api/admin/run`` — body ``{"path", "args", "format"?}``: runs any function (query,
  mutation or action; internal ones included) as the admin (or, with ``<key>:<identity>``, as that
  user), on the live deployment. Answers like ``/api/function``. This is what ``tape run`` and the
  dashboard call.
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from engine.context import ADMIN_IDENTITY
from engine.client_values import result_wire
from engine.errors import AppError, EngineError, FunctionNotFound
from engine.function_logs import lines_of
from gateway.auth import AuthFailure, decode_acting_as
from gateway.config import NODE_KEY
from gateway import http_protocol as hp
from gateway.sync_session import error_fields
from gateway.time_travel import close_time_travel, get_time_travel
from history.errors import RestoreError, StreamError
from history.points import format_ns, iso_to_ns
from history.stream import start_offset
from log.archived_log import ArchivedLog
from log.changes import DOC_FORMATS, TableFilter, encode_changes, jsonl_chunk
from log.errors import LogClosedError, LogError
from projections.checkpoint_transfer import checkpoint_size, pin_checkpoint, tar_checkpoint
from projections.checkpoints import SCHEMA_MARKER
from projections.checkpoints import list_checkpoints as checkpoints_of

if TYPE_CHECKING:
    from gateway.node import Node

log = logging.getLogger("tape.admin_api")

_JSON = "application/json"
DISCONNECT_POLL_SECONDS = 1.0
_STREAMS: "web.AppKey[set[asyncio.Task[Any]]]" = web.AppKey("tape.admin.change_streams", set)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=_JSON)


def _bad(message: str, code: str = "BadRequest", status: int = 400) -> web.Response:
    return _json({"code": code, "message": message}, status)


def _authorized(request: web.Request) -> bool:
    node: Node = request.app[NODE_KEY]
    return bool(node.admin.check(request.headers.get("Authorization")))


def _acting_identity(request: web.Request) -> dict[str, Any]:
    """The identity an authorized admin call runs with: the user it acts as, else the admin marker."""
    _scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return decode_acting_as(credentials.strip()) or ADMIN_IDENTITY


def _unauthorized() -> web.Response:
    return _bad("this endpoint needs the admin key: send 'Authorization: Convex <admin key>'",
                code="Unauthorized", status=401)


# ----------------------------------------------------------------- time travel


async def _target_offset(node: "Node", body: dict[str, Any]) -> tuple[int, str]:
    """(offset of the state to use, how it was asked for) from a query_at body."""
    tt = get_time_travel(node)
    given = [k for k in ("ts", "offset", "time") if body.get(k) is not None]
    if len(given) != 1:
        raise hp.HttpApiError("give exactly one of ts, offset or time", code="BadTimestamp")
    key = given[0]
    if key == "offset":
        value = body["offset"]
        if type(value) is str and value.lstrip("-").isdigit():
            value = int(value)
        if type(value) is not int or value < -1:
            raise hp.HttpApiError(f"offset: expected an integer >= -1, got {value!r}", code="BadOffset")
        end = node.log.next_offset()
        if value >= end:
            raise hp.HttpApiError(f"offset {value} is past the end of the log (last offset {end - 1})",
                                  code="BadOffset")
        return value, f"offset {value}"
    if key == "ts":
        ts = hp.parse_query_ts(body["ts"])
    else:
        if type(body["time"]) is not str:
            raise hp.HttpApiError("time: expected an ISO-8601 string", code="BadTimestamp")
        try:
            ts = iso_to_ns(body["time"])
        except (ValueError, RestoreError) as exc:
            raise hp.HttpApiError(f"time: {exc}", code="BadTimestamp") from None
    start = getattr(node.log, "start", None)
    if node.log.first_offset() > 0 and start is not None and ts < start.prev_ts:
        if node.archive_directory is not None:  # before the window, but the archive holds it
            joined = ArchivedLog(node.archive_directory, node.log, owns_live=False)
            await joined.open()
            try:
                return await joined.offset_for_timestamp(ts + 1) - 1, f"ts {ts}"
            finally:
                await joined.close()
        raise hp.HttpApiError(f"ts {ts} ({format_ns(ts)}) is outside the retention window: retention removed the "
                              f"log before offset {node.log.first_offset()} (records after ts {start.prev_ts})",
                              code="OutsideRetentionWindow")
    return await tt.offset_at_ts(ts), f"ts {ts}"


async def _function_body(request: web.Request) -> tuple[dict[str, Any] | None, Any]:
    """(the JSON object body, its function-call fields), or (None, a 400 response) for a bad body."""
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        return None, _bad(f"request body is not valid JSON: {exc}", code="BadJsonBody")
    if type(body) is not dict:
        return None, _bad("request body must be a JSON object", code="BadJsonBody")
    return body, {k: v for k, v in body.items() if k in ("path", "args", "format", "componentPath")}


async def query_at(request: web.Request) -> web.Response:
    """POST /api/admin/query_at (see the module docstring)."""
    if not _authorized(request):
        return _unauthorized()
    node: Node = request.app[NODE_KEY]
    body, fields = await _function_body(request)
    if body is None:
        return fields  # type: ignore[return-value]  # (the 400 answer)
    try:
        call = hp.parse_function_call(fields, endpoint="query", query_format=request.query.get("format"))
        offset, _asked = await _target_offset(node, body)
    except hp.HttpApiError as exc:
        return _json({"code": exc.code, "message": exc.message}, exc.status)
    fmt = hp.response_format(call.format, request.headers.get("Convex-Client"))
    try:
        identity = _acting_identity(request)
    except AuthFailure as exc:
        return _bad(f"Authorization: {exc}", code="Unauthenticated", status=401)
    tt = get_time_travel(node)
    try:
        result = await tt.evaluate(call.path, call.args, offset, identity=identity)
    except RestoreError as exc:  # a point before the retention window
        return _bad(str(exc), code="OutsideRetentionWindow")
    except LogError as exc:
        return _bad(f"cannot read the log: {exc}", code="LogError", status=500)
    if result.error is not None:
        return _function_error(result.error, fmt)
    body_out = hp.success_body(result.value, fmt=fmt)
    body_out.update({"offset": result.offset, "ts": str(result.ts), "time": format_ns(result.ts) if result.ts else None})
    return _json(body_out)


async def run_function(request: web.Request) -> web.Response:
    """POST /api/admin/run (see the module docstring)."""
    if not _authorized(request):
        return _unauthorized()
    node: Node = request.app[NODE_KEY]
    body, fields = await _function_body(request)
    if body is None:
        return fields  # type: ignore[return-value]  # (the 400 answer)
    try:
        call = hp.parse_function_call(fields, endpoint="function", query_format=request.query.get("format"))
        identity = _acting_identity(request)
    except hp.HttpApiError as exc:
        return _json({"code": exc.code, "message": exc.message}, exc.status)
    except AuthFailure as exc:
        return _bad(f"Authorization: {exc}", code="Unauthenticated", status=401)
    fmt = hp.response_format(call.format, request.headers.get("Convex-Client"))
    runtime = node.runtime
    try:
        kind = runtime.app.function(call.path, allow_internal=True).kind
        if kind == "query":
            result = await runtime.query(call.path, call.args, allow_internal=True, identity=identity)
            if result.error is not None:
                raise result.error
            value, lines = result.value, result.log_lines
        elif kind == "mutation":
            outcome = await runtime.run_mutation(call.path, call.args, allow_internal=True, identity=identity)
            value, lines = outcome.value, outcome.log_lines
        else:
            action = await runtime.call_action(call.path, call.args, allow_internal=True, identity=identity)
            value, lines = action.value, action.log_lines
    except (AppError, EngineError) as exc:  # (FunctionNotFound is an EngineError)
        return _function_error(exc, fmt)
    if fmt == "convex_encoded_json":
        value = hp.Wire(result_wire(runtime.app, call.path, value))
    return _json(hp.success_body(value, fmt=fmt, log_lines=lines))


def _function_error(exc: BaseException, fmt: Any) -> web.Response:
    """The answer for a function's error: 404 for an unknown function, else the function-error status."""
    if isinstance(exc, FunctionNotFound):
        return _json(hp.error_body(str(exc), fmt=fmt), 404)
    if isinstance(exc, AppError):
        text, data = error_fields(exc)
        return _json(hp.error_body(text, error_data=data, fmt=fmt, log_lines=lines_of(exc)),
                     hp.FUNCTION_ERROR_STATUS)
    if isinstance(exc, EngineError):
        return _json(hp.error_body(str(exc), fmt=fmt, log_lines=lines_of(exc)), hp.FUNCTION_ERROR_STATUS)
    raise exc


# ----------------------------------------------------------------- change stream


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.lower() not in ("0", "false", "no", "off")


async def changes(request: web.Request) -> web.StreamResponse:
    """GET /api/admin/changes as a WebSocket or NDJSON stream (see the module docstring)."""
    if not _authorized(request):
        return _unauthorized()
    node: Node = request.app[NODE_KEY]
    q = request.query
    doc_format = q.get("doc_format", "json")
    if doc_format not in DOC_FORMATS:
        return _bad(f"doc_format: use one of {', '.join(DOC_FORMATS)}")
    tables = TableFilter(q.getall("table", []) or None, _flag(q.get("include_system"), False))
    follow = _flag(q.get("follow"), True)
    try:
        start = await start_offset(node.log, q.get("from"))
    except (RestoreError, StreamError) as exc:
        return _bad(str(exc), code="BadOffset")
    end = None if follow else node.log.next_offset()
    streams: set[asyncio.Task[Any]] = request.app[_STREAMS]
    task = asyncio.current_task()
    if task is not None:
        streams.add(task)
    try:
        ws = web.WebSocketResponse(heartbeat=30.0)
        if ws.can_prepare(request).ok:
            await ws.prepare(request)
            await _pump_websocket(node, ws, start, end, tables, doc_format)
            return ws
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def pump() -> None:
            async for records in _records(node, start, end):
                chunk, _n = jsonl_chunk(records, tables, doc_format)
                if chunk:
                    await resp.write(chunk)

        sender = asyncio.ensure_future(pump())
        try:
            # An idle stream writes nothing, so watch the connection to notice a client that left.
            while not sender.done():
                await asyncio.wait([sender], timeout=DISCONNECT_POLL_SECONDS)
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
        except asyncio.CancelledError:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            return resp
        if not sender.done():
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            return resp
        if sender.exception() is not None:
            if isinstance(sender.exception(), ConnectionResetError):
                return resp
            raise sender.exception()  # type: ignore[misc]
        try:
            await resp.write_eof()
        except ConnectionResetError:
            pass
        return resp
    finally:
        if task is not None:
            streams.discard(task)


async def _records(node: "Node", start: int, end: int | None) -> Any:
    """Batches of records from `start` (to `end`, or forever); ends quietly when the log closes."""
    batches = node.log.tail(start) if end is None else node.log.read(start, end)
    try:
        async for records in batches:
            yield records
    except LogClosedError:
        return
    finally:
        aclose = getattr(batches, "aclose", None)
        if aclose is not None:
            await aclose()


async def _pump_websocket(node: "Node", ws: web.WebSocketResponse, start: int, end: int | None,
                          tables: TableFilter, doc_format: str) -> None:
    async def pump() -> None:
        try:
            async for records in _records(node, start, end):
                for _id, _offset, event in encode_changes(records, tables, doc_format):
                    await ws.send_str(event.decode())
        except (ConnectionResetError, RuntimeError):
            return  # the client went away (RuntimeError: sending on a closing socket)
        await ws.close()

    sender = asyncio.ensure_future(pump())
    try:
        async for _msg in ws:  # the client sends nothing we need; this ends when it closes
            pass
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        if not ws.closed:
            await ws.close()


# ----------------------------------------------------------------- checkpoints


async def list_checkpoints(request: web.Request) -> web.Response:
    """GET /api/admin/checkpoints: the projection checkpoints of the data directory."""
    if not _authorized(request):
        return _unauthorized()
    node: Node = request.app[NODE_KEY]
    found = await asyncio.to_thread(checkpoints_of, node.config.data_dir)
    return _json({"checkpoints": [c.as_json() for c in found]})


async def create_checkpoint(request: web.Request) -> web.Response:
    """POST /api/admin/checkpoints: take a checkpoint now."""
    if not _authorized(request):
        return _unauthorized()
    node: Node = request.app[NODE_KEY]
    info = await node.checkpoint()
    if info is None:
        return _json({"created": False, "offset": node.runtime.projection.applied_offset})
    return _json({"created": True, **info.as_json()})


TRANSFER_BLOCK = 4 << 20


def _next_block(chunks: Any) -> bytes:
    """Up to about TRANSFER_BLOCK bytes from the `tar_checkpoint` iterator (b"" at its end)."""
    out = bytearray()
    for chunk in chunks:
        out += chunk
        if len(out) >= TRANSFER_BLOCK:
            break
    return bytes(out)


async def stream_latest_checkpoint(request: web.Request) -> web.StreamResponse:
    """GET /api/admin/checkpoints/latest: a fresh checkpoint as a verified tar stream (see the module docstring)."""
    if not _authorized(request):
        return _unauthorized()
    node: Node = request.app[NODE_KEY]
    found = await asyncio.to_thread(checkpoints_of, node.config.data_dir)
    live_marker = Path(node.config.projection_dir) / SCHEMA_MARKER
    stale = bool(found) and live_marker.exists() and not (found[-1].projection_dir / SCHEMA_MARKER).exists()
    await node.checkpoint(force=stale)  # None when nothing was applied since the newest one: that one is current
    found = await asyncio.to_thread(checkpoints_of, node.config.data_dir)
    if not found:
        return _bad("this node has applied nothing yet, so it has no checkpoint: replay the log from offset 0",
                    code="NoCheckpoint", status=404)
    info = found[-1]
    pinned = await asyncio.to_thread(pin_checkpoint, info, node.config.data_dir)
    indexes = request.query.get("indexes") == "1"  # the receiver takes the search and vector indexes too
    try:
        resp = web.StreamResponse(headers={
            "Content-Type": "application/x-tar", "X-Tape-Checkpoint-Offset": str(info.offset),
            "X-Tape-Checkpoint-Ts": str(info.ts),
            "X-Tape-Checkpoint-Bytes": str(await asyncio.to_thread(checkpoint_size, pinned, indexes))})
        await resp.prepare(request)
        chunks = tar_checkpoint(pinned, indexes)
        while block := await asyncio.to_thread(_next_block, chunks):
            await resp.write(block)
        await resp.write_eof()
        return resp
    finally:
        await asyncio.to_thread(shutil.rmtree, pinned, True)


# ----------------------------------------------------------------- wiring


async def _on_shutdown(app: web.Application) -> None:
    for task in list(app[_STREAMS]):
        task.cancel()


async def _on_cleanup(app: web.Application) -> None:
    close_time_travel(app[NODE_KEY])


async def commit_times(request: web.Request) -> web.Response:
    """GET /api/admin/commit_times: the latest applied batches (see the module docstring)."""
    if not _authorized(request):
        return _unauthorized()
    node: Node = request.app[NODE_KEY]
    clock = time.get_clock_info("perf_counter").implementation
    return _json({"clock": clock, "commits": [list(c) for c in node.subscriptions.commit_times]})


def add_routes(app: web.Application) -> None:
    """Install the admin endpoints on the node's aiohttp app."""
    app[_STREAMS] = set()
    app.router.add_post("/api/admin/query_at", query_at)
    app.router.add_get("/api/admin/changes", changes)
    app.router.add_get("/api/admin/checkpoints", list_checkpoints)
    app.router.add_get("/api/admin/checkpoints/latest", stream_latest_checkpoint)
    app.router.add_get("/api/admin/commit_times", commit_times)
    app.router.add_post("/api/admin/checkpoints", create_checkpoint)
    app.router.add_post("/api/admin/run", run_function)
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)


__all__ = ["add_routes", "changes", "query_at"]
