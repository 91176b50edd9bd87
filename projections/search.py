"""Full-text search indexes: tantivy indexes kept as projections of the log.

A search index on ``table`` (``search_field`` plus equality ``filter_fields``)
is one tantivy index in ``<projection dir>/search/<table>/<index>/``. It is
fed by `Projection` in log order, with the documents (`SearchIndexes.apply`),
and holds, for every live document, its id, the tokens of its search field
and one raw term per filter field (`filter_term`). A document whose fields
allow it is handed to tantivy as its stored JSON (`_Index.payload`).

**Commits run off the event loop.** A tantivy commit fsyncs (tens of ms), so
applying a record only queues its writes; a worker thread adds them to the
tantivy writer and commits every `COMMIT_INTERVAL` seconds. Until then the
written documents are *pending*: a reader takes the committed searcher and
the pending ids together (`candidates`), asks tantivy for `limit + pending`
hits, drops the pending ones from them and re-checks each pending document
against its own view of the data (`matches`, `bm25`). That makes a search
exact at any snapshot: the committed searcher may be older or newer than the
reader, and every document that differs between the two is in the pending
set or among the documents the reader's snapshot says were written after it.

**Durability and recovery.** Each commit also stores the projection offset it
covers (in a meta document, atomically with the commit). An index whose
offset is not the projection's applied offset when the projection is opened
(after a crash, a copied checkpoint, a restore) is rebuilt from the
projection's documents; `close` commits at the applied offset, so a clean
shutdown reopens without a rebuild.

**Checkpoints carry the indexes.** `request_snapshot` (called where no apply
interleaves, right after a RocksDB checkpoint) queues a marker behind the
writes applied so far; the worker, on reaching it, commits every ready index
at exactly that offset and hard-links the segment files its ``meta.json``
names into the checkpoint (tantivy never rewrites a segment file; ``meta.json``
itself is copied, and ``.managed.json`` is written to list just those files).
A merge finishing meanwhile may delete a segment file; the copy is then
started again from the new ``meta.json`` (same content, same offset). Only
the worker commits, so no commit can slip in between: a copy's stated offset
is always its content's. An index still backfilling is left out (the copy
rebuilds it when opened, as a checkpoint without indexes always did).

**Backfill.** A new index (a schema change, or a rebuild as above) is filled
from the stored documents in chunks, under the lock the apply path takes
around its RocksDB write, so a chunk never overwrites a newer version of a
document; while it runs, searches get `SearchIndexBuilding` with the progress.

What is not tantivy — definitions, terms, read-set keys, scoring — is in
`projections.search_terms`.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import orjson
from orjson import dumps as _dumps
import tantivy

from .errors import ProjectionError
from .index_catalog import decode_stored
from .keys import UNDEFINED
from .search_terms import SearchQuery, SearchSpec, SearchStats, filter_term, value_at

log = logging.getLogger("tape.search")

SEARCH_DIR = "search"
COMMIT_INTERVAL = 0.25
"""Seconds between tantivy commits while writes are pending."""
PREFIX_EXPANSIONS = 32
"""The last query term matches at most this many indexed terms it is a prefix of (the most frequent)."""
MAX_QUEUED = 50_000
"""Queued writes beyond which the apply path waits for the worker (back-pressure)."""
BACKFILL_CHUNK = 256
_META_ID = "\x00meta"
_FRESH_MASK = (1 << 24) - 1
_FORMAT = 2  # the tantivy schema's layout; an index of another format is rebuilt
_WRITER_HEAP = 64_000_000
_WRITER_THREADS = 1


class SearchIndexBuilding(ProjectionError):
    """A search query against an index still being backfilled."""


class SearchError(ProjectionError):
    """A search index cannot be read or written (names the index)."""


# --- the indexes ----------------------------------------------------------------------------


class _Index:
    """One tantivy index and its state (committed searcher, pending ids, build progress)."""

    def __init__(self, spec: SearchSpec, path: str) -> None:
        self.spec = spec
        self.path = path
        builder = tantivy.SchemaBuilder()
        builder.add_text_field("_id", stored=True, tokenizer_name="raw", index_option="basic")
        builder.add_text_field("_meta", stored=True, tokenizer_name="raw", index_option="basic")
        # Top-level fields keep their own names (so a stored document's JSON can be indexed as it is, see
        # `payload`); a dotted path gets a name no document field can have (they never start with "_").
        top = "." not in spec.search_field
        self.text_name = spec.search_field if top else "_text"
        builder.add_text_field(self.text_name, tokenizer_name="default", index_option="freq")
        self.filter_names = [f if "." not in f else f"_f{i}" for i, f in enumerate(spec.filter_fields)]
        self._filters = [(n, f, "." not in f) for n, f in zip(self.filter_names, spec.filter_fields)]
        self._raw_ok = top and all(t for _n, _f, t in self._filters)
        for name in self.filter_names:
            builder.add_text_field(name, tokenizer_name="raw", index_option="basic")
        self.schema = builder.build()
        os.makedirs(path, exist_ok=True)
        self.index = tantivy.Index(self.schema, path=path, reuse=True)
        self.index.config_reader("Manual")
        self.writer = self.index.writer(heap_size=_WRITER_HEAP, num_threads=_WRITER_THREADS)
        self.searcher = self.index.searcher()
        self.offset = self._stored_offset()
        self.pending: dict[str, int] = {}  # document id -> offset of its last write not yet committed
        self.building: tuple[int, int] | None = None  # (documents done, documents in the table) while backfilling

    def _stored_offset(self) -> int | None:
        """The projection offset of the last commit (None: never committed)."""
        hits = self.searcher.search(tantivy.Query.term_query(self.schema, "_id", _META_ID), 1, count=False).hits
        if not hits:
            return None
        meta = orjson.loads(self.searcher.doc(hits[0][1])["_meta"][0])
        if meta.get("spec") != self.spec.as_json() or meta.get("format") != _FORMAT:
            return None
        return int(meta["offset"])

    def payload(self, doc_id: str, doc: Mapping[str, Any], raw: bytes | None) -> str:
        """The JSON tantivy indexes for `doc`: its stored encoding `raw` itself when its search field is a
        string (or missing) and its filter values are strings (tantivy ignores the other fields), else
        the fields built here."""
        if raw is not None and self._raw_ok:
            text = doc.get(self.text_name, UNDEFINED)
            if text is UNDEFINED or type(text) is str:
                for name, _path, _top in self._filters:
                    v = doc.get(name, UNDEFINED)  # a missing field has no term either way; null needs its own
                    if v is not UNDEFINED and (type(v) is not str or v[:1] == "\x00"):
                        break
                else:
                    return raw.decode()
        text = value_at(doc, self.spec.search_field)
        fields: dict[str, Any] = {"_id": doc_id, self.text_name: text if type(text) is str else ""}
        for name, path, _top in self._filters:
            fields[name] = filter_term(value_at(doc, path))
        return _dumps(fields).decode()

    def stage(self, doc_id: str, payload: str | None, delete: bool) -> None:
        """Queue in tantivy's writer: the delete of the document's older version, then its new one (`payload`)."""
        if delete:
            self.writer.delete_documents_by_term("_id", doc_id)
        if payload is not None:
            self.writer.add_json(payload)

    def commit(self, offset: int) -> Any:
        """Commit at projection offset `offset`; returns the new searcher."""
        self.writer.delete_documents_by_term("_id", _META_ID)
        meta = orjson.dumps({"offset": offset, "spec": self.spec.as_json(), "format": _FORMAT}).decode()
        self.writer.add_document(tantivy.Document(_id=_META_ID, _meta=meta))
        self.writer.commit()
        self.index.reload()
        return self.index.searcher()

    def release(self) -> None:
        """Stop the writer (its merges finish) and free the index's lock."""
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.wait_merging_threads()

    def query(self, searcher: Any, q: SearchQuery) -> Any:
        """The tantivy query for `q` against `searcher` (whose term dictionary expands the prefix)."""
        schema = self.schema
        term = tantivy.Query.term_query
        words = list(q.terms)
        prefix = q.terms[-1]
        expansions = searcher.terms_with_prefix(self.text_name, prefix, limit=PREFIX_EXPANSIONS)
        words.extend(t for t, _n in expansions if t not in q.terms)
        should = tantivy.Query.boolean_query([(tantivy.Occur.Should, term(schema, self.text_name, w)) for w in words])
        if not q.filters:
            return should
        position = {f: i for i, f in enumerate(self.spec.filter_fields)}
        must = [(tantivy.Occur.Must, should)]
        for name, value in q.filters:
            must.append((tantivy.Occur.Must, term(schema, self.filter_names[position[name]], filter_term(value))))
        return tantivy.Query.boolean_query(must)


class SearchSnapshot:
    """A pending copy of the search indexes into a checkpoint (see `SearchIndexes.request_snapshot`)."""

    def __init__(self, owner: "SearchIndexes | None", dest: str, offset: int) -> None:
        self.dest = dest
        self.offset = offset
        self._owner = owner
        self._done = threading.Event()
        self.copied: dict[str, int] = {}  # "table.index" -> offset of every index copied
        self.error: BaseException | None = None
        if owner is None:
            self._done.set()

    def finish(self, copied: dict[str, int], error: BaseException | None = None) -> None:
        self.copied, self.error = copied, error
        self._done.set()

    def wait(self, timeout: float | None = None) -> dict[str, int]:
        """Block until the worker copied the indexes; returns {"table.index": offset}. Raises `SearchError`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        owner = self._owner
        while not self._done.wait(0.1):
            if owner is not None and (owner._error is not None or owner._thread is None):
                owner._raise_error()
                raise SearchError(f"{owner.root}: the search index worker stopped before copying the indexes")
            if deadline is not None and time.monotonic() > deadline:
                raise SearchError(f"{self.dest}: the search indexes were not copied within {timeout}s")
        if self.error is not None:
            raise SearchError(f"copying the search indexes to {self.dest} failed: {self.error}") from self.error
        return self.copied


def copy_committed(src: str, dest: str, attempts: int = 5) -> list[str]:
    """Copy the committed state of the closed-for-commits tantivy index `src` into the new directory `dest`.

    Hard-links (or copies, across file systems) the files of the segments
    ``meta.json`` names, copies ``meta.json`` and writes ``.managed.json``.
    A merge that ends meanwhile may delete a file: then starts over from the
    new ``meta.json`` (the same documents). Returns the files linked. (The
    files a ``meta.json`` names exist for as long as it is the current one:
    tantivy deletes only files no longer named.)
    """
    for _ in range(attempts):
        with open(os.path.join(src, "meta.json"), "rb") as f:
            meta_raw = f.read()
        meta = orjson.loads(meta_raw)
        present = os.listdir(src)
        with open(os.path.join(src, "meta.json"), "rb") as f:
            if f.read() != meta_raw:
                continue  # a merge ended while listing: its files may be half deleted
        names: list[str] = []
        for segment in meta.get("segments", ()):
            uuid = str(segment["segment_id"]).replace("-", "")
            deletes = segment.get("deletes")
            names.extend(n for n in present if n.startswith(uuid + ".") and not n.endswith(".del"))
            if deletes:
                names.append(f"{uuid}.{deletes['opstamp']}.del")
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        try:
            for name in names:
                link_or_copy(os.path.join(src, name), os.path.join(dest, name))
        except FileNotFoundError:
            continue  # a merge replaced a segment: start again from its new meta.json
        with open(os.path.join(dest, "meta.json"), "wb") as f:
            f.write(meta_raw)
        with open(os.path.join(dest, ".managed.json"), "wb") as f:
            f.write(orjson.dumps(["meta.json", *names]))
        return names
    shutil.rmtree(dest, ignore_errors=True)
    raise SearchError(f"{src}: its segments kept changing while they were being copied ({attempts} attempts)")


def link_or_copy(src: str, dest: str) -> None:
    """Hard-link `src` as `dest` (copy it when they are on different file systems)."""
    try:
        os.link(src, dest)
    except FileNotFoundError:
        raise
    except OSError:
        shutil.copy2(src, dest)


@dataclass
class Candidates:
    """A search's answer from the committed index: hits, and the documents the reader must re-check."""

    hits: list[tuple[float, str]]
    suspects: set[str]
    stats: SearchStats


class SearchIndexes:
    """The search indexes of one projection, their worker thread and the lock around applies.

    `docs_of(table, after_id, n)` yields up to `n` (id, stored encoding) pairs of
    `table` in id order after `after_id` (None: from the start) — the
    projection's stored documents, for backfills.
    """

    def __init__(self, root: str, docs_of: Callable[[str, str | None, int], list[tuple[str, bytes]]],
                 count_of: Callable[[str], int]) -> None:
        self.root = root
        self._docs_of = docs_of
        self._count_of = count_of
        self.lock = threading.RLock()  # held around a projection write and the queueing of its documents
        self._cond = threading.Condition(threading.Lock())
        # (index, document id, its new encoding or None, delete the older version first); id None: a backfill's end
        self._queue: list[tuple[_Index, str | None, bytes | None, bool]] = []
        self._indexes: dict[tuple[str, str], _Index] = {}
        self._by_table: dict[str, list[_Index]] = {}
        self._applied = -1
        self._queued_offset = -1  # applied offset as of the last queued write
        self._bulk = False
        self._fresh_seen: bytearray | None = None
        self._flush_wanted = 0
        self._flushed = 0
        self._closing = False
        self._stopping = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._backfills: list[threading.Thread] = []
        #: called (on the worker thread) when an index finishes building: searches that failed may now succeed
        self.on_ready: list[Callable[[], None]] = []

    # -- catalog -------------------------------------------------------------------------

    @property
    def tables(self) -> dict[str, list[_Index]]:
        return self._by_table

    def specs(self) -> list[SearchSpec]:
        return [i.spec for i in self._indexes.values()]

    def install(self, specs: list[SearchSpec], applied_offset: int, background: bool) -> None:
        """Open, create or drop indexes so they are exactly `specs`; rebuild any not at `applied_offset`."""
        self._applied = self._queued_offset = applied_offset
        wanted = {(s.table, s.name): s for s in specs}
        if any(wanted.get(key) != idx.spec for key, idx in self._indexes.items()):
            self.flush()  # the worker is done with the indexes about to be dropped
        with self.lock:
            for key, idx in list(self._indexes.items()):
                if wanted.get(key) != idx.spec:
                    self._drop(key)
            fresh = []
            for key, spec in wanted.items():
                if key in self._indexes:
                    continue
                path = os.path.join(self.root, _dir_name(spec.table), _dir_name(spec.name))
                idx = self._open(spec, path)
                if idx.offset != applied_offset:
                    if idx.offset is not None:
                        log.info("search index %s.%s is at offset %s, the projection at %d: rebuilding it",
                                 spec.table, spec.name, idx.offset, applied_offset)
                    idx.writer.delete_all_documents()
                    idx.building = (0, self._count_of(spec.table))
                    fresh.append(idx)
                self._indexes[key] = idx
                self._by_table.setdefault(spec.table, []).append(idx)
        if self._indexes:
            self._start()
        waited = False
        for idx in fresh:
            if background and idx.building is not None and idx.building[1] > 0:
                t = threading.Thread(target=self._backfill, args=(idx,), name=f"tape-search-backfill-{idx.spec.name}",
                                     daemon=True)
                self._backfills.append(t)
                t.start()
            else:  # here and now (an empty table costs one commit)
                self._backfill(idx)
                waited = True
        if waited:
            self.flush()

    def _open(self, spec: SearchSpec, path: str) -> _Index:
        try:
            return _Index(spec, path)
        except Exception as exc:  # tantivy reports a damaged or foreign index as ValueError or plain Exception
            log.warning("search index %s.%s at %s is unreadable (%s): recreating it", spec.table, spec.name, path, exc)
            shutil.rmtree(path, ignore_errors=True)
            return _Index(spec, path)

    def _drop(self, key: tuple[str, str]) -> None:
        idx = self._indexes.pop(key)
        self._by_table[idx.spec.table].remove(idx)
        if not self._by_table[idx.spec.table]:
            del self._by_table[idx.spec.table]
        with self._cond:
            self._queue = [op for op in self._queue if op[0] is not idx]
        idx.release()
        shutil.rmtree(idx.path, ignore_errors=True)

    # -- writing -------------------------------------------------------------------------

    def apply(self, writes: Iterable[tuple[int, str, str, bytes | None]], last_offset: int, fresh: bool) -> None:
        """Queue the writes (offset, table, id, new encoding or None) of applied records, then `last_offset`.

        Call with `lock` held, right after the projection's own write.
        `fresh`: the projection was empty before this replay, so an insert
        needs no delete of an older version.
        """
        by_table = self._by_table
        ops = []
        seen = None
        if fresh:  # ids written during this replay (a filter: a false "maybe" costs one needless delete)
            seen = self._fresh_seen
            if seen is None:
                seen = self._fresh_seen = bytearray(_FRESH_MASK + 1)
        else:
            self._fresh_seen = None
        for off, table, doc_id, raw in writes:
            indexes = by_table.get(table)
            if not indexes:
                continue
            if seen is None:
                delete = True
            else:
                h = hash(doc_id) & _FRESH_MASK
                delete = bool(seen[h])
                seen[h] = 1
            for idx in indexes:
                idx.pending[doc_id] = off
                ops.append((idx, doc_id, raw, delete or idx.building is not None))
        self._applied = last_offset
        if ops:
            with self._cond:
                self._queue.extend(ops)
                self._queued_offset = last_offset
                self._cond.notify()
            if len(self._queue) > MAX_QUEUED:
                self._wait_drained()
        else:
            self._queued_offset = last_offset

    def _wait_drained(self) -> None:
        with self._cond:
            while len(self._queue) > MAX_QUEUED // 2 and self._error is None and self._thread is not None:
                self._cond.wait(0.05)

    def bulk(self, on: bool) -> None:
        """During a replay: commit only at the end (`flush` when it is turned off)."""
        self._bulk = on
        if not on:
            self.flush()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything queued so far is committed (at the applied offset)."""
        if self._thread is None:
            return
        with self._cond:
            self._flush_wanted += 1
            wanted = self._flush_wanted
            self._cond.notify()
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._flushed < wanted and self._error is None and self._thread is not None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise SearchError(f"{self.root}: search indexes did not commit within {timeout}s")
                self._cond.wait(0.1 if remaining is None else min(0.1, remaining))
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise SearchError(f"{self.root}: the search index worker failed: {self._error}") from self._error

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tape-search", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        last_commit = time.monotonic()
        dirty: set[_Index] = set()  # indexes with writes staged since their last commit
        finished: set[_Index] = set()  # indexes whose backfill is all staged
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing and self._flush_wanted == self._flushed:
                        due = COMMIT_INTERVAL - (time.monotonic() - last_commit)
                        if (dirty or finished) and not self._bulk and due <= 0:
                            break
                        self._cond.wait(due if due > 0 else COMMIT_INTERVAL)
                    ops, self._queue = self._queue, []
                    offset = self._queued_offset
                    flush = self._flush_wanted
                    closing = self._closing
                    self._cond.notify_all()
                for idx, doc_id, raw, delete in ops:
                    if idx is None:  # a checkpoint's copy, at the offset it was queued at
                        self._snapshot(doc_id, finished)  # type: ignore[arg-type]
                        dirty.clear()
                        finished.clear()
                        continue
                    if idx.writer is None:  # dropped meanwhile
                        continue
                    if doc_id is None:  # the end of a backfill
                        finished.add(idx)
                        continue
                    idx.stage(doc_id, None if raw is None else idx.payload(doc_id, decode_stored(raw), raw), delete)
                    dirty.add(idx)
                want_commit = flush != self._flushed or closing or (
                    not self._bulk and (dirty or finished) and time.monotonic() - last_commit >= COMMIT_INTERVAL)
                if want_commit:
                    self._commit_all(offset, finished)
                    dirty.clear()
                    finished.clear()
                    last_commit = time.monotonic()
                    with self._cond:
                        self._flushed = flush
                        self._cond.notify_all()
                    if closing:
                        return
        except BaseException as exc:  # reported to every later caller
            log.exception("search index worker failed")
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _commit_all(self, offset: int, finished: set[_Index]) -> None:
        for idx in list(self._indexes.values()):
            if idx.writer is None:
                continue
            if idx.building is not None and idx not in finished:
                continue  # committed when its backfill ends
            if not idx.pending and idx.offset == offset and idx not in finished:
                continue
            searcher = idx.commit(offset)
            with self.lock:  # the searcher and the pending ids change together (see `candidates`)
                idx.searcher = searcher
                idx.offset = offset
                idx.pending = {k: v for k, v in idx.pending.items() if v > offset}
                if idx in finished:
                    idx.building = None
                    log.info("search index %s.%s built", idx.spec.table, idx.spec.name)
            if idx in finished:
                for callback in list(self.on_ready):
                    try:
                        callback()
                    except Exception:
                        log.exception("search index ready callback failed")

    def _backfill(self, idx: _Index) -> None:
        """Queue every stored document of the index's table (in chunks, under `lock`), then its end."""
        after: str | None = None
        done = 0
        try:
            while True:
                with self.lock:
                    if self._indexes.get((idx.spec.table, idx.spec.name)) is not idx or self._stopping:
                        return  # dropped meanwhile, or closing (the next open starts it again)
                    chunk = self._docs_of(idx.spec.table, after, BACKFILL_CHUNK)
                    with self._cond:
                        self._queue.extend((idx, doc_id, raw, True) for doc_id, raw in chunk)
                        if not chunk:
                            self._queue.append((idx, None, None, False))
                        self._cond.notify()
                if not chunk:
                    return
                after = chunk[-1][0]
                done += len(chunk)
                idx.building = (done, max(self._count_of(idx.spec.table), done))
                if len(self._queue) > MAX_QUEUED:
                    self._wait_drained()
        except BaseException as exc:
            log.exception("backfilling search index %s.%s failed", idx.spec.table, idx.spec.name)
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    # -- checkpoints ---------------------------------------------------------------------

    def request_snapshot(self, dest: str, offset: int) -> SearchSnapshot:
        """Queue a copy of every ready index, as of the applied offset `offset`, into `dest`/<table>/<index>.

        Call it where no apply interleaves (on a node: on the event loop,
        right after the projection's own checkpoint); it returns at once and
        the worker does the commit and the copy: `SearchSnapshot.wait` for it.
        """
        self._raise_error()
        if self._thread is None or not self._indexes:
            return SearchSnapshot(None, dest, offset)
        if offset != self._applied:  # cannot happen (applies go through `apply`); never copy a wrong offset
            request = SearchSnapshot(self, dest, offset)
            request.finish({}, SearchError(f"{self.root}: the indexes were fed up to offset {self._applied}, "
                                           f"the projection is at {offset}"))
            return request
        request = SearchSnapshot(self, dest, offset)
        with self._cond:
            self._queue.append((None, request, None, False))  # type: ignore[arg-type]
            self._cond.notify()
        return request

    def _snapshot(self, request: SearchSnapshot, finished: set[_Index]) -> None:
        """On the worker: commit every index at the request's offset, then copy the ready ones."""
        copied: dict[str, int] = {}
        self._commit_all(request.offset, finished)  # a failed commit stops the worker (and fails the wait)
        try:
            for idx in list(self._indexes.values()):
                if idx.writer is None or idx.building is not None or idx.offset != request.offset:
                    continue
                copy_committed(idx.path, os.path.join(request.dest, _dir_name(idx.spec.table),
                                                      _dir_name(idx.spec.name)))
                copied[f"{idx.spec.table}.{idx.spec.name}"] = request.offset
        except Exception as exc:  # the checkpoint goes without them (they are rebuilt where it is opened)
            shutil.rmtree(request.dest, ignore_errors=True)
            request.finish({}, exc)
            return
        request.finish(copied)

    # -- reading -------------------------------------------------------------------------

    def spec(self, table: str, name: str) -> SearchSpec:
        idx = self._indexes.get((table, name))
        if idx is None:
            raise KeyError(f"{table}.{name}: no such search index")
        return idx.spec

    def candidates(self, table: str, name: str, query: SearchQuery, limit: int,
                   extra: Callable[[], Iterable[str]] | None = None) -> Candidates:
        """Top hits of the committed index plus the pending ids (which the caller must re-check).

        `extra()` (called once the searcher is taken) adds ids the caller's
        view may hold differently (a snapshot's documents written after it).
        Asks tantivy for as many more hits than `limit` as there are such
        ids, and leaves them out of `hits`.
        """
        self._raise_error()
        idx = self._indexes.get((table, name))
        if idx is None:
            raise KeyError(f"{table}.{name}: no such search index")
        with self.lock:
            building = idx.building
            searcher = idx.searcher
            suspects = set(idx.pending)
        if extra is not None:
            suspects.update(extra())
        if building is not None:
            done, total = building
            pct = 100.0 * done / total if total else 0.0
            raise SearchIndexBuilding(
                f"search index {table}.{name} is still building: {done:,} of {total:,} documents ({pct:.0f}%); "
                "retry when it is done")
        stats = SearchStats(searcher, idx.text_name, searcher.num_docs)
        if not query.terms or limit <= 0:
            return Candidates([], suspects, stats)
        q = idx.query(searcher, query)
        result = searcher.search(q, limit + len(suspects), count=False)
        hits = []
        for score, address in result.hits:
            doc_id = searcher.doc(address)["_id"][0]
            if doc_id not in suspects and doc_id != _META_ID:
                hits.append((score, doc_id))
        return Candidates(hits[:limit], suspects, stats)

    def progress(self) -> dict[str, Any]:
        """Per index: building progress or ready, committed offset and pending writes."""
        return {f"{i.spec.table}.{i.spec.name}": {"building": i.building, "offset": i.offset,
                                                  "pending": len(i.pending)} for i in self._indexes.values()}

    def close(self) -> None:
        """Commit what is queued (at the applied offset) and stop the worker (and any backfill, unfinished)."""
        self._stopping = True
        for t in self._backfills:
            t.join()
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread.join()
        self._thread = None
        for idx in self._indexes.values():
            idx.release()


def _dir_name(name: str) -> str:
    """A directory name for a table or index name (names are letters, digits and '_')."""
    return re.sub(r"[^A-Za-z0-9_]", lambda m: f"%{ord(m.group()):02x}", name)
