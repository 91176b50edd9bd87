"""A new replica starts from the committer's newest checkpoint instead of replaying the log from offset 0.

When a replica starts without a projection (an empty ``--data``), `bootstrap_projection`
installs one before the node opens it:

* from a shared checkpoint directory (``--bootstrap-from DIR``: the committer's
  data directory or its ``checkpoints/`` on a shared file system), by
  hard-linking (or copying) the newest checkpoint that belongs to the log; or
* from the committer over the admin API (``GET /api/admin/checkpoints/latest``,
  a tar stream verified by SHA-256 digests, see `projections.checkpoint_transfer`),
  stored as this replica's own checkpoint ``DATA/checkpoints/<offset>``.

The checkpoint's search indexes come with its projection directory and its saved
vector indexes go to ``DATA/vectors`` (`projections.vectors.adopt_saved`), so the
replica serves searches without building them first.

The node then follows the log from the checkpoint's offset + 1, so writes made
during the copy are simply the first records it applies. A checkpoint that does
not belong to the log (`projections.checkpoints.verify`) is refused. Only when
the committer has no checkpoint yet (it applied nothing), or cannot give one
(unreachable, or it refuses the admin key: logged as a WARNING), and the log
still starts at offset 0 does the replica replay from the start.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from log.errors import LogError
from projections.checkpoint_transfer import CheckpointReceiver, CheckpointTransferError
from projections.checkpoints import (TMP_PREFIX, CheckpointInfo, checkpoints_dir, copy_projection,
                                     list_checkpoints, nearest_valid_checkpoint)
from projections.vectors import VECTORS_DIR, adopt_saved

log = logging.getLogger("tape.bootstrap")

LATEST_CHECKPOINT_PATH = "/api/admin/checkpoints/latest"
FETCH_TIMEOUT_SECONDS = 3600.0
CONNECT_RETRY_SECONDS = 10.0
FEED_BYTES = 8 << 20


@dataclass
class BootstrapReport:
    """Where a replica's projection came from, and how fast the copy went."""

    source: str
    offset: int
    bytes: int
    seconds: float

    @property
    def bytes_per_second(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


class BootstrapError(LogError):
    """The replica cannot get a checkpoint it may start from (the message says why and what to do)."""


def _checkpoint_roots(path: Path) -> Path:
    """The data directory whose ``checkpoints/`` a --bootstrap-from path names (a data dir or its checkpoints/)."""
    return path.parent if path.name == "checkpoints" else path


async def _from_directory(shared: Path, data_dir: Path, log_: Any) -> tuple[CheckpointInfo, int]:
    root = _checkpoint_roots(shared)
    if not list_checkpoints(root):
        raise BootstrapError(f"{shared} holds no checkpoint to bootstrap from (take one on the committer: "
                             "POST /api/admin/checkpoints, or run it with --checkpoint-every)")
    await _see_offset(log_, list_checkpoints(root)[-1].offset)
    info = await nearest_valid_checkpoint(root, log_.next_offset(), log_)
    if info is None:
        raise BootstrapError(f"no checkpoint in {shared} belongs to the log (or covers its first offset "
                             f"{log_.first_offset()})")
    size = sum(p.stat().st_size for p in info.path.rglob("*") if p.is_file())
    return info, size


async def _fetch(url: str, admin_key: str | None, data_dir: Path) -> tuple[CheckpointInfo | None, int]:
    """Download the committer's newest checkpoint into DATA/checkpoints/<offset> (None: it has none)."""
    headers = {"Authorization": f"Convex {admin_key}"} if admin_key else {}
    root = checkpoints_dir(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + CONNECT_RETRY_SECONDS
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            try:
                resp = await session.get(f"{url.rstrip('/')}{LATEST_CHECKPOINT_PATH}", headers=headers,
                                         params={"indexes": "1"})
                break
            except aiohttp.ClientConnectorError as exc:
                if time.monotonic() > deadline:
                    raise BootstrapError(f"cannot reach the committer at {url} to fetch a checkpoint "
                                         f"({exc.os_error or exc})") from None
                await asyncio.sleep(0.5)
        async with resp:
            if resp.status == 404 and "NoCheckpoint" in await resp.text():
                return None, 0
            if resp.status == 401:
                raise BootstrapError(f"the committer at {url} refused this replica's admin key: start the "
                                     "replica with --admin-key-file set to the committer's admin key")
            if resp.status != 200:
                raise BootstrapError(f"the committer at {url} answered HTTP {resp.status} for its checkpoint: "
                                     f"{(await resp.text())[:200]}")
            offset = int(resp.headers["X-Tape-Checkpoint-Offset"])
            dest = root / str(offset)
            if dest.exists():
                shutil.rmtree(dest)
            receiver = CheckpointReceiver(dest)
            try:
                pending: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(1 << 20):
                    pending.append(chunk)
                    size += len(chunk)
                    if size >= FEED_BYTES:  # hash and write in a worker thread, a few MiB at a time
                        await asyncio.to_thread(receiver.feed, b"".join(pending))
                        pending, size = [], 0
                await asyncio.to_thread(receiver.feed, b"".join(pending))
                await asyncio.to_thread(receiver.finish)
            except BaseException:
                receiver.abort()
                raise
    found = [c for c in list_checkpoints(data_dir) if c.offset == offset]
    if not found:
        raise BootstrapError(f"the checkpoint received from {url} (offset {offset}) is not readable")
    return found[0], receiver.received


async def _see_offset(log_: Any, offset: int, timeout: float = 10.0) -> None:
    """Let the log (opened before the checkpoint was taken) learn that it holds `offset`: a read refreshes it."""
    deadline = time.monotonic() + timeout
    while log_.next_offset() <= offset and time.monotonic() < deadline:
        async for _batch in log_.read(offset, offset + 1):
            pass
        if log_.next_offset() <= offset:
            await asyncio.sleep(0.05)


def _install(info: CheckpointInfo, projection_dir: Path) -> None:
    """Copy the checkpoint's RocksDB files (and search indexes) to `projection_dir` (hard links where
    possible), atomically; its saved vector indexes go to DATA/vectors, next to it."""
    work = projection_dir.with_name(f"{TMP_PREFIX}{projection_dir.name}-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    adopt_saved(info.vectors_dir, projection_dir.parent / VECTORS_DIR, info.offset)
    copy_projection(info.projection_dir, work)
    os.rename(work, projection_dir)
    fd = os.open(projection_dir.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def bootstrap_projection(config: Any, log_: Any) -> BootstrapReport | None:
    """Install a checkpoint as DATA/projection of a new replica (see the module docstring); None if not needed.

    `config` is the node's `ServerConfig`; `log_` its open log.
    """
    projection_dir: Path = config.projection_dir
    if projection_dir.exists():
        return None
    for leftover in projection_dir.parent.glob(f"{TMP_PREFIX}{projection_dir.name}-*"):
        shutil.rmtree(leftover, ignore_errors=True)  # an install a crash interrupted
    started = time.perf_counter()
    shared = getattr(config, "bootstrap_from", None)
    if shared is not None:
        info, size = await _from_directory(Path(shared), config.data_dir, log_)
        source = f"checkpoint directory {shared}"
    elif config.committer_url:
        source = f"committer {config.committer_url}"
        try:
            info, size = await _fetch(config.committer_url, getattr(config, "admin_key", None), config.data_dir)
        except (BootstrapError, CheckpointTransferError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if log_.first_offset() > 0:
                raise BootstrapError(f"{exc}; and the log no longer starts at offset 0 (it starts at "
                                     f"{log_.first_offset()}), so this replica cannot replay it instead") from None
            log.warning("could not bootstrap from the committer's checkpoint (%s); replaying the log from "
                        "offset 0 instead", exc)
            info, size = None, 0
    else:
        info, size, source = None, 0, ""
    if info is None:
        if log_.first_offset() > 0:
            raise BootstrapError(
                f"this replica has no projection and the log starts at offset {log_.first_offset()} (earlier "
                "records were removed by retention): start it with --committer URL (it fetches the committer's "
                "newest checkpoint) or --bootstrap-from DIR (a shared checkpoint directory)")
        return None  # replay from offset 0
    await _see_offset(log_, info.offset)
    from_checkpoint = await nearest_valid_checkpoint(info.path.parent.parent, info.offset, log_)
    if from_checkpoint is None or from_checkpoint.offset != info.offset:
        raise BootstrapError(f"the checkpoint at offset {info.offset} from {source} does not belong to the log "
                             f"{config.log_location} (its record at that offset differs, or records after it "
                             "were deleted)")
    await asyncio.to_thread(_install, info, projection_dir)
    report = BootstrapReport(source, info.offset, size, time.perf_counter() - started)
    log.warning("replica bootstrapped from %s: checkpoint at offset %d, %d bytes in %.2fs (%.1f MB/s)",
                source, info.offset, size, report.seconds, report.bytes_per_second / 1e6)
    return report


__all__ = ["BootstrapError", "BootstrapReport", "LATEST_CHECKPOINT_PATH", "bootstrap_projection"]
