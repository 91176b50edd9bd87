"""Read replicas: follow the committer's log, forward mutations, read your writes.

A replica (``tape serve APP --role replica --committer URL --log LOG``) runs
queries and subscriptions from its own projection, which it keeps current by
tailing the shared log: a Kafka topic (``kafka://...``) or, on one host, the
committer's FileLog directory (opened as a read-only follower).

Mutations are not run here. `Replica.forward` (installed as the runtime's
``mutation_forwarder``) sends each one to the committer's internal endpoint
``POST /api/internal/mutation`` (admin-key protected: replicas are given the
committer's key with ``--admin-key-file``, ``TAPE_ADMIN_KEY_FILE`` or
``TAPE_ADMIN_KEY``: see `admin_key_from_env`), together with the
client's session id and request id, so the committer's exactly-once
bookkeeping holds across the hop and a retried forward is answered from the
log instead of running twice. The canonical path, the validated arguments and
the caller's identity travel unchanged: the committer binds a stored answer to
them (`engine.committer.request_fingerprint`), so a request id reused for
another call is refused the same way through any node. The answer carries
the commit's ts and offset; the replica answers its client only after its own
projection has applied that commit, so a client sees its own write through
whichever replica it talks to.

Duplicates: a record whose ts is not above the projection's applied ts (a
copy left by a retried Kafka produce) is never applied.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiohttp import web

from engine.committer import MutationOutcome
from engine.cursors import CursorSealer
from gateway.config import NODE_KEY
from engine.errors import AppError, EngineError, OutcomeUnknown, WritesUnavailable
from engine.function_logs import attach, lines_of
from gateway.metrics import observe_replica_apply
from values import from_wire, to_wire
from log.errors import LogError
from log.file_log import FileLog
from log.record import Record

if TYPE_CHECKING:
    from gateway.node import Node

log = logging.getLogger("tape.replica")

INTERNAL_MUTATION_PATH = "/api/internal/mutation"
ADMIN_KEY_ENV = "TAPE_ADMIN_KEY"
ADMIN_KEY_FILE_ENV = "TAPE_ADMIN_KEY_FILE"
CONNECT_RETRY_SECONDS = 5.0     # keep trying an unreachable committer this long
FORWARD_TIMEOUT_SECONDS = 30.0  # the committer answers within its log's append bound
APPLY_WAIT_SECONDS = 30.0       # how long a forwarded mutation waits for this replica to apply it
BACKOFF_MIN, BACKOFF_MAX = 0.05, 5.0


# ---------------------------------------------------------------- committer side


def add_internal_routes(app: web.Application) -> None:
    """Register the committer's internal endpoints (refused on nodes that are not the committer)."""
    app.router.add_post(INTERNAL_MUTATION_PATH, handle_internal_mutation)


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def handle_internal_mutation(request: web.Request) -> web.Response:
    """Run a mutation a replica forwarded: ``{path, args, identity, session_id, request_id}``.

    Answers ``{"ok": true, value, ts, offset, replayed}`` or ``{"ok": false,
    kind: "app"|"engine"|"unknown"|"unavailable", message[, data]}`` ("unknown": the
    outcome is unknown, see `OutcomeUnknown`; "unavailable": it did not run, see
    `WritesUnavailable`); HTTP 401 without the admin key,
    409 on a node that is not the committer.
    """
    node: Node = request.app[NODE_KEY]
    if not node.admin.check(request.headers.get("Authorization")):
        return _json({"ok": False, "kind": "auth",
                      "message": "this endpoint needs the committer's admin key"}, 401)
    if node.config.role != "committer":
        return _json({"ok": False, "kind": "engine",
                      "message": f"this node is a {node.config.role}, not the committer"}, 409)
    limit = node.config.max_message_bytes
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        return _json({"ok": False, "kind": "engine", "message": f"request over {limit} bytes"}, 413)
    try:
        body = orjson.loads(raw)
        path = body["path"]
        args = from_wire(body.get("args") or {})
        identity = body.get("identity")
        session_id = body.get("session_id")
        request_id = body.get("request_id")
        if not isinstance(path, str) or (identity is not None and not isinstance(identity, dict)):
            raise ValueError("path must be a string and identity an object or null")
        if session_id is not None and not isinstance(session_id, str) or (
                request_id is not None and not isinstance(request_id, int)):
            raise ValueError("session_id must be a string and request_id an integer")
    except (ValueError, KeyError, TypeError) as exc:
        return _json({"ok": False, "kind": "engine", "message": f"bad forwarded mutation: {exc}"}, 400)
    try:
        # The replica already checked the caller may run this function.
        outcome = await node.runtime.run_mutation(path, args, allow_internal=True, identity=identity,
                                                  session_id=session_id, request_id=request_id)
    except AppError as exc:
        return _json({"ok": False, "kind": "app", "message": str(exc), "data": to_wire(exc.data),
                      "logLines": lines_of(exc)})
    except OutcomeUnknown as exc:
        return _json({"ok": False, "kind": "unknown", "message": str(exc)})
    except WritesUnavailable as exc:
        return _json({"ok": False, "kind": "unavailable", "message": str(exc)})
    except EngineError as exc:
        return _json({"ok": False, "kind": "engine", "message": str(exc), "logLines": lines_of(exc)})
    return _json({"ok": True, "value": to_wire(outcome.value), "ts": outcome.ts, "offset": outcome.offset,
                  "replayed": outcome.replayed, "logLines": outcome.log_lines})


# ---------------------------------------------------------------- replica side


class Replica:
    """The replica half of a node: the log follower and the mutation forwarder."""

    def __init__(self, node: "Node", committer_url: str | None, admin_key: str | None) -> None:
        self.node = node
        self.committer_url = committer_url.rstrip("/") if committer_url else None
        self.admin_key = admin_key
        self.last_error: str | None = None
        self.caught_up = False  # applied the log as it was at start (see `gateway.health`)
        self.forwarded = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._session: aiohttp.ClientSession | None = None

    # -- following the log ----------------------------------------------------------
    def _apply(self, batch: list[Record]) -> None:
        projection = self.node.runtime.projection
        offset, ts = projection.applied_offset, projection.applied_ts
        fresh = [r for r in batch if r.offset > offset and r.ts > ts]
        if fresh:
            self.node.runtime.apply_committed(fresh)
            observe_replica_apply(fresh[-1].ts)
        self._release_waiters()

    async def catch_up(self) -> None:
        """Apply what the log holds now (before the node starts serving)."""
        start = self.node.runtime.projection.applied_offset + 1
        log_ = self.node.runtime.log
        if start < log_.next_offset():
            async for batch in log_.read(start):
                self._apply(batch)
        self.caught_up = True

    async def follow(self) -> None:
        """Tail the log forever, applying new commits; resumes with backoff after errors."""
        backoff = BACKOFF_MIN
        try:
            while True:
                start = self.node.runtime.projection.applied_offset + 1
                try:
                    async for batch in self.node.runtime.log.tail(start):
                        self._apply(batch)
                        if self.last_error is not None:
                            log.warning("replica follower resumed at offset %d", batch[-1].offset)
                            self.last_error = None
                        backoff = BACKOFF_MIN
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    message = f"{type(exc).__name__}: {exc}"
                    if message != self.last_error:
                        log.error("replica follower stopped at offset %d (%s); serving what it has and "
                                  "retrying", self.node.runtime.projection.applied_offset, message)
                    self.last_error = message
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            for _, _, fut in self._waiters:
                if not fut.done():
                    fut.set_exception(EngineError("the replica is shutting down"))
            self._waiters.clear()
            if self._session is not None:
                await self._session.close()
                self._session = None

    def _release_waiters(self) -> None:
        if not self._waiters:
            return
        projection = self.node.runtime.projection
        offset, ts = projection.applied_offset, projection.applied_ts
        keep = []
        for entry in self._waiters:
            want_offset, want_ts, fut = entry
            if fut.done():
                continue
            if offset >= want_offset or ts >= want_ts:
                fut.set_result(None)
            else:
                keep.append(entry)
        self._waiters = keep

    async def wait_applied(self, offset: int, ts: int, timeout: float = APPLY_WAIT_SECONDS) -> None:
        """Return once the projection has applied the commit at (`offset`, `ts`)."""
        projection = self.node.runtime.projection
        if projection.applied_offset >= offset or projection.applied_ts >= ts:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((offset, ts, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise EngineError(
                f"the mutation was committed (offset {offset}) but this replica has not applied it within "
                f"{timeout:g}s (replica at offset {projection.applied_offset}"
                + (f"; follower error: {self.last_error}" if self.last_error else "") + ")") from None

    # -- forwarding mutations -------------------------------------------------------
    async def forward(self, path: str, args: dict[str, Any], identity: dict[str, Any] | None,
                      session_id: str | None, request_id: int | None) -> MutationOutcome:
        """Run a mutation on the committer; returns once this replica shows its effects."""
        if self.committer_url is None:
            raise EngineError("this replica has no committer address (start it with --committer URL)")
        body = orjson.dumps({"path": path, "args": to_wire(args), "identity": identity,
                             "session_id": session_id, "request_id": request_id})
        data = await self._post(body, retry_after_send=session_id is not None and request_id is not None)
        lines = [str(x) for x in data.get("logLines") or []]
        if not data.get("ok"):
            message = str(data.get("message") or "the committer refused the mutation")
            kind = data.get("kind")
            error: Exception
            if kind == "app":
                error = AppError(from_wire(data.get("data")), message)
            elif kind == "unknown":
                error = OutcomeUnknown(message)
            elif kind == "unavailable":
                error = WritesUnavailable(message)
            else:
                error = EngineError(message)
            attach(error, lines)
            raise error
        outcome = MutationOutcome(from_wire(data.get("value")), int(data["ts"]), int(data["offset"]),
                                  bool(data.get("replayed")), log_lines=lines)
        self.forwarded += 1
        await self.wait_applied(outcome.offset, outcome.ts)
        return outcome

    async def _post(self, body: bytes, retry_after_send: bool) -> dict[str, Any]:
        """POST to the committer; retries while it cannot be reached (and, with request ids, after a lost answer)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        url = f"{self.committer_url}{INTERNAL_MUTATION_PATH}"
        headers = {"Content-Type": "application/json"}
        if self.admin_key:
            headers["Authorization"] = f"Convex {self.admin_key}"
        start = time.monotonic()
        backoff = BACKOFF_MIN
        while True:
            try:
                timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_SECONDS)
                async with self._session.post(url, data=body, headers=headers, timeout=timeout) as resp:
                    raw = await resp.read()
                    status = resp.status
            except aiohttp.ClientConnectorError as exc:  # nothing was sent
                if time.monotonic() - start + backoff > CONNECT_RETRY_SECONDS:
                    raise EngineError(f"the committer at {self.committer_url} is unreachable ({exc.os_error or exc}); "
                                      "the mutation was not applied") from None
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                if not retry_after_send or time.monotonic() - start > FORWARD_TIMEOUT_SECONDS:
                    raise EngineError(f"lost the connection to the committer at {self.committer_url} after "
                                      f"forwarding the mutation ({type(exc).__name__}); it may or may not "
                                      "have been applied") from None
            else:
                if status == 401:
                    raise EngineError(f"the committer at {self.committer_url} refused this replica's admin key: "
                                      f"start the replica with --admin-key-file (or {ADMIN_KEY_FILE_ENV} or "
                                      f"{ADMIN_KEY_ENV}) set to the committer's admin key")
                try:
                    data = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    data = None
                if isinstance(data, dict) and "ok" in data:
                    return data
                raise EngineError(f"the committer at {self.committer_url} answered HTTP {status}: "
                                  f"{raw[:200].decode(errors='replace')}")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)


class AdminKeyFileError(Exception):
    """An admin key file that cannot be used (missing, unreadable or empty); the message names it."""


def read_admin_key_file(path: str | os.PathLike[str]) -> str:
    """The admin key stored in file `path` (its first line, stripped); `AdminKeyFileError` if unusable.

    A file other local users may read gets a WARNING: the key is as secret as the data.
    """
    try:
        mode = os.stat(path).st_mode
        with open(path, encoding="utf-8") as f:
            key = f.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise AdminKeyFileError(f"cannot read the admin key file {os.fspath(path)}: "
                                f"{getattr(exc, 'strerror', None) or exc}") from None
    if not key:
        raise AdminKeyFileError(f"the admin key file {os.fspath(path)} is empty")
    if mode & 0o077:
        log.warning("the admin key file %s is readable by other users (mode %04o): chmod 600 it",
                    os.fspath(path), mode & 0o777)
    return key


def admin_key_from_env() -> str | None:
    """The committer's admin key from ``TAPE_ADMIN_KEY_FILE`` (a file holding it) or ``TAPE_ADMIN_KEY``."""
    path = os.environ.get(ADMIN_KEY_FILE_ENV)
    if path:
        return read_admin_key_file(path)
    return os.environ.get(ADMIN_KEY_ENV) or None


def _admin_key(node: "Node") -> str | None:
    return getattr(node.config, "admin_key", None) or admin_key_from_env()


async def _as_follower(node: "Node") -> None:
    """A replica on a FileLog must not hold the directory's writer lock: reopen read-only."""
    current = node.log
    if isinstance(current, FileLog) and current.is_writer:
        await current.close()
        follower = FileLog(current.directory, read_only=True)
        await follower.open()
        node.log = follower
        node.runtime.log = follower
        log.warning("replica: %s had no writer; opened it as a follower (start the committer to accept writes)",
                    current.directory)


def check_start_offset(log_: Any, needed: int, where: str) -> None:
    """Refuse to follow a log that no longer holds offset `needed` (Kafka topic retention or --retain removed it)."""
    first = log_.first_offset()
    if needed < first:
        raise LogError(
            f"this replica needs the log from offset {needed}, but {where} now starts at offset {first}: the "
            "records in between were deleted (Kafka topic retention, or --retain on the committer). Fix: "
            "start the replica with an empty --data directory and --committer URL, so it bootstraps from the "
            "committer's newest checkpoint (or --bootstrap-from a shared checkpoint directory).")


async def start_replica(node: "Node") -> Replica:
    """Make `node` a replica: catch up, follow the log, forward mutations to the committer."""
    await _as_follower(node)
    low_watermark = getattr(node.runtime.log, "low_watermark", None)
    if low_watermark is not None:
        await low_watermark()  # Kafka: ask the broker what topic retention deleted
    replica = Replica(node, node.config.committer_url, _admin_key(node))
    if replica.committer_url is None:
        log.warning("replica without --committer: mutations will fail, queries are served")
    elif not replica.admin_key:
        log.warning("replica without the committer's admin key (--admin-key-file, %s or %s): forwarded "
                    "mutations will be refused", ADMIN_KEY_FILE_ENV, ADMIN_KEY_ENV)
    node.runtime.mutation_forwarder = replica.forward
    if replica.admin_key:  # the committer's: cursors this replica issues open there too (and back)
        node.runtime.cursors = CursorSealer.from_text(replica.admin_key)
    applied, end = node.runtime.projection.applied_offset, node.runtime.log.next_offset()
    check_start_offset(node.runtime.log, applied + 1, node.config.log_location)
    if end <= applied:
        raise LogError(f"the log {node.config.log_location} ends at offset {end} but this replica's projection "
                       f"has applied up to offset {applied}: the log was lost or replaced. Refusing to follow "
                       "a different history; restore the log, or start the replica with an empty --data.")
    try:
        await replica.catch_up()
    except Exception as exc:  # the follower keeps trying
        log.error("replica catch-up failed (%s: %s); serving what the projection has", type(exc).__name__, exc)
    node.replica = replica  # type: ignore[attr-defined]
    node._tasks.append(asyncio.get_running_loop().create_task(replica.follow(), name="tape-replica-follower"))
    return replica


__all__ = ["Replica", "check_start_offset", "start_replica", "add_internal_routes", "INTERNAL_MUTATION_PATH", "ADMIN_KEY_ENV",
           "ADMIN_KEY_FILE_ENV", "AdminKeyFileError", "admin_key_from_env", "read_admin_key_file"]
