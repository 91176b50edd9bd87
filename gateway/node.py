"""A running Tape node: log + projection + runtime + subscriptions + sessions, with a lifecycle."""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from pathlib import Path
from typing import Any

import orjson

from engine.app import App
from engine.errors import EngineError
from engine.cursors import CursorSealer
from engine.metrics import FSYNC_SECONDS
from engine.runtime import Runtime
from gateway.admin import AdminKey
from gateway.config import ServerConfig
from gateway.bootstrap import BootstrapReport, bootstrap_projection
from gateway.protocol import ping_message
from gateway.replica import start_replica
from gateway.storage_api import attach_storage
from gateway.subscriptions import SubscriptionManager
from gateway.time_travel import close_time_travel
from gateway.time_travel import query_at as query_in_the_past
from history.retention import RetentionPolicy, default_archive, run_retention
from log import FileLog, open_log
from log.segment_archive import DirectoryArchive
from projections.checkpoints import CheckpointInfo, CheckpointPolicy, checkpoint_live, run_checkpointer
from projections.errors import ProjectionError
from projections.store import Projection
from projections.vectors import VECTORS_DIR

log = logging.getLogger("tape.node")

VERSION = "0.1.0"
PING_AFTER_SECONDS = 15.0
GC_GEN0_THRESHOLD = 20_000
RETENTION_STEPS = 4  # checkpoints kept per retention window (one per window/4 of commit time)


class Node:
    """Everything one server process runs; `start()` and `stop()` bracket its life."""

    version = VERSION

    def __init__(self, config: ServerConfig, app: App) -> None:
        self.config = config
        self.app = app
        self.sessions: set[Any] = set()
        self.admin = AdminKey(config.data_dir)
        self.log: Any = None
        self.projection: Projection | None = None
        self.runtime: Runtime = None  # type: ignore[assignment]
        self.subscriptions: SubscriptionManager = None  # type: ignore[assignment]
        self._tasks: list[asyncio.Task[Any]] = []
        self.reload_error: str | None = None
        self.site_url: str | None = None  # where HTTP actions are served (set by gateway.server.serve)
        self.pushed_bytes = 0  # WebSocket frame bytes sent (or queued) to clients, for /metrics
        self.bootstrap: BootstrapReport | None = None  # how a new replica got its projection

    @property
    def checkpoint_policy(self) -> CheckpointPolicy:
        """Newest `checkpoint_keep`, plus (with --retain) one per window/4 and the one covering the window's start."""
        retain = self.config.retain_seconds
        if not retain:
            return CheckpointPolicy(keep=self.config.checkpoint_keep)
        window_ns = int(retain * 1e9)
        return CheckpointPolicy(keep=self.config.checkpoint_keep, step_ns=max(1, window_ns // RETENTION_STEPS),
                                window_ns=window_ns)

    @property
    def retention_policy(self) -> RetentionPolicy | None:
        """The --retain window and where removed segments go (None: keep everything)."""
        if not self.config.retain_seconds:
            return None
        where = self.config.archive
        archive = (None if where == "none" else
                   default_archive(self.config.data_dir) if where is None else DirectoryArchive(where))
        return RetentionPolicy(self.config.retain_seconds, archive)

    @property
    def archive_directory(self) -> Path | None:
        """The segment archive directory retention moved the log's prefix to, if it holds anything."""
        policy = self.retention_policy
        archive = policy.archive if policy is not None else default_archive(self.config.data_dir)
        if isinstance(archive, DirectoryArchive) and archive.exists():
            return archive.directory
        return None

    async def start(self) -> None:
        """Open storage, catch the projection up with the log, start the writer and background tasks."""
        try:
            await self._start()
        except BaseException:
            await self.stop()  # release the log and projection before reporting the failure
            raise

    async def _start(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        location = self.config.log_location
        replica_of_file_log = self.config.role == "replica" and not location.startswith("kafka://")
        options: dict[str, Any] = {}
        if self.config.segment_bytes and not location.startswith("kafka://"):
            options["segment_bytes"] = self.config.segment_bytes
        self.log = open_log(location, read_only=True, **options) if replica_of_file_log else open_log(location, **options)
        await self.log.open()
        if isinstance(self.log, FileLog):
            self.log.on_sync = FSYNC_SECONDS.observe
        if self.config.role == "replica":
            self.bootstrap = await bootstrap_projection(self.config, self.log)  # a new replica: from a checkpoint
        try:
            # Search indexes backfill on a thread: the server serves meanwhile (searches say how far it got).
            self.projection = Projection(self.config.projection_dir, self.app.schema.index_catalog(),
                                         background_search_backfill=True)
        except ProjectionError:
            raise
        except Exception as exc:  # RocksDB reports damage as a plain Exception
            raise ProjectionError(
                f"{self.config.projection_dir}: the projection cannot be opened ({exc}). It is rebuildable "
                f"from the log: tape doctor --data {self.config.data_dir} --rebuild-projection") from None
        self.runtime = Runtime(self.app, self.log, self.projection, self.config.limits, role=self.config.role,
                               vector_dir=self.config.data_dir / VECTORS_DIR)
        # pagination cursors are sealed under a key derived from the deployment's admin key (data dir)
        self.runtime.cursors = CursorSealer.from_text(self.admin.value)
        self.subscriptions = SubscriptionManager(self.runtime)
        # A search index built in the background: searches that said "still building" now answer.
        main_loop = asyncio.get_running_loop()
        self.projection.on_search_ready(lambda: main_loop.call_soon_threadsafe(self.refresh_subscriptions))
        attach_storage(self)  # ctx.storage: blobs in DATA_DIR/blobs
        await self.runtime.start()
        if self.config.role == "replica":
            await start_replica(self)  # tails the log, forwards mutations
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._pinger(), name="tape-pinger"))
        # Long-lived state (app, indexes, caches) is built: keep the collector off it, and run the
        # young generation less often (request handling allocates many short-lived objects).
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
        if self.config.checkpoint_interval > 0:  # periodic RocksDB checkpoints
            checkpointer = run_checkpointer(self.runtime.projection, self.config.data_dir,
                                            self.config.checkpoint_interval, self.checkpoint_policy,
                                            vectors=self.runtime.vectors)
            self._tasks.append(loop.create_task(checkpointer, name="tape-checkpointer"))
        retention = self.retention_policy
        if retention is not None and self.config.role == "committer" and isinstance(self.log, FileLog):
            every = min(60.0, max(0.1, retention.window_s / 8))  # how late segments go: ≤ window/8 + a checkpoint
            self._tasks.append(loop.create_task(run_retention(self.log, self.config.data_dir, retention, every),
                                                name="tape-retention"))
        if self.config.reload:
            self._tasks.append(loop.create_task(self._watch_app(), name="tape-reloader"))

    async def stop(self) -> None:
        """Finish queued mutations, close sessions, flush the projection and close the log."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.runtime is not None:
            await self.runtime.stop()
        for session in list(self.sessions):
            session.close(1001, "ServerShutdown")
        if self.subscriptions is not None:
            self.subscriptions.close()
        close_time_travel(self)
        if self.projection is not None:
            self.projection.close()
        if self.log is not None:
            log_, self.log = self.log, None
            await log_.close()

    async def query_at(self, path: str, args: dict[str, Any], ts: int, identity: Any, *, admin: bool = False) -> Any:
        """Run a query as of commit timestamp `ts` (see `gateway.time_travel.query_at`).

        Any past ts for an `admin` caller; otherwise only a state that was live within the last
        ``config.query_at_ts_window`` seconds (an older one raises `HttpApiError`, HTTP 400).
        """
        return await query_in_the_past(self, path, args, ts, identity, admin=admin)

    async def checkpoint(self, *, force: bool = False) -> CheckpointInfo | None:
        """Checkpoint the live projection now (None if nothing new was applied since the newest one)."""
        projection = self.runtime.projection if self.runtime is not None else self.projection
        assert projection is not None, "the node is not started"
        vectors = self.runtime.vectors if self.runtime is not None else None
        return await checkpoint_live(projection, self.config.data_dir, self.checkpoint_policy, force=force,
                                     vectors=vectors)

    async def _pinger(self) -> None:
        ping = orjson.dumps(ping_message())
        while True:
            await asyncio.sleep(PING_AFTER_SECONDS / 3)
            cutoff = time.monotonic() - PING_AFTER_SECONDS
            for session in list(self.sessions):
                if session.last_sent < cutoff:
                    session.send(ping)
                    session.last_sent = time.monotonic()

    def reload_app(self) -> list[str]:
        """Reload changed app modules; returns a summary line per function. Keeps the old app on error."""
        fresh = self.app.reload()
        self.runtime.install_app(fresh)
        self.app = fresh
        self.refresh_subscriptions()
        return [fn.summary() for fn in fresh.functions.values()]

    def refresh_subscriptions(self) -> None:
        """Re-run every live query and send the changed results (after a reload, or a search index built)."""
        if self.subscriptions is None or self.runtime is None:
            return
        changed = self.subscriptions.refresh_all()
        ts = self.runtime.projection.applied_ts
        per_session: dict[int, tuple[Any, list[Any]]] = {}
        for shared in changed:
            for subscriber, qid in shared.subscribers.values():
                per_session.setdefault(id(subscriber), (subscriber, []))[1].append((qid, shared))
        for subscriber, updates in per_session.values():
            subscriber.deliver(updates, ts)

    async def _watch_app(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                if not self.app.changed():
                    continue
            except OSError:
                continue
            try:
                lines = self.reload_app()
                self.reload_error = None
                log.info("reloaded %s: %d functions", self.app.directory, len(lines))
            except EngineError as exc:
                if str(exc) != self.reload_error:
                    log.error("reload failed, still serving the previous version: %s", exc)
                self.reload_error = str(exc)
                self.app._mtimes = {p: p.stat().st_mtime for p in self.app._module_files()}
