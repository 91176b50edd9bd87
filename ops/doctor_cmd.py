"""`tape doctor`: check a data directory, explain any damage and the way out, repair on request.

    tape doctor --data DIR                      # read-only check of the log and the projection
    tape doctor --data DIR --verify             # ... and compare the projection with a fresh replay
    tape doctor --data DIR --rebuild-projection # move the projection aside, rebuild it from the log
    tape doctor --data DIR --truncate-log       # cut a corrupted log back to its last intact record
    tape doctor --data DIR --collect-blobs      # remove file blobs no stored file ever named

The check never changes anything. It scans every frame of every log segment
(CRC, dense offsets, increasing timestamps, decodable bodies), checks every
sealed segment against its seal (size, checksum of all bytes, offsets, ts,
index entries; see `log.seal`: the server trusts a seal instead of scanning
the segment, so damage there is only found here or when it is read), classifies a
bad frame as a *torn tail* (a crash in the middle of an unacknowledged write:
the server drops it on start) or as *corruption* (anything else: the server
refuses to start), opens the projection read-only, reads every key with
checksum verification, and compares its applied offset with the end of the
log. It also checks that every stored file (a `_storage` document) has its
blob and that the blob's bytes still hash to its sha256, naming each missing
or damaged one by its storage id. Exit status: 0 when nothing needs
attention, 1 when something does.

Repairs take the log's writer lock, so they refuse to run next to a server.
Nothing is deleted: a replaced projection is renamed to
``projection.broken-<time>`` and the part of the log cut by ``--truncate-log``
is copied to ``log.damaged-<time>/`` first.
"""
from __future__ import annotations

import argparse
import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import struct
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rocksdict import AccessType, Options, Rdict, ReadOptions

from engine.app import App
from log.codec import FrameError, check_frame, decode_frames
from log.directory import (
    COMMITTED_FILE,
    FORMAT_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    LOCK_FILE,
    START_FILE,
    Marker,
    fsync_dir,
    read_marker,
    read_start,
)
from log.errors import LogCorruptError, LogError, LogFormatError
from log.file_log import FileLog
from log.seal import read_seal, remove_seals, verify_seal
from log.segment import list_segments, read_file, scan_buffer, segment_name, valid_frame_after
from history.build import build_projection
from history.errors import RestoreError
from history.points import format_ns
from history.retention import default_archive
from projections.checkpoints import CheckpointInfo, list_checkpoints, partial_checkpoints
from projections.checkpoints import verify as belongs_to_log
from projections.layout import (DOC, META_APPLIED_OFFSET, META_APPLIED_TS, META_CATALOG, META_FORMAT,
                                META_SEARCH_CATALOG, unpack_int)
from projections.rebuild import rebuild
from storage import BLOBS_DIR, STORAGE_TABLE, BlobError, LocalBlobStore, key_of
from storage.collect import Collection, collect_orphans
from values import decode_doc, table_of

console = Console(highlight=False, soft_wrap=True)


# ----------------------------------------------------------------- reports


@dataclass
class LogDamage:
    """One problem found in the log. `kind` is "torn-tail", "corrupt" or "format"."""

    kind: str
    segment: Path | None
    byte: int
    offset: int
    reason: str
    later_segments: list[Path] = field(default_factory=list)
    intact_after: int = 0  # intact records found after the damage (lost by a truncation)
    sealed: bool = False  # in a segment whose seal the server trusts: it opens, and reads of it fail

    def describe(self) -> str:
        where = f"{self.segment} at byte {self.byte}" if self.segment is not None else "the log directory"
        return f"{where} (record offset {self.offset}): {self.reason}"


@dataclass
class LogReport:
    directory: Path
    exists: bool = False
    segments: int = 0
    records: int = 0  # intact records before the first damage = the offset the log ends at
    last_ts: int = 0
    size: int = 0
    marker: Marker | None = None  # COMMITTED: next offset, last ts, epoch
    damage: LogDamage | None = None
    sealed: int = 0  # segments with a seal that agrees with them
    seal_problems: list[str] = field(default_factory=list)  # seals that do not
    first_offset: int = 0  # START: retention removed the records before it
    leftovers: int = 0  # segment files before START (an interrupted retention pass; removed on the next start)
    server_pid: int | None = None
    lock_unknown: bool = False

    @property
    def corrupt(self) -> bool:
        return self.damage is not None and self.damage.kind != "torn-tail"


@dataclass
class ProjectionReport:
    directory: Path
    exists: bool = False
    error: str | None = None
    applied_offset: int = -1
    applied_ts: int = 0
    format_version: int | None = None
    catalog: dict[str, Any] | None = None
    keys: int = 0
    documents: int = 0
    digest: str | None = None
    verified: bool | None = None  # None: not checked; else digest == digest of a fresh replay
    verify_note: str | None = None
    stored_files: dict[str, dict[str, Any]] = field(default_factory=dict)  # `_storage` id -> document


@dataclass
class BlobReport:
    """The blobs of stored files: which `_storage` documents lack their bytes, or have damaged ones."""

    directory: Path
    checked: int = 0
    missing: list[str] = field(default_factory=list)   # "<storage id> (blob <key>)"
    damaged: list[str] = field(default_factory=list)
    unreferenced: int = 0  # blobs no live document names (deleted files, kept for restores)


@dataclass
class CheckpointsReport:
    """The checkpoints of a data directory, and what retention keeps."""

    complete: list[CheckpointInfo] = field(default_factory=list)
    partial: list[Path] = field(default_factory=list)  # interrupted by a crash: never used
    foreign: list[CheckpointInfo] = field(default_factory=list)  # not of this log (e.g. before a restore)
    archive: tuple[int, int] | None = None  # offsets in DATA/log-archive


@dataclass
class Report:
    data: Path
    log: LogReport
    projection: ProjectionReport
    checkpoints: CheckpointsReport = field(default_factory=CheckpointsReport)
    problems: list[str] = field(default_factory=list)
    blobs: BlobReport | None = None
    advice: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems


# ----------------------------------------------------------------- the log


def server_pid(lock_path: Path) -> tuple[int | None, bool]:
    """(pid holding an flock on `lock_path`, whether that could not be determined).

    Reads /proc/locks instead of probing with flock(): a probe could make a
    server that starts at that very moment come up as a read-only follower.
    """
    try:
        st = os.stat(lock_path)
    except FileNotFoundError:
        return None, False
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None, True
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a waiter, not a holder
            continue
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            pid = int(parts[4])
            major, minor, inode = parts[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == want:
                return pid, False
        except ValueError:
            continue
    return None, False


def _marker(log_dir: Path) -> Marker | None:
    """The writer's COMMITTED marker (`log.directory.read_marker`), None if absent or unreadable.

    Unlike a FileLog, the doctor must not fail on a marker it cannot even open (e.g. no permission).
    """
    try:
        return read_marker(log_dir)
    except OSError:
        return None


def _intact_frames_after(buf: bytes, pos: int) -> int:
    """How many intact frames follow position `pos` of a damaged segment buffer."""
    count = 0
    at = valid_frame_after(buf, pos)
    while at is not None:
        try:
            at = check_frame(buf, at, len(buf))[3]
            count += 1
        except LogError:
            at = valid_frame_after(buf, at)
    return count


def scan_log(log_dir: Path) -> LogReport:
    """Verify every frame of every segment of the FileLog in `log_dir`, changing nothing."""
    rep = LogReport(log_dir)
    if not log_dir.is_dir():
        return rep
    rep.exists = True
    rep.server_pid, rep.lock_unknown = server_pid(log_dir / LOCK_FILE)
    rep.marker = _marker(log_dir)
    fmt = log_dir / FORMAT_FILE
    segs = list_segments(log_dir)
    rep.segments = len(segs)
    if fmt.exists():
        try:
            meta = json.loads(fmt.read_text())
            if meta.get("format") != FORMAT_NAME or int(meta.get("version", 0)) > FORMAT_VERSION:
                rep.damage = LogDamage("format", fmt, 0, 0, f"unknown log format {meta!r}")
                return rep
        except (ValueError, TypeError, AttributeError) as exc:
            rep.damage = LogDamage("corrupt", fmt, 0, 0, f"unreadable FORMAT file ({exc})")
            return rep
    elif segs:
        rep.damage = LogDamage("corrupt", fmt, 0, 0, "the FORMAT file is missing but segment files exist")
        return rep
    try:
        start = read_start(log_dir)
    except LogCorruptError as exc:
        rep.damage = LogDamage("corrupt", log_dir / START_FILE, 0, 0, str(exc))
        return rep
    rep.first_offset = start.first_offset
    rep.leftovers = sum(1 for b, _ in segs if b < start.first_offset)
    segs = [(b, p) for b, p in segs if b >= start.first_offset]
    rep.segments = len(segs)
    expect, last_ts = start.first_offset, start.prev_ts
    rep.records = expect
    for i, (base, path) in enumerate(segs):
        later = [p for _, p in segs[i + 1:]]
        if base != expect:
            prev = segs[i - 1][1] if i else None
            pos = prev.stat().st_size if prev is not None else 0
            rep.damage = LogDamage(
                "corrupt", prev if prev is not None else path, pos, expect,
                f"records {expect}..{base - 1} are missing: expected segment {segment_name(expect)}, "
                f"found {path.name}", [p for _, p in segs[i:]] if prev is not None else [p for _, p in segs])
            rep.damage.intact_after = -1
            return rep
        buf = read_file(path)
        rep.size += len(buf)
        seal, seal_error = read_seal(path)
        # the bytes the server trusts without scanning them (see log.seal.open_segments)
        trusted = 0 if seal is None or (seal.size != len(buf) if later else seal.size > len(buf)) else seal.size
        if seal_error is not None:
            rep.seal_problems.append(f"{path}: unreadable seal ({seal_error}); the server falls back to "
                                     "reading the segment itself")
        try:
            res = scan_buffer(buf, 0, base, last_ts, -1, 1 << 62)
        except LogFormatError as exc:
            rep.damage = LogDamage("format", path, -1, expect, f"{exc} (upgrade Tape to read it)", later)
            return rep
        # every frame the CRC accepts must also decode
        try:
            decode_frames(buf, 0, res.end_pos, 0, 1 << 62, 1 << 62)
        except (FrameError, LogError) as exc:
            bad = getattr(exc, "pos", 0)
            at, rep.records = 0, expect
            while at < bad:
                _, off, ts, at = check_frame(buf, at, len(buf))
                rep.records, rep.last_ts = off + 1, ts
            rep.damage = LogDamage("corrupt", path, bad, rep.records,
                                   f"a frame with a valid CRC does not decode: {exc}", later, sealed=bad < trusted)
            return rep
        expect, last_ts = res.next_offset, res.last_ts
        rep.records, rep.last_ts = expect, last_ts
        if res.error is None:
            if seal is not None:
                nxt = segs[i + 1][0] if later else None
                why = verify_seal(seal, buf, base, nxt, (res.next_offset, res.last_ts))
                if why is None:
                    rep.sealed += 1
                else:
                    rep.seal_problems.append(f"{path}: its seal does not match ({why})")
            continue
        damage = LogDamage("corrupt", path, res.error_pos, res.next_offset, res.error, later,
                           sealed=res.error_pos < trusted)
        if later:
            damage.reason += f"; the segment is sealed ({later[0].name} follows), so this is not a torn write"
        if damage.sealed:
            damage.reason += ("; its seal file vouches for these bytes, so the server opens without reading them "
                              "and fails when these records are read")
        elif later:
            pass
        elif not res.torn:
            pass
        elif (follow := _follow(buf, res.error_pos)) is not None:
            damage.reason += f", followed by intact data at byte {follow}, so this is not a torn write"
        elif rep.marker is not None and rep.marker.next_offset > res.next_offset:
            damage.reason += (f"; the COMMITTED marker says {rep.marker.next_offset} records were durable, so record "
                              f"{res.next_offset} was acknowledged and this is not a torn write")
        else:
            damage.kind = "torn-tail"
            damage.reason += f" ({len(buf) - res.error_pos} bytes of an unfinished write)"
        if damage.kind == "corrupt":
            damage.intact_after = _intact_frames_after(buf, res.error_pos)
            for later_base, p in segs[i + 1:]:
                try:
                    scanned = scan_buffer(read_file(p), 0, later_base, 0, -1, 1 << 62)
                    damage.intact_after += scanned.next_offset - later_base
                except LogError:
                    pass
        rep.damage = damage
        return rep
    return rep


def _follow(buf: bytes, pos: int) -> int | None:
    return valid_frame_after(buf, pos)


# ----------------------------------------------------------------- the projection


def _rocks_read_only(path: Path) -> Any:
    return Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())


def check_projection(path: Path) -> ProjectionReport:
    """Open the projection read-only and read every key with checksum verification."""
    rep = ProjectionReport(path)
    if not path.is_dir():
        return rep
    rep.exists = True
    try:
        db = _rocks_read_only(path)
    except Exception as exc:  # rocksdict raises plain Exception("Corruption: ...")
        rep.error = f"RocksDB cannot open it: {exc}"
        return rep
    try:
        try:
            raw = db.get(META_FORMAT)
            rep.format_version = unpack_int(raw) if raw is not None and len(raw) == 8 else None
            raw = db.get(META_APPLIED_OFFSET)
            rep.applied_offset = unpack_int(raw) if raw is not None else -1
            raw = db.get(META_APPLIED_TS)
            rep.applied_ts = unpack_int(raw) if raw is not None else 0
            raw = db.get(META_CATALOG)
            rep.catalog = orjson.loads(raw) if raw is not None else None
            raw = db.get(META_SEARCH_CATALOG)  # search indexes: part of the catalog a rebuild installs
            if raw is not None and rep.catalog is not None:
                for table, per in orjson.loads(raw).items():
                    rep.catalog.setdefault(table, {}).update(per)
            ro = ReadOptions()
            ro.set_verify_checksums(True)
            it = db.iter(ro)
            it.seek_to_first()
            h = hashlib.sha256()
            while it.valid():
                key, value = it.key(), it.value()
                h.update(len(key).to_bytes(4, "big"))
                h.update(key)
                h.update(len(value).to_bytes(4, "big"))
                h.update(value)
                rep.keys += 1
                if key[:1] == DOC:
                    rep.documents += 1
                    if table_of(key[1:].decode("utf-8", "replace")) == STORAGE_TABLE:
                        rep.stored_files[key[1:].decode()] = decode_doc(value)
                it.next()
            it.status()  # an iterator stops at a damaged block without raising: ask it
            rep.digest = h.hexdigest()
        except Exception as exc:
            rep.error = f"reading it failed: {exc}"
            return rep
        if rep.format_version is None and rep.keys:
            rep.error = "it has no format version marker"
    finally:
        db.close()
    return rep


async def _replay_digest(log_dir: Path, upto: int, catalog: dict[str, Any] | None,
                         data: Path | None = None) -> str:
    """Content digest of a fresh projection rebuilt from the log through offset `upto`.

    A log whose start retention removed is replayed from the checkpoint that covers it.
    """
    log = FileLog(log_dir, read_only=True)
    await log.open()
    try:
        with tempfile.TemporaryDirectory(prefix="tape-doctor-") as tmp:
            if log.first_offset() > 0:
                projection, _build = await build_projection(log, Path(tmp) / "projection", upto, data_dir=data,
                                                            catalog=catalog)
            else:
                projection = await rebuild(log, Path(tmp) / "projection", catalog or {}, upto=upto)
            try:
                return projection.content_digest()
            finally:
                projection.close()
    finally:
        await log.close()


def check_blobs(data: Path, files: dict[str, dict[str, Any]]) -> BlobReport:
    """Check that every stored file's blob exists and hashes to its `_storage` document's sha256."""
    store = LocalBlobStore(data / BLOBS_DIR)
    rep = BlobReport(store.root)
    wanted: set[str] = set()
    for storage_id, doc in sorted(files.items()):
        rep.checked += 1
        try:
            key = key_of(doc)
        except BlobError as exc:
            rep.damaged.append(f"{storage_id} ({exc})")
            continue
        wanted.add(key)
        if not store.exists(key):
            rep.missing.append(f"{storage_id} (blob {key})")
        elif not store.verify(key):
            rep.damaged.append(f"{storage_id} (blob {key}: its bytes no longer hash to it)")
    rep.unreferenced = sum(1 for key in store.keys() if key not in wanted)
    return rep


# ----------------------------------------------------------------- diagnosis


def check_checkpoints(data: Path, log_dir: Path, lrep: LogReport) -> CheckpointsReport:
    """List the checkpoints, the interrupted ones, and those that do not belong to the log."""
    rep = CheckpointsReport(list_checkpoints(data), partial_checkpoints(data), [], default_archive(data).span())
    if lrep.exists and not lrep.corrupt and log_dir.is_dir():
        async def check() -> list[CheckpointInfo]:
            log = FileLog(log_dir, read_only=True)
            await log.open()
            try:
                return [c for c in rep.complete if c.offset < log.next_offset() and not await belongs_to_log(c, log)]
            finally:
                await log.close()
        try:
            with ThreadPoolExecutor(1) as pool:  # its own event loop, also when called from a running one
                rep.foreign = pool.submit(asyncio.run, check()).result()
        except LogError:
            pass
    return rep


def diagnose(data: Path, log_dir: Path | None = None, verify: bool = False) -> Report:
    """Check `data` (read-only) and say what is wrong and what to do about it."""
    log_dir = log_dir or data / "log"
    lrep = scan_log(log_dir)
    prep = check_projection(data / "projection")
    rep = Report(data, lrep, prep, check_checkpoints(data, log_dir, lrep))
    cmd = f"tape doctor --data {data}"
    if not lrep.exists:
        rep.problems.append(f"no log directory at {log_dir}")
        rep.advice.append("Check the --data path. A new data directory is created by `tape dev`/`tape serve`.")
        return rep
    d = lrep.damage
    if d is not None and d.kind == "corrupt":
        lost = (f"at least {d.intact_after} intact records after it" if d.intact_after > 0
                else "the records after it" if d.intact_after < 0 else "no intact records after it")
        rep.problems.append(f"log corrupted: {d.describe()}")
        refuses = ("The server starts (the damaged segment is sealed, so it is not read on start), but reading "
                   if d.sealed else "The server refuses to start on a corrupted log: ")
        rep.advice.append(
            f"{refuses}records {d.offset if d.offset >= 0 else '?'} "
            f"and later cannot be trusted ({lost}).")
        rep.advice.append("Best: restore the data directory from a backup or a replica.")
        rep.advice.append(
            f"Or keep the {lrep.records} intact records before the damage and drop the rest: `{cmd} "
            f"--truncate-log` (copies the cut data to log.damaged-<time>/ first and rebuilds the projection "
            "if needed). Acknowledged writes after the damage are lost.")
    elif d is not None and d.kind == "format":
        rep.problems.append(f"log written by a newer Tape: {d.describe()}")
        rep.advice.append("Upgrade Tape to a version that reads this log format; do not repair it.")
    for problem in lrep.seal_problems:
        rep.problems.append(f"segment seal: {problem}")
    if lrep.seal_problems:
        rep.advice.append(
            "A seal only lets the server open without scanning its segment: delete the seal files named above "
            "(nothing else is lost); the server scans those segments on its next start and seals them again.")
    if d is not None and d.kind not in ("corrupt", "format"):
        rep.advice.append(
            f"The log ends with a torn write: {d.describe()}. That write was never acknowledged; "
            "the server cuts it off when it starts (nothing to do).")
    if prep.exists and prep.error is None and prep.catalog is None and prep.keys:
        prep.error = "it has no index catalog"
    if not prep.exists:
        rep.advice.append("There is no projection yet: the server builds it from the log when it starts.")
    elif prep.error is not None:
        rep.problems.append(f"projection damaged: {prep.directory}: {prep.error}")
        rep.advice.append(
            "The projection is derived data: rebuild it from the log with "
            f"`{cmd} --rebuild-projection` (the damaged copy is kept as projection.broken-<time>).")
    else:
        log_end = lrep.records
        if prep.applied_offset + 1 > log_end:
            rep.problems.append(
                f"projection is ahead of the log: it has applied records through offset {prep.applied_offset} "
                f"but the intact log ends at offset {log_end} (records were lost from the log)")
            if d is None or d.kind == "torn-tail":
                rep.advice.append(f"Rebuild the projection from the log: `{cmd} --rebuild-projection`.")
        elif prep.applied_offset + 1 < log_end and d is None:
            rep.advice.append(
                f"The projection is {log_end - prep.applied_offset - 1} records behind the log (normal after a "
                "crash): the server applies them when it starts.")
        if verify and prep.applied_offset + 1 <= log_end and not lrep.corrupt:
            if lrep.server_pid is not None:
                prep.verify_note = "skipped: a server is running on this data directory"
            else:
                try:
                    fresh = asyncio.run(_replay_digest(log_dir, prep.applied_offset, prep.catalog, data))
                except Exception as exc:
                    prep.verify_note = f"could not replay the log: {exc}"
                    rep.problems.append(f"replaying the log failed: {exc}")
                else:
                    prep.verified = fresh == prep.digest
                    if not prep.verified:
                        rep.problems.append(
                            "projection differs from a fresh replay of the log through offset "
                            f"{prep.applied_offset} (digest {prep.digest} != {fresh})")
                        rep.advice.append(f"Rebuild the projection from the log: `{cmd} --rebuild-projection`.")
    cps = rep.checkpoints
    if lrep.first_offset > 0 and not any(c.offset >= lrep.first_offset - 1 and c not in cps.foreign
                                         for c in cps.complete):
        rep.problems.append(f"retention removed the log before offset {lrep.first_offset} but no checkpoint "
                            "covers it: the projection cannot be rebuilt from this directory")
        rep.advice.append("Restore the checkpoints (or the segment archive DATA/log-archive) from a backup, or "
                          "bootstrap this node from another one's checkpoint.")
    if cps.foreign:
        rep.advice.append(f"{len(cps.foreign)} checkpoint(s) do not belong to this log (taken before a restore?); "
                          "they are skipped, and may be deleted: " + ", ".join(str(c.path) for c in cps.foreign))
    if cps.partial:
        rep.advice.append(f"{len(cps.partial)} checkpoint(s) were interrupted by a crash; they are never used and "
                          "the server removes them when it starts.")
    if lrep.leftovers:
        rep.advice.append(f"{lrep.leftovers} segment file(s) before offset {lrep.first_offset} are left over from an "
                          "interrupted retention pass; the server removes them when it starts.")
    if prep.exists and prep.error is None:
        brep = rep.blobs = check_blobs(data, prep.stored_files)
        for entry in brep.missing:
            rep.problems.append(f"stored file missing its bytes: {entry}")
        for entry in brep.damaged:
            rep.problems.append(f"stored file damaged: {entry}")
        if brep.missing or brep.damaged:
            rep.advice.append(
                f"Copy the named blobs back into {brep.directory}/<first two hex digits>/<sha256> from a backup, "
                "a snapshot's blobs/ directory or the data directory this one was restored from; otherwise "
                "delete those files (ctx.storage.delete) so the app stops serving them.")
    if rep.problems and lrep.server_pid is not None:
        rep.advice.append(f"A server (pid {lrep.server_pid}) is running on this data directory: stop it before "
                          "repairing.")
    return rep


def print_report(rep: Report, out: Console = console) -> None:
    lrep, prep = rep.log, rep.projection
    out.print(f"[bold]tape doctor[/] {escape(str(rep.data))}")
    if lrep.server_pid is not None:
        out.print(f"  server: running (pid {lrep.server_pid} holds {escape(str(lrep.directory / LOCK_FILE))})")
    elif lrep.lock_unknown:
        out.print("  server: unknown (/proc/locks is not readable)")
    else:
        out.print("  server: not running")
    if lrep.exists:
        status = ("[red]CORRUPTED[/]" if lrep.corrupt else "[yellow]TORN TAIL[/]" if lrep.damage else "[green]OK[/]")
        marker = f", COMMITTED marker at {lrep.marker.next_offset}" if lrep.marker else ""
        out.print(f"  log: {status} {escape(str(lrep.directory))}: {lrep.segments} segments "
                  f"({lrep.sealed} sealed), {lrep.size} bytes, {lrep.records} intact records{marker}")
        if lrep.first_offset > 0:
            out.print(f"    retention: the log starts at offset {lrep.first_offset}")
        if lrep.damage is not None:
            out.print(f"    {escape(lrep.damage.describe())}")
    else:
        out.print(f"  log: [red]MISSING[/] {escape(str(lrep.directory))}")
    if not prep.exists:
        out.print(f"  projection: [yellow]NONE[/] {escape(str(prep.directory))}")
    elif prep.error is not None:
        out.print(f"  projection: [red]DAMAGED[/] {escape(str(prep.directory))}: {escape(prep.error)}")
    else:
        ahead = prep.applied_offset + 1 > lrep.records
        status = "[red]AHEAD OF LOG[/]" if ahead else "[green]OK[/]"
        out.print(f"  projection: {status} {escape(str(prep.directory))}: applied through offset "
                  f"{prep.applied_offset}, {prep.documents} documents, {prep.keys} keys")
        if prep.verified is not None:
            out.print("    digest vs fresh replay: " + ("[green]equal[/]" if prep.verified else "[red]DIFFERENT[/]"))
        elif prep.verify_note:
            out.print(f"    digest vs fresh replay: {escape(prep.verify_note)}")
    cps = rep.checkpoints
    newest = cps.complete[-1] if cps.complete else None
    out.print(f"  checkpoints: {len(cps.complete)}" + (
        f", offsets {cps.complete[0].offset}..{newest.offset} (newest from {format_ns(newest.ts)})"
        if newest is not None else "") + (f", {len(cps.partial)} interrupted" if cps.partial else "")
        + (f", {len(cps.foreign)} not of this log" if cps.foreign else ""))
    if cps.archive is not None:
        out.print(f"  segment archive: offsets {cps.archive[0]}..{cps.archive[1] - 1} in "
                  f"{escape(str(default_archive(rep.data).directory))}")
    if rep.blobs is not None and (rep.blobs.checked or rep.blobs.unreferenced):
        b = rep.blobs
        bad = len(b.missing) + len(b.damaged)
        status = "[red]DAMAGED[/]" if bad else "[green]OK[/]"
        out.print(f"  file blobs: {status} {escape(str(b.directory))}: {b.checked} stored files checked, "
                  f"{len(b.missing)} missing, {len(b.damaged)} damaged, {b.unreferenced} blob(s) no live file names "
                  "(deleted files', kept for restores; or orphans: --collect-blobs)")
    for problem in rep.problems:
        out.print(f"[bold red]problem:[/] {escape(problem)}")
    if rep.advice:
        out.print("[bold]What to do:[/]")
        for line in rep.advice:
            out.print(f"  - {escape(line)}")
    if rep.healthy:
        out.print("[bold green]healthy[/]: nothing needs attention.")


# ----------------------------------------------------------------- repairs


class RepairError(Exception):
    """A repair could not run; the message says why and what to do."""


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def _aside(path: Path, label: str) -> Path:
    dest = path.with_name(f"{path.name}.{label}-{_stamp()}")
    n = 1
    while dest.exists():
        n += 1
        dest = path.with_name(f"{path.name}.{label}-{_stamp()}-{n}")
    return dest


def _catalog_for_rebuild(data: Path, app_dir: str | None, old: ProjectionReport) -> tuple[dict[str, Any], str]:
    if app_dir:
        return App.load(Path(app_dir)).schema.index_catalog(), f"the indexes of {app_dir}"
    if old.catalog is not None:
        return old.catalog, "the indexes stored in the old projection"
    if old.exists:
        try:
            db = _rocks_read_only(old.directory)
            try:
                raw = db.get(META_CATALOG)
            finally:
                db.close()
            if raw is not None:
                return orjson.loads(raw), "the indexes stored in the old projection"
        except Exception:
            pass
    return {}, "no user indexes (the server backfills the app's indexes when it starts)"


def rebuild_projection(data: Path, log_dir: Path | None = None, app_dir: str | None = None,
                       out: Console = console) -> Path | None:
    """Move the projection aside (if any) and rebuild it from the log. Returns where the old one went."""
    log_dir = log_dir or data / "log"
    target = data / "projection"
    old = check_projection(target)
    catalog, source = _catalog_for_rebuild(data, app_dir, old)

    async def run() -> Path | None:
        log = FileLog(log_dir, read_only=False)  # the writer lock: no server may run meanwhile
        try:
            await log.open()
        except LogCorruptError as exc:
            raise RepairError(f"the log is corrupted ({exc}); repair it first with --truncate-log "
                              "or restore a backup") from None
        except LogFormatError as exc:
            raise RepairError(f"the log cannot be read by this build ({exc})") from None
        except LogError as exc:
            raise RepairError(f"cannot take the log: {exc}. Stop the server first.") from None
        try:
            moved = None
            if target.exists():
                moved = _aside(target, "broken")
                os.rename(target, moved)
                fsync_dir(data)
                out.print(f"moved the old projection to {escape(str(moved))}")
            if (data / "vectors").exists():  # saved vector indexes: rebuilt from the new projection at start
                shutil.rmtree(data / "vectors")
                out.print("removed the saved vector indexes (the server rebuilds them from the projection)")
            end = log.next_offset()
            out.print(f"rebuilding {escape(str(target))} from {end} log records with {escape(source)} ...")
            started = time.monotonic()
            last = [started]

            def progress(applied: int, count: int) -> None:
                now = time.monotonic()
                if now - last[0] >= 2:
                    last[0] = now
                    out.print(f"  ... offset {applied} of {end - 1}")
            if log.first_offset() > 0:  # retention removed the start: from the checkpoint that covers it
                try:
                    projection, _build = await build_projection(log, target, end - 1, data_dir=data,
                                                                catalog=catalog)
                except RestoreError as exc:
                    raise RepairError(str(exc)) from None
            else:
                projection = await rebuild(log, target, catalog, progress=progress)
            try:
                projection.flush()
                out.print(f"[green]rebuilt[/] the projection through offset {projection.applied_offset} "
                          f"in {time.monotonic() - started:.1f}s")
            finally:
                projection.close()
            return moved
        finally:
            await log.close()

    return asyncio.run(run())


def truncate_log(data: Path, log_dir: Path | None = None, app_dir: str | None = None,
                 out: Console = console) -> Path:
    """Cut a corrupted log back to its last intact record (the cut data is copied aside first)."""
    log_dir = log_dir or data / "log"
    rep = scan_log(log_dir)
    d = rep.damage
    if d is None or d.kind == "torn-tail":
        raise RepairError("the log is not corrupted: there is nothing to truncate "
                          "(a torn tail is cut off by the server itself)")
    if d.kind == "format":
        raise RepairError("the log holds records of a newer format: upgrade Tape instead of truncating")
    if d.segment is None or not d.segment.name.endswith(".seg"):
        raise RepairError(f"cannot truncate: {d.describe()}; restore the data directory from a backup")
    fd = os.open(log_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RepairError("a server holds the log's writer lock: stop it first") from None
        backup = _aside(log_dir, "damaged")
        backup.mkdir()
        for path in [d.segment, *d.later_segments]:
            if path.exists():
                shutil.copy2(path, backup / path.name)
        marker = log_dir / COMMITTED_FILE
        if marker.exists():
            shutil.copy2(marker, backup / COMMITTED_FILE)
        fsync_dir(backup)
        if remove_seals([d.segment, *d.later_segments]):  # the cut segment becomes the unsealed tail
            fsync_dir(log_dir)
        seg_fd = os.open(d.segment, os.O_WRONLY)
        try:
            os.ftruncate(seg_fd, d.byte)
            os.fsync(seg_fd)
        finally:
            os.close(seg_fd)
        for path in reversed(d.later_segments):
            path.unlink(missing_ok=True)
        old = _marker(log_dir)
        head = struct.pack("<qqq", rep.records, rep.last_ts, (old.epoch if old else 0) + 1)
        with open(marker, "wb") as f:
            f.write(head + struct.pack("<I", zlib.crc32(head)))
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(log_dir)
    finally:
        os.close(fd)
    out.print(f"[yellow]truncated[/] the log to {rep.records} records (cut at {escape(str(d.segment))} byte "
              f"{d.byte}); the cut data is in {escape(str(backup))}")
    prep = check_projection(data / "projection")
    if prep.exists and (prep.error is not None or prep.applied_offset + 1 > rep.records):
        rebuild_projection(data, log_dir, app_dir, out)
    return backup


# ----------------------------------------------------------------- CLI


def collect_blobs(data: Path, log_dir: Path | None = None, out: Console = console) -> Collection:
    """Remove blobs no `_storage` document in the log ever named (`storage.collect`); holds the writer lock."""
    async def go() -> Collection:
        log = FileLog(log_dir or data / "log", read_only=False)  # the writer lock: no upload may be in flight
        try:
            await log.open()
        except LogError as exc:
            raise RepairError(f"cannot take the log: {exc}. Stop the server first.") from None
        try:
            return await collect_orphans(log, LocalBlobStore(data / BLOBS_DIR))
        finally:
            await log.close()
    result = asyncio.run(go())
    out.print(f"collected {len(result.removed)} orphan blob(s) ({result.bytes_freed} bytes) that no stored file "
              f"ever named; kept the {result.named} the log names (deleted files' too, for restores)")
    return result


def run(args: argparse.Namespace) -> None:
    data = Path(args.data)
    log_dir = Path(args.log) if args.log else None
    if not data.is_dir():
        console.print(f"[bold red]error:[/] data directory {escape(str(data))} does not exist")
        raise SystemExit(1)
    try:
        if args.truncate_log:
            truncate_log(data, log_dir, args.app)
        elif args.rebuild_projection:
            rebuild_projection(data, log_dir, args.app)
        elif args.collect_blobs:
            collect_blobs(data, log_dir)
    except RepairError as exc:
        console.print(f"[bold red]cannot repair:[/] {escape(str(exc))}")
        raise SystemExit(1) from None
    rep = diagnose(data, log_dir, verify=args.verify)
    print_report(rep)
    if not rep.healthy:
        raise SystemExit(1)


def register(subparsers: Any) -> None:
    """Add `tape doctor` to the `tape` command line (called by ops.cli)."""
    p = subparsers.add_parser(
        "doctor", help="check a data directory (log + projection), explain damage and how to recover",
        description="Check the commit log and the projection of a data directory; --rebuild-projection and "
                    "--truncate-log repair what can be repaired (never next to a running server).")
    p.add_argument("--data", required=True, help="the data directory (as given to tape dev/serve --data)")
    p.add_argument("--log", help="the log directory if not DATA/log")
    p.add_argument("--app", help="app directory whose indexes a rebuilt projection gets (default: the old ones)")
    p.add_argument("--verify", action="store_true",
                   help="also replay the log into a temporary projection and compare content digests")
    repair = p.add_mutually_exclusive_group()
    repair.add_argument("--rebuild-projection", action="store_true",
                        help="move the projection aside (projection.broken-<time>) and rebuild it from the log")
    repair.add_argument("--truncate-log", action="store_true",
                        help="cut a corrupted log back to its last intact record (copies the rest aside); "
                             "acknowledged writes after the damage are lost")
    repair.add_argument("--collect-blobs", action="store_true",
                        help="remove file blobs no stored file ever named (uploads a crash cut off before their "
                             "commit); blobs of deleted files are kept for restores")
    p.set_defaults(func=run)
