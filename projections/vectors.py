"""`VectorIndexes`: the vector indexes of one projection, kept in log order and built in the background.

A vector catalog maps ``{table: {index name: {"field": str, "dimensions": int,
"filter_fields": [str, ...]}}}``. Each index is a `projections.vector_index.VectorIndex`
held in memory and derived from the projection's documents:

* `install` takes a (new) catalog: indexes no longer declared are dropped, new
  ones start *building*. `start` (called once the projection has caught up
  with the log) builds them on a background thread from the projection's
  documents, so the server keeps serving; searching one still building raises
  `VectorIndexBuilding` naming its progress.
* `apply` is the runtime's apply listener: after each batch of records reaches
  the projection it queues their writes for one applier thread, which updates
  every ready index in log order (an index still building remembers the
  written ids and re-reads them from the projection before it turns ready, so
  no write is missed). The event loop never decodes a vector or walks the graph.
* `search` first waits for the applier to take in what was queued when it
  started (an action sees the mutations it awaited), and checks each hit against the
  projection: a document deleted (or no longer matching the filter) is never
  returned, even in the instant between the projection and the index applying it.

* `save` (at stop) writes each built index to ``DATA/vectors/<table>.<index>/``
  stamped with the last record it reflects; `load_saved` (at start) takes a
  copy back only if the log still holds that record with that ts, and re-reads
  the documents written since. Anything else (no copy, a damaged one, one
  from before a restore rewound the log, `tape doctor --rebuild-projection`
  removing them) is built from the projection, so the indexes are correct
  after a rebuild, a restore and on replicas (docs/architecture.md gives the
  measurement behind saving them rather than building them at every start).

* `save_copy` writes the same stamped copies into a projection checkpoint
  (``<checkpoint>/vectors/``) while records keep being applied: each index is
  written under its lock with the stamp of the last record the applier
  finished (so the copy holds at least that record's effects, and anything
  newer in it was written after the stamp, i.e. is re-read at load). Whoever
  makes a data directory out of a checkpoint (restore, replica bootstrap)
  puts those copies into ``DATA/vectors`` with `adopt_saved`, where the
  runtime's `load_saved` finds them.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import orjson

from log.directory import fsync_dir, fsync_path
from log.record import Record

from .index_catalog import decode_stored
from .vector_index import GRAPH_LAYOUT, VectorIndex, filter_key

log = logging.getLogger("tape.vectors")

VectorCatalog = dict[str, dict[str, dict[str, Any]]]

VECTORS_DIR = "vectors"
"""The saved vector indexes' directory, in a data directory and in a projection checkpoint."""

APPLY_WAIT_SECONDS = 10.0
"""How long a search waits for the applier to take in the records applied to the projection before it."""

BUILD_BATCH = 2048
"""Documents added to the graph per step of a background build (one batched usearch `add`)."""

BUILD_THREADS = max(1, min(4, os.cpu_count() or 1))
"""Threads usearch adds a build batch with (it releases the GIL; the applier waits on the index lock)."""


class VectorIndexError(Exception):
    """A vector index cannot answer (unknown, or still building); the message says why."""


class UnknownVectorIndex(VectorIndexError):
    """No vector index of that name on that table."""


class VectorIndexBuilding(VectorIndexError):
    """The index is still being built from existing documents; `done`/`total` say how far it is."""

    def __init__(self, label: str, done: int, total: int) -> None:
        self.done, self.total = done, total
        pct = 100.0 * done / total if total else 0.0
        super().__init__(f"vector index {label} is still being built from existing documents: "
                         f"{done:,} of {total:,} indexed ({pct:.0f}%); try again shortly")


def normalize_vector_catalog(catalog: Mapping[str, Mapping[str, Mapping[str, Any]]] | None) -> VectorCatalog:
    """A canonical copy of `catalog` (filter fields as lists, only the known keys)."""
    out: VectorCatalog = {}
    for table, per in (catalog or {}).items():
        for name, spec in per.items():
            out.setdefault(table, {})[name] = {"field": str(spec["field"]), "dimensions": int(spec["dimensions"]),
                                               "filter_fields": list(spec.get("filter_fields", ()))}
    return out


@dataclass
class _Entry:
    """One index with its build state."""

    spec: dict[str, Any]
    index: VectorIndex
    ready: bool = False
    done: int = 0
    total: int = 0
    pending: set[str] = field(default_factory=set)  # ids written while building (re-read before ready)
    dropped: bool = False
    building: bool = False  # a build thread was started
    loaded: bool = False  # loaded from its saved copy: only the documents written since need reading
    build_seconds: float = 0.0
    error: str | None = None


class VectorIndexes:
    """Every vector index of a projection (see the module docstring)."""

    def __init__(self, projection: Any, directory: str | os.PathLike[str] | None = None) -> None:
        self.projection = projection
        self.directory = None if directory is None else Path(directory)
        # the last record `apply` finished with (an index holds at least its effects)
        self._offset, self._ts = projection.applied_offset, projection.applied_ts
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._by_table: dict[str, list[_Entry]] = {}
        self._started = False
        self._closed = False
        self._threads: list[threading.Thread] = []
        # records queued by `apply` for the applier thread: (offset, ts, [(table, id, doc or None)])
        self._queue: deque[tuple[int, int, list[tuple[str, str, bytes | None]]]] = deque()
        self._cv = threading.Condition()
        self._enqueued = self._offset
        self._applier: threading.Thread | None = None

    # --- catalog ----------------------------------------------------------------------

    def install(self, catalog: Mapping[str, Mapping[str, Mapping[str, Any]]] | None) -> None:
        """Take the declared vector indexes: drop the undeclared or redefined, add (and build) the new."""
        new = normalize_vector_catalog(catalog)
        for key, entry in list(self._entries.items()):
            if new.get(key[0], {}).get(key[1]) != entry.spec:
                entry.dropped = True
                del self._entries[key]
        for table, per in new.items():
            for name, spec in per.items():
                if (table, name) not in self._entries:
                    index = VectorIndex(table, name, spec["field"], spec["dimensions"], spec["filter_fields"])
                    self._entries[(table, name)] = _Entry(spec, index)
        by_table: dict[str, list[_Entry]] = {}
        for (table, _name), entry in self._entries.items():
            by_table.setdefault(table, []).append(entry)
        self._by_table = by_table
        if self._started:
            self._build_missing()

    @property
    def catalog(self) -> VectorCatalog:
        """The installed vector catalog."""
        out: VectorCatalog = {}
        for (table, name), entry in self._entries.items():
            out.setdefault(table, {})[name] = dict(entry.spec)
        return out

    def start(self) -> None:
        """Build every index not built yet (call once the projection has caught up with the log)."""
        self._started = True
        with self._cv:  # the projection caught up without the listener: the indexes start from its state
            if not self._queue and self._enqueued <= self.projection.applied_offset:
                self._offset = self._enqueued = self.projection.applied_offset
                self._ts = self.projection.applied_ts
        self._build_missing()

    def _build_missing(self) -> None:
        for entry in self._entries.values():
            if not entry.building:
                entry.building = True
                thread = threading.Thread(target=self._build, args=(entry,), daemon=True,
                                          name=f"tape-vector-build-{entry.index.label}")
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
                thread.start()

    def _build(self, entry: _Entry) -> None:
        """Index the table's existing documents, then the ones written meanwhile; then mark the index ready."""
        index = entry.index
        started = time.perf_counter()
        try:
            entry.total = self.projection.count(index.table)
            if entry.loaded:
                entry.done = entry.total
            ids: list[str] = []
            rows: list[Any] = []

            def flush() -> None:
                with index.lock:
                    # a write applied meanwhile re-reads its document at the end: keep the newest
                    keep = [i for i, doc_id in enumerate(ids) if doc_id not in entry.pending]
                    index.put_many([ids[i] for i in keep], [rows[i] for i in keep], threads=BUILD_THREADS)
                entry.done += len(ids)
                ids.clear()
                rows.clear()

            for raw in () if entry.loaded else self.projection.iter_documents(index.table):
                if entry.dropped or self._closed:
                    return
                doc = decode_stored(raw)
                row = index.document_entry(doc)
                if row is not None:
                    ids.append(doc["_id"])
                    rows.append(row)
                else:
                    entry.done += 1
                if len(ids) >= BUILD_BATCH:
                    flush()
            if ids:
                flush()
            while not entry.dropped and not self._closed:
                with index.lock:
                    if not entry.pending:
                        entry.ready = True
                        break
                    todo = list(entry.pending)
                    entry.pending.clear()
                for doc_id, raw in zip(todo, self.projection.get_many(todo)):
                    with index.lock:
                        if doc_id in entry.pending:
                            continue  # written again meanwhile: read once more in the next round
                        if raw is None:
                            index.remove(doc_id)
                        else:
                            index.upsert(doc_id, decode_stored(raw))
            entry.build_seconds = time.perf_counter() - started
            if entry.ready:
                log.info("vector index %s built: %d vectors in %.1f s", index.label, len(index),
                         entry.build_seconds)
        except Exception as exc:  # the projection closed under us, or a damaged store
            if not self._closed:
                entry.error = f"{type(exc).__name__}: {exc}"
                log.exception("building vector index %s failed", index.label)

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Block until every index is built (for tests, benchmarks and tools); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entries = list(self._entries.values())
            if all(e.ready for e in entries):
                return True
            failed = [e for e in entries if e.error is not None]
            if failed:
                raise VectorIndexError(f"vector index {failed[0].index.label} failed to build: {failed[0].error}")
            time.sleep(0.005)
        return False

    # --- the apply listener -------------------------------------------------------------

    def apply(self, records: Iterable[Record]) -> None:
        """Queue `records` (just applied to the projection) for the applier thread, which updates the indexes.

        Only the writes to tables with a vector index are kept; the event loop
        does no decoding or graph work. The applier takes the records in log order.
        """
        by_table = self._by_table
        last = None
        writes: list[tuple[str, str, bytes | None]] = []
        for last in records:
            if by_table:
                writes.extend((w.table, w.id, w.doc) for w in last.writes if w.table in by_table)
        if last is None:
            return
        with self._cv:
            self._queue.append((last.offset, last.ts, writes))
            self._enqueued = last.offset
            self._cv.notify_all()
            if self._applier is None and not self._closed:
                self._applier = threading.Thread(target=self._apply_loop, daemon=True, name="tape-vector-apply")
                self._applier.start()

    def wait_applied(self, timeout: float = APPLY_WAIT_SECONDS) -> bool:
        """Block until the applier has taken in every record queued so far; False on timeout."""
        with self._cv:
            target = self._enqueued
            return self._cv.wait_for(lambda: self._offset >= target or self._applier is None, timeout)

    def _apply_loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    self._applier = None
                    self._cv.notify_all()
                    return
                offset, ts, writes = self._queue.popleft()
            try:
                self._apply_writes(writes)
            except Exception:  # pragma: no cover - a bug; the searches' projection check still holds
                log.exception("applying records %d to the vector indexes failed", offset)
            with self._cv:  # after the indexes took the record in: a saved stamp never runs ahead of them
                self._offset, self._ts = offset, ts
                self._cv.notify_all()

    def _apply_writes(self, writes: list[tuple[str, str, bytes | None]]) -> None:
        for table, doc_id, raw in writes:
            entries = self._by_table.get(table)
            if entries is None:
                continue
            doc = None if raw is None else decode_stored(raw)
            for entry in entries:
                index = entry.index
                with index.lock:
                    if not entry.ready:
                        entry.pending.add(doc_id)
                    elif doc is None:
                        index.remove(doc_id)
                    else:
                        index.upsert(doc_id, doc)

    # --- saving and loading --------------------------------------------------------------

    def save(self) -> list[str]:
        """Save every built index under `directory` (atomically, fsynced), stamped with the last applied record.

        Call it where no record is being applied (the runtime does at stop).
        Saved indexes no longer declared are removed. Returns the labels saved.
        """
        directory = self.directory
        if directory is None:
            return []
        saved = list(self.save_copy(directory))
        wanted = {f"{t}.{n}" for t, n in self._entries}
        for child in directory.iterdir():
            if child.name not in wanted and not child.name.startswith("."):
                shutil.rmtree(child, ignore_errors=True)
        return saved

    def save_copy(self, directory: Path, reuse: Path | None = None) -> dict[str, int]:
        """Save every built index as ``directory/<table>.<index>/`` (atomically, fsynced) with its stamp.

        Safe while records are being applied (see the module docstring); each
        index's lock is held only while its files are written (the fsync is
        outside). An index unchanged since the copy of it in `reuse` (the
        previous checkpoint's ``vectors/``) was saved by this process is not
        written again: those files are hard-linked under the new stamp.
        Returns {label: stamp offset} of the copies written.
        """
        directory.mkdir(parents=True, exist_ok=True)
        saved: dict[str, int] = {}
        for (table, name), entry in list(self._entries.items()):
            if not entry.ready or entry.dropped:
                continue
            label = f"{table}.{name}"
            final, tmp, old = directory / label, directory / f".{label}.tmp", directory / f".{label}.old"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            earlier = _saved_meta(reuse / label) if reuse is not None else None
            stamp = None
            if earlier is not None and earlier.get("spec") == entry.spec and earlier.get("graph") == GRAPH_LAYOUT:
                with entry.index.lock:
                    if entry.index.generation() == earlier.get("generation"):
                        stamp = self._stamp(entry)
                if stamp is not None and not _link_files(reuse / label, tmp):  # type: ignore[operator]
                    stamp = None  # that checkpoint was pruned meanwhile: write the index
            if stamp is None:
                with entry.index.lock:
                    stamp = self._stamp(entry)
                    entry.index.save(tmp, sync=False)
            _write_synced(tmp / "meta.json", orjson.dumps(stamp))
            for path in tmp.iterdir():
                fsync_path(path)
            _swap_in(tmp, final, old)
            saved[label] = stamp["offset"]
        return saved

    def _stamp(self, entry: _Entry) -> dict[str, Any]:
        """A saved copy's meta.json (call with the index's lock held): the last record the applier
        finished (the index holds at least its effects) and the index's generation."""
        with self._cv:
            offset, ts = self._offset, self._ts
        return {"spec": entry.spec, "offset": offset, "ts": ts, "generation": entry.index.generation(),
                "graph": GRAPH_LAYOUT}

    async def load_saved(self, log_: Any) -> list[str]:
        """Load the saved copies that still fit the log, and note the documents written since they were saved.

        A copy fits when its spec is the declared one, its stamp is at or
        before the projection's applied offset and the log still holds that
        record with that ts (not after a restore or a truncation that rewrote
        it). The rest are built from the projection as usual. Returns the labels loaded.
        """
        if self.directory is None or not self.directory.is_dir():
            return []
        loaded = []
        for (table, name), entry in self._entries.items():
            path = self.directory / f"{table}.{name}"
            if entry.ready or entry.building or not (path / "meta.json").is_file():
                continue
            try:
                changed = await self._changes_since_saved(path, entry, log_)
                with entry.index.lock:
                    entry.index.load(path)
            except Exception as exc:  # unusable: build from the projection instead
                log.warning("saved vector index %s not used (%s); building it from the projection",
                            entry.index.label, exc)
                spec = entry.spec
                entry.index = VectorIndex(table, name, spec["field"], spec["dimensions"], spec["filter_fields"])
                continue
            entry.pending |= changed
            entry.loaded = True
            loaded.append(entry.index.label)
            log.info("vector index %s loaded from its saved copy (%d vectors; %d documents written since to "
                     "re-read)", entry.index.label, len(entry.index), len(changed))
        return loaded

    async def _changes_since_saved(self, path: Path, entry: _Entry, log_: Any) -> set[str]:
        meta = orjson.loads((path / "meta.json").read_bytes())
        if meta.get("spec") != entry.spec:
            raise ValueError("it was saved for a different definition")
        if meta.get("graph") != GRAPH_LAYOUT:
            raise ValueError(f"it was saved with other graph parameters ({meta.get('graph')}, now {GRAPH_LAYOUT})")
        offset, applied = int(meta["offset"]), self.projection.applied_offset
        if offset > applied:
            raise ValueError(f"it was saved at log offset {offset}, beyond the projection's {applied}")
        if offset >= 0:
            found = None
            async for batch in log_.read(offset, offset + 1):
                found = next((r for r in batch if r.offset == offset), found)
            if found is None or found.ts != meta["ts"]:
                raise ValueError(f"the log no longer holds the record {offset} it was saved at")
        changed: set[str] = set()
        table = entry.index.table
        if offset < applied:
            async for batch in log_.read(offset + 1, applied + 1):
                for rec in batch:
                    changed.update(w.id for w in rec.writes if w.table == table)
        return changed

    # --- searching ---------------------------------------------------------------------

    def index(self, table: str, name: str) -> VectorIndex:
        """The ready index `name` of `table`; raises `UnknownVectorIndex` / `VectorIndexBuilding`."""
        entry = self._entries.get((table, name))
        if entry is None:
            known = sorted(n for t, n in self._entries if t == table)
            hint = f" (its vector indexes: {', '.join(known)})" if known else " (it has no vector index)"
            raise UnknownVectorIndex(f"table {table!r} has no vector index {name!r}{hint}")
        if not entry.ready:
            if entry.error is not None:
                raise VectorIndexError(f"vector index {entry.index.label} failed to build: {entry.error}")
            total = entry.total or self.projection.count(table)
            raise VectorIndexBuilding(entry.index.label, entry.done, max(total, entry.done))
        return entry.index

    def search(self, table: str, name: str, query: np.ndarray, limit: int,
               any_of: Sequence[tuple[str, bytes]] | None = None) -> list[tuple[str, float]]:
        """The `limit` documents most similar to the unit vector `query`, best first, as (id, score).

        Every hit is checked against the projection: it still exists and, with
        `any_of`, its filter field still equals one of the given keys.
        """
        index = self.index(table, name)
        self.wait_applied()  # read your writes: what the projection had when the search started
        want = limit
        while True:
            with index.lock:
                hits = index.search(query, want + 8, any_of)
            kept = self._still_valid(index, hits, any_of, limit)
            if len(kept) >= limit or len(hits) < want + 8:
                return kept[:limit]
            want *= 2  # many hits were stale (a burst of deletes not yet applied to the index)

    def _still_valid(self, index: VectorIndex, hits: list[tuple[str, float]],
                     any_of: Sequence[tuple[str, bytes]] | None, limit: int) -> list[tuple[str, float]]:
        """The first `limit` of `hits` the projection still holds (and, with `any_of`, that still pass it).

        Reads one document per hit, best first, and stops at `limit`: a 768-dim
        document is ~14 KB, so reading only what is returned matters.
        """
        allowed: dict[str, set[bytes]] = {}
        for fieldname, key in any_of or ():
            allowed.setdefault(fieldname, set()).add(key)
        get = self.projection.get
        kept: list[tuple[str, float]] = []
        for hit in hits:
            raw = get(hit[0])
            if raw is None:
                continue
            if allowed:
                doc = decode_stored(raw)
                if not any(f in doc and filter_key(doc[f]) in keys for f, keys in allowed.items()):
                    continue
            kept.append(hit)
            if len(kept) >= limit:
                break
        return kept

    def status(self) -> list[dict[str, Any]]:
        """Per index: table, name, state (ready / building / failed), vectors, progress."""
        out = []
        for (table, name), e in sorted(self._entries.items()):
            state = "ready" if e.ready else ("failed" if e.error else "building")
            out.append({"table": table, "index": name, "state": state, "vectors": len(e.index),
                        "done": e.done, "total": e.total, "error": e.error})
        return out

    def close(self) -> None:
        """Apply what is queued, then stop the applier and the background builds (they exit at the next batch)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            applier = self._applier
        if applier is not None:
            applier.join(timeout=30.0)
        for thread in self._threads:
            thread.join(timeout=5.0)



def _saved_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = orjson.loads((path / "meta.json").read_bytes())
        return meta if isinstance(meta, dict) else None
    except (OSError, ValueError):
        return None


def saved_offset(path: Path) -> int | None:
    """The stamp offset of the saved index copy in `path` (None: no readable copy there)."""
    meta = _saved_meta(path)
    try:
        return None if meta is None else int(meta["offset"])
    except (KeyError, TypeError, ValueError):
        return None


def _link_files(src: Path, dest: Path) -> bool:
    """Hard-link (or copy) the files of the saved copy `src` but its meta.json into `dest`; False if it vanished."""
    try:
        for path in src.iterdir():
            if path.name == "meta.json":
                continue
            try:
                os.link(path, dest / path.name)
            except FileNotFoundError:
                raise
            except OSError:
                shutil.copy2(path, dest / path.name)
        return True
    except OSError:
        for path in dest.iterdir():
            path.unlink()
        return False


def adopt_saved(src: Path, dest: Path, upto: int) -> list[str]:
    """Put the saved index copies of `src` (a checkpoint's ``vectors/``) into `dest` (``DATA/vectors``).

    A copy is taken when its stamp is at or before `upto` (the offset the
    data directory's projection is at, or will be caught up from) and `dest`
    has no usable copy of that index as recent (none, or one stamped after
    `upto`). Files are hard-linked (copied across file systems): saved copies
    are never changed in place. Returns the labels adopted; `load_saved`
    still checks each against the log when the runtime starts.
    """
    if not src.is_dir():
        return []
    adopted = []
    for child in sorted(src.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        stamp = saved_offset(child)
        if stamp is None or stamp > upto:
            continue
        current = saved_offset(dest / child.name)
        if current is not None and stamp <= current <= upto:
            continue
        dest.mkdir(parents=True, exist_ok=True)
        tmp, old, final = dest / f".{child.name}.tmp", dest / f".{child.name}.old", dest / child.name
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            for path in child.iterdir():
                try:
                    os.link(path, tmp / path.name)
                except OSError:
                    shutil.copy2(path, tmp / path.name)
                    fsync_path(tmp / path.name)
        except OSError:  # the checkpoint was pruned meanwhile: the index is built at start instead
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        _swap_in(tmp, final, old)
        adopted.append(child.name)
    return adopted


def _swap_in(tmp: Path, final: Path, old: Path) -> None:
    """Make the complete directory `tmp` (its files fsynced) the new `final`; the previous one goes via `old`."""
    fsync_dir(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
