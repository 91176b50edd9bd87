"""`Projection`: the materialized state (documents + indexes) in one RocksDB directory.

The projection is a pure function of the commit log: `apply` folds records into
it in offset order, and the offset/ts of the last applied record are stored in
the *same* WriteBatch as the record's effects, so the directory always holds a
state "after record N" for some N. See `projections.layout` for the key layout;
every index key is derived by `projections.index_catalog`.

Durability: writes skip the RocksDB WAL. The projection can be rebuilt from the
log, and without a WAL a crash loses only the memtable: RocksDB flushes one
column family's memtables whole and in order, and a WriteBatch never straddles
two memtables, so what survives is always a prefix of the applied batches —
including the matching applied offset. After a crash the owner replays the log
from ``applied_offset + 1``. `flush` and `close` persist the memtable, so a clean
shutdown loses nothing.

A `Projection` has a single writer; reads (`get`, `scan`) may interleave with
writes, and each scan sees a consistent snapshot taken when it starts.

Replaying the log (`projections.rebuild`) uses `apply_writes`: `apply` for
records given as their flattened writes, straight from the log's frames; and
while it replays into an empty projection, `track_new_documents` spares each
insert the read that would learn its document is new.
"""
from __future__ import annotations

import hashlib
import os
from collections import deque
from itertools import compress, repeat
from operator import is_not, not_
from typing import Any, Iterable, Iterator, Mapping

import orjson
from rocksdict import BlockBasedOptions, Checkpoint, Options, ReadOptions, Rdict, WriteBatch, WriteOptions

from log.codec import FlatWrite
from log.record import Record

from .errors import ProjectionError, ProjectionFormatError
from .index_catalog import Catalog, TableIndexes, by_id_key, decode_stored, doc_key_from_id, normalize_catalog
from .keys import encode_value_key, prefix_successor
from .search import SEARCH_DIR, Candidates, SearchIndexes, SearchSnapshot
from .search_terms import (
    SearchQuery,
    SearchSpec,
    doc_search_keys,
    normalize_search_catalog,
    search_prefix,
    specs_of,
    split_catalog,
)
from .layout import (
    DOC,
    DOC_RANGE,
    FORMAT_VERSION,
    META_APPLIED_OFFSET,
    META_APPLIED_TS,
    META_CATALOG,
    META_COUNT,
    META_FORMAT,
    META_SEARCH_CATALOG,
    count_key,
    index_prefix,
    pack_int,
    unpack_int,
)

Bound = tuple[Any, bool]
"""A range bound on one index field: (value, inclusive)."""


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_max_background_jobs(2)
    opts.set_write_buffer_size(64 << 20)
    # No memtable bloom filter: filling it costs every write more than it saves the reads.
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)
    opts.set_block_based_table_factory(table)
    return opts


class Projection:
    """Documents and indexes materialized from the commit log, in one RocksDB directory.

    `indexes` is the user index catalog ``{table: {name: [field, ...]}}``; when
    given and different from the stored catalog it is installed with
    `set_indexes` (backfilling/dropping index entries). When None the stored
    catalog (empty for a new directory) is kept.
    """

    def __init__(
        self, path: str | os.PathLike[str], indexes: Mapping[str, Mapping[str, Any]] | None = None,
        *, background_search_backfill: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self._background_search = background_search_backfill
        self._db: Rdict | None = Rdict(self.path, _options())
        self._wo = WriteOptions()
        self._wo.disable_wal = True
        # While replaying into an empty projection: a filter of the documents added (see `track_new_documents`).
        self._seen: bytearray | None = None
        try:
            self._load_meta()
        except BaseException:
            self._db.close()
            self._db = None
            raise
        self._search = SearchIndexes(os.path.join(self.path, SEARCH_DIR), self._search_docs, self.count)
        try:
            if indexes is not None:
                plain, search = split_catalog(indexes)
                if normalize_catalog(plain) != self._catalog or normalize_search_catalog(search) != self._search_catalog:
                    self.set_indexes(indexes)
            if self._search_catalog and not self._search.specs():
                self._search.install(specs_of(self._search_catalog), self._applied_offset, self._background_search)
        except BaseException:
            self.close()
            raise

    def _load_meta(self) -> None:
        db = self._db
        assert db is not None
        raw = db.get(META_FORMAT)
        if raw is None:
            if db.get(META_APPLIED_OFFSET) is not None or db.get(META_CATALOG) is not None:
                raise ProjectionFormatError(
                    f"{self.path}: projection has no format version marker; rebuild it from the log"
                )
            wb = WriteBatch(raw_mode=True)
            wb.put(META_FORMAT, pack_int(FORMAT_VERSION))
            wb.put(META_CATALOG, orjson.dumps({}))
            db.write(wb, self._wo)
        else:
            version = unpack_int(raw) if len(raw) == 8 else -1
            if version != FORMAT_VERSION:
                newer = "newer than" if version > FORMAT_VERSION else "unknown to"
                raise ProjectionFormatError(
                    f"{self.path}: projection format version {version} is {newer} this build "
                    f"(supports {FORMAT_VERSION}); upgrade Tape or rebuild the projection from the log"
                )
        raw = db.get(META_APPLIED_OFFSET)
        self._applied_offset = unpack_int(raw) if raw is not None else -1
        raw = db.get(META_APPLIED_TS)
        self._applied_ts = unpack_int(raw) if raw is not None else 0
        raw = db.get(META_CATALOG)
        self._catalog: Catalog = normalize_catalog(orjson.loads(raw)) if raw is not None else {}
        raw = db.get(META_SEARCH_CATALOG)
        self._search_catalog = normalize_search_catalog(orjson.loads(raw)) if raw is not None else {}
        self._tables: dict[str, TableIndexes] = {}
        self._counts: dict[str, int] = {}
        lo = META_COUNT
        for key, value in db.items(from_key=lo):
            if not key.startswith(lo):
                break
            self._counts[key[len(lo):].decode()] = unpack_int(value)

    # --- properties ---------------------------------------------------------------

    @property
    def applied_offset(self) -> int:
        """Offset of the last applied record (-1 when nothing was applied)."""
        return self._applied_offset

    @property
    def applied_ts(self) -> int:
        """Commit timestamp (ns) of the last applied record (0 when nothing was applied)."""
        return self._applied_ts

    @property
    def indexes(self) -> dict[str, dict[str, Any]]:
        """A copy of the current user index catalog (search indexes as ``{search_field, filter_fields}``)."""
        out: dict[str, dict[str, Any]] = {t: {n: list(f) for n, f in per.items()} for t, per in self._catalog.items()}
        for table, per in self._search_catalog.items():
            for name, entry in per.items():
                out.setdefault(table, {})[name] = {"search_field": entry["search_field"],
                                                   "filter_fields": list(entry["filter_fields"])}
        return out

    def _db_open(self) -> Rdict:
        if self._db is None:
            raise ProjectionError(f"{self.path}: projection is closed")
        return self._db

    def _table(self, table: str) -> TableIndexes:
        ti = self._tables.get(table)
        if ti is None:
            ti = self._tables[table] = TableIndexes(table, self._catalog.get(table))
        return ti

    # --- writing --------------------------------------------------------------------

    def apply(self, records: Iterable[Record]) -> None:
        """Apply `records` in order as one atomic RocksDB write (with the new applied offset/ts).

        Records at or below `applied_offset` are skipped, so re-applying is harmless.
        For each write the old index keys come from `Write.prev` (or, when that
        is None, from the stored document), so only changed keys are rewritten.
        """
        writes, last_off, last_ts = self._flatten(records)
        self._apply_flat(writes, last_off, last_ts)

    def apply_writes(self, writes: list[FlatWrite], last_offset: int, last_ts: int) -> None:
        """`apply` for records given as their flattened writes (the replay path: no `Record` objects).

        `writes` holds the writes of consecutive log records, in order, each as
        ``(record offset, table, document id as UTF-8 bytes, doc, prev)`` (what
        `log.codec.decode_frame_writes` collects); `last_offset`/`last_ts` are
        those of the last record (which, like any record, may have no writes).
        Records at or below `applied_offset` are skipped, as by `apply`.
        """
        base = self._applied_offset
        if last_offset <= base:
            return
        if writes and writes[0][0] <= base:
            writes = [w for w in writes if w[0] > base]
        self._apply_flat(writes, last_offset, last_ts)

    def _flatten(self, records: Iterable[Record]) -> tuple[list[FlatWrite], int, int]:
        """The writes of the records after `applied_offset`, flattened, with the last new offset and ts."""
        last_off = self._applied_offset
        last_ts = self._applied_ts
        out: list[FlatWrite] = []
        append = out.append
        for rec in records:
            off = rec.offset
            if off <= last_off:
                if off < 0:
                    raise ValueError(f"{self.path}: record has no log offset ({off})")
                continue
            w = None
            try:
                for w in rec.writes:
                    append((off, w.table, w.id.encode(), w.doc, _SAME_KEYS if w.same_index_keys else w.prev))
            except Exception as exc:
                where = f" ({w.table} {w.id})" if w is not None else ""
                raise ProjectionError(f"{self.path}: cannot apply record {off}{where}: {exc}") from exc
            last_off = off
            last_ts = rec.ts
        return out, last_off, last_ts

    def _apply_flat(self, writes: list[FlatWrite], last_off: int, last_ts: int) -> None:
        if last_off == self._applied_offset:
            return
        batch, counts = self._build(writes, last_off, last_ts)
        search = self._search
        if not search.tables:
            self._commit(batch, counts, last_off, last_ts)
            return
        with search.lock:  # a search backfill reads documents under it (see projections.search)
            fresh = self._seen is not None
            self._commit(batch, counts, last_off, last_ts)
            search.apply([(w[0], w[1], w[2].decode(), w[3]) for w in writes], last_off, fresh)

    def _commit(self, batch: WriteBatch, counts: dict[str, int], last_off: int, last_ts: int) -> None:
        """Write `batch` (built by `_finish`) and take in its new counts and applied offset/ts."""
        self._db_open().write(batch, self._wo)
        self._counts = counts
        self._applied_ts = last_ts
        self._applied_offset = last_off
        if self._seen is not None and sum(counts.values()) > _SEEN_MAX:
            self._seen = None

    def _build(self, writes: list[FlatWrite], last_off: int, last_ts: int) -> tuple[WriteBatch, dict[str, int]]:
        """The WriteBatch applying `writes` and moving the applied offset/ts on, with the new counts.

        A write's old index keys come from its `prev` (or, without one, from
        the batch or the stored document); its keys come from the table's
        `TableIndexes`, and only those that change are written. Operations
        are collected per key space (documents, each table's index entries),
        then added in key order: RocksDB inserts sorted keys into its memtable
        several times faster than scattered ones.
        """
        db_get = self._db_open().get
        tables = self._tables
        absent = _ABSENT
        decode = decode_stored
        docs: dict[bytes, bytes | None] = {}  # doc key -> new document (None: deleted)
        docs_get = docs.get
        per_table: dict[str, _TableOps] = {}
        doc_dels = False  # whether `docs` holds a delete
        seen = self._seen
        seen_mask = _SEEN_MASK
        off = table = idb = last_table = None
        try:
            for off, table, idb, new_raw, old_raw in writes:
                if old_raw is _SAME_KEYS:  # an update the writer knows keeps every index key
                    docs[DOC + idb] = new_raw
                    continue
                if table is not last_table:
                    t = per_table.get(table)
                    if t is None:
                        t = per_table[table] = _TableOps(tables.get(table) or self._table(table))
                    ops, gone, doc_keys, key_changes = t.ops, t.gone, t.doc_keys, t.key_changes
                    last_table = table
                dkey = DOC + idb
                if old_raw is None:  # no prev: the document is new, unless the batch or the store holds it
                    old_raw = docs_get(dkey, absent)
                    if old_raw is absent:
                        old_raw = db_get(dkey) if seen is None or seen[hash(dkey) & seen_mask] else None
                docs[dkey] = new_raw
                if new_raw is not None:
                    if old_raw is None:  # a new document
                        for key in doc_keys(decode(new_raw), idb):
                            ops[key] = idb
                        t.delta += 1
                        if seen is not None:
                            seen[hash(dkey) & seen_mask] = 1
                        continue
                    changes = key_changes(decode(old_raw), decode(new_raw), idb)
                    for old_key, new_key in changes:
                        ops.pop(old_key, None)
                        gone.add(old_key)
                        ops[new_key] = idb
                else:
                    doc_dels = True
                    if old_raw is not None:
                        for key in doc_keys(decode(old_raw), idb):
                            ops.pop(key, None)
                            gone.add(key)
                        t.delta -= 1
        except Exception as exc:
            if idb is None:
                where = ""
            else:
                where = f" ({table} {idb.decode(errors='replace') if type(idb) is bytes else idb})"
            raise ProjectionError(f"{self.path}: cannot apply record {off}{where}: {exc}") from exc
        return self._finish(per_table, docs, doc_dels, last_off, last_ts)

    def _finish(
        self, per_table: dict[str, _TableOps], docs: dict[bytes, bytes | None], doc_dels: bool,
        last_off: int, last_ts: int,
    ) -> tuple[WriteBatch, dict[str, int]]:
        """The WriteBatch of the collected operations (in key order) and the new applied offset/ts, with the new counts."""
        meta: dict[bytes, bytes | None] = {
            META_APPLIED_OFFSET: pack_int(last_off),
            META_APPLIED_TS: pack_int(last_ts),
        }
        counts = self._counts
        changed = [t for t in per_table.values() if t.delta]
        if changed:
            counts = dict(counts)
            for t in changed:
                table = t.ti.table
                n = counts.get(table, 0) + t.delta
                if n:
                    counts[table] = n
                    meta[count_key(table)] = pack_int(n)
                else:
                    counts.pop(table, None)
                    meta[count_key(table)] = None
        # In key order: the meta keys, the documents, then each table's index entries.
        wb = WriteBatch(raw_mode=True)
        put = wb.put
        delete = wb.delete
        for ops, dels in ((meta, True), (docs, doc_dels)):  # key -> value (None: delete)
            keys = sorted(ops)
            if not dels:
                _consume(map(put, keys, map(ops.__getitem__, keys)))
                continue
            values = list(map(ops.__getitem__, keys))
            live = list(map(is_not, values, repeat(None)))
            _consume(map(put, compress(keys, live), compress(values, live)))
            _consume(map(delete, compress(keys, map(not_, live))))
        for t in sorted(per_table.values(), key=_index_order):
            if t.gone:  # deleted before the puts: a key deleted and then written again ends written
                _consume(map(delete, sorted(t.gone)))
            keys = sorted(t.ops)
            _consume(map(put, keys, map(t.ops.__getitem__, keys)))
        return wb, counts

    def track_new_documents(self, on: bool = True) -> bool:
        """Start (or stop) remembering, in a 16 MiB filter, the documents this projection adds.

        For replaying the log into an empty projection: a write without
        `prev` must learn whether its document exists, and while every
        document came from this replay the filter answers "no" for most new
        ones without a read. Starts only when the projection holds no
        document; returns whether the filter is on. (It turns itself off once
        it holds too many documents to answer "no" often.)
        """
        if not on:
            self._seen = None
        elif self._seen is None and self._applied_offset < 0 and not self._counts:
            if next(self._raw_items(*DOC_RANGE), None) is None:
                self._seen = bytearray(_SEEN_MASK + 1)
        return self._seen is not None

    def set_indexes(self, indexes: Mapping[str, Mapping[str, Any]]) -> None:
        """Install a new user index catalog.

        Entries of removed (or redefined) indexes are deleted, added ones are
        backfilled from the stored documents, and the catalog is stored — all
        in one atomic write. Search indexes (entries ``{search_field,
        filter_fields}``) are stored in the catalog, dropped or backfilled in
        their own directories (in the background when the projection was
        opened with `background_search_backfill`).
        """
        plain, search = split_catalog(indexes)
        self._set_plain_indexes(plain)
        new_search = normalize_search_catalog(search)
        if new_search != self._search_catalog or (new_search and not self._search.specs()):
            db = self._db_open()
            if new_search:
                db.put(META_SEARCH_CATALOG, orjson.dumps(new_search, option=orjson.OPT_SORT_KEYS), self._wo)
            else:
                db.delete(META_SEARCH_CATALOG, self._wo)
            self._search_catalog = new_search
            self._search.install(specs_of(new_search), self._applied_offset, self._background_search)

    def _set_plain_indexes(self, indexes: Mapping[str, Mapping[str, list[str]]]) -> None:
        db = self._db_open()
        new = normalize_catalog(indexes)
        old = self._catalog
        if new == old:
            return
        wb = WriteBatch(raw_mode=True)
        for table, per in old.items():
            for name, fields in per.items():
                if new.get(table, {}).get(name) != fields:
                    prefix = index_prefix(table, name)
                    wb.delete_range(prefix, prefix_successor(prefix))
        for table, per in new.items():
            added = {n: f for n, f in per.items() if old.get(table, {}).get(n) != f}
            if not added:
                continue
            ti = TableIndexes(table, added)
            for doc_id, raw in self._doc_items(table):
                idb = doc_id.encode()
                for key in ti.doc_keys(decode_stored(raw), idb)[2:]:
                    wb.put(key, idb)
        wb.put(META_CATALOG, orjson.dumps(new, option=orjson.OPT_SORT_KEYS))
        db.write(wb, self._wo)
        self._catalog = new
        self._tables = {}

    # --- search -----------------------------------------------------------------------

    def _search_docs(self, table: str, after: str | None, n: int) -> list[tuple[str, bytes]]:
        """Up to `n` (id, stored encoding) of `table` after id `after`, in id order (for search backfills)."""
        lo, hi = self.index_range(table, "by_id")
        if after is not None:
            lo = prefix_successor(by_id_key(table, after))
        get = self._db_open().get
        out = []
        for _key, doc_id in self.scan(lo, hi):
            raw = get(DOC + doc_id.encode())
            if raw is not None:
                out.append((doc_id, raw))
                if len(out) >= n:
                    break
        return out

    def search_spec(self, table: str, index: str) -> SearchSpec:
        """The definition of search index `index` of `table` (KeyError if there is none)."""
        return self._search.spec(table, index)

    def search_candidates(self, table: str, index: str, query: SearchQuery, limit: int,
                          extra: Any = None) -> Candidates:
        """Search hits of the committed index and the ids to re-check (see `projections.search`).

        `extra()`, called after the searcher is taken, names more ids the caller's view may differ on.
        """
        return self._search.candidates(table, index, query, limit, extra)

    @property
    def search_tables(self) -> dict[str, Any]:
        """The tables that have search indexes (a mapping keyed by table name)."""
        return self._search.tables

    def search_keys(self, table: str, doc: dict[str, Any]) -> list[tuple[bytes, bytes]]:
        """(bucket, key) of every search read-set key a version of `doc` in `table` touches."""
        out = []
        for idx in self._search.tables.get(table, ()):
            bucket = search_prefix(idx.spec)
            out.extend((bucket, key) for key in doc_search_keys(idx.spec, doc))
        return out

    def search_progress(self) -> dict[str, Any]:
        """Per search index: whether it is building (documents done, total), its committed offset, pending writes."""
        return self._search.progress()

    def on_search_ready(self, callback: Any) -> None:
        """Call `callback()` (from a worker thread) whenever a search index finishes building."""
        self._search.on_ready.append(callback)

    def bulk_search(self, on: bool) -> None:
        """While replaying many records: commit search indexes only at the end (when turned off)."""
        self._search.bulk(on)

    def flush_search(self) -> None:
        """Wait until every search index has committed all applied writes."""
        self._search.flush()

    # --- reading --------------------------------------------------------------------

    def get(self, doc_id: str) -> bytes | None:
        """The encoded document `doc_id`, or None."""
        return self._db_open().get(DOC + doc_id.encode())

    def get_many(self, ids: Iterable[str]) -> list[bytes | None]:
        """`get` for each of `ids`, in order."""
        get = self._db_open().get
        return [get(DOC + i.encode()) for i in ids]

    def index_prefix(self, table: str, index: str) -> bytes:
        """The key prefix of every entry of `index` on `table`."""
        return index_prefix(table, index)

    def index_fields(self, table: str, index: str) -> list[str]:
        """The fields `index` orders by, including the implicit ``_creationTime``/``_id``."""
        fields = self._table(table).fields.get(index)
        if fields is None:
            raise KeyError(f"{table}.{index}: no such index")
        return list(fields)

    def doc_key(self, doc_id: str, table: str | None = None) -> bytes:
        """The by_id index key of `doc_id` (its table taken from the id unless given)."""
        if table is not None:
            return by_id_key(table, doc_id)
        key = doc_key_from_id(doc_id)
        if key is None:
            raise ValueError(f"{doc_id!r} is not a document id; pass its table explicitly")
        return key

    def index_keys(self, table: str, doc: dict[str, Any]) -> list[tuple[str, bytes]]:
        """Every (index name, key) `doc` occupies in `table`, including by_id and by_creation_time."""
        ti = self._table(table)
        return list(zip(ti.names, ti.keys(doc, doc["_id"])))

    def index_range(
        self,
        table: str,
        index: str,
        eq: list[Any] | tuple[Any, ...] = (),
        lower: Bound | None = None,
        upper: Bound | None = None,
    ) -> tuple[bytes, bytes]:
        """The half-open key range [lo, hi) of `index` entries matching the bounds.

        `eq` fixes the leading fields (``field_i == eq[i]``); `lower`/`upper`
        are ``(value, inclusive)`` bounds on the field right after them.
        """
        ti = self._tables.get(table) or self._table(table)
        try:
            prefix, n_fields = ti.by_name[index]
        except KeyError:
            raise KeyError(f"{table}.{index}: no such index") from None
        if eq:
            if len(eq) + (lower is not None or upper is not None) > n_fields:
                raise ValueError(f"{table}.{index}: range on more fields than the index has ({ti.fields[index]})")
            base = prefix + b"".join([encode_value_key(v) for v in eq])
        else:
            base = prefix
        if lower is None:
            lo = base
        else:
            lo = base + encode_value_key(lower[0])
            if not lower[1]:
                lo = prefix_successor(lo)
        if upper is None:
            hi = prefix_successor(base)
        else:
            hi = base + encode_value_key(upper[0])
            if upper[1]:
                hi = prefix_successor(hi)
        return lo, hi

    def scan(self, lo: bytes, hi: bytes, reverse: bool = False) -> Iterator[tuple[bytes, str]]:
        """Lazily yield (index key, document id) for keys in [lo, hi), ascending or descending.

        The snapshot is taken when `scan` is called, not at the first `next`.
        """
        db = self._db_open()
        if lo >= hi:
            return iter(())
        # Only the upper bound goes to RocksDB: rocksdict 0.3.29's
        # ReadOptions.set_iterate_lower_bound sets the *upper* bound, so the
        # lower end of a reverse scan is checked here instead. The iterator
        # does not own its bound: `ro` must outlive it (the walkers hold it).
        ro = ReadOptions()
        ro.set_iterate_upper_bound(hi)
        it = db.iter(ro)
        if reverse:
            it.seek_to_last()
            return _walk_back(it, lo, ro)
        it.seek(lo)
        return _walk(it, ro)

    def iter_documents(self, table: str | None = None) -> Iterator[bytes]:
        """Yield encoded documents: of `table` in by_id order, or of every table in id order."""
        for _doc_id, raw in self._doc_items(table):
            yield raw

    def _doc_items(self, table: str | None) -> Iterator[tuple[str, bytes]]:
        if table is None:
            for key, value in self._raw_items(*DOC_RANGE):
                yield key[1:].decode(), value
            return
        get = self._db_open().get
        lo, hi = self.index_range(table, "by_id")
        for _key, doc_id in self.scan(lo, hi):
            raw = get(DOC + doc_id.encode())
            if raw is not None:
                yield doc_id, raw

    def count(self, table: str) -> int:
        """The number of documents in `table`."""
        return self._counts.get(table, 0)

    def tables(self) -> list[str]:
        """The tables holding at least one document, sorted."""
        return sorted(self._counts)

    def _raw_items(self, lo: bytes | None = None, hi: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        db = self._db_open()
        ro = ReadOptions()
        if hi is not None:
            ro.set_iterate_upper_bound(hi)
        it = db.iter(ro)
        if lo is None:
            it.seek_to_first()
        else:
            it.seek(lo)
        while it.valid():
            yield it.key(), it.value()
            it.next()
        _check_iterator(it)

    def dump_items(self) -> list[tuple[bytes, bytes]]:
        """Every (key, value) in the directory, in key order (for comparing projections)."""
        return list(self._raw_items())

    def content_digest(self) -> str:
        """SHA-256 over every key/value in key order: equal iff the contents are byte-identical."""
        h = hashlib.sha256()
        for key, value in self._raw_items():
            h.update(len(key).to_bytes(4, "big"))
            h.update(key)
            h.update(len(value).to_bytes(4, "big"))
            h.update(value)
        return h.hexdigest()

    def meta(self) -> dict[str, Any]:
        """The meta keys, decoded (format version, applied offset/ts, catalog, counts)."""
        return {
            "format_version": FORMAT_VERSION,
            "applied_offset": self._applied_offset,
            "applied_ts": self._applied_ts,
            "indexes": self.indexes,
            "counts": dict(self._counts),
        }

    # --- lifecycle ------------------------------------------------------------------

    def flush(self) -> None:
        """Persist the memtable to SST files (everything applied so far survives a crash)."""
        self._db_open().flush(True)

    def checkpoint(self, dest_dir: str | os.PathLike[str]) -> None:
        """Write a consistent copy of the projection (a RocksDB checkpoint) to `dest_dir`.

        `dest_dir` must not exist. The copy carries its applied offset in its
        meta keys and opens as a normal `Projection`.
        """
        db = self._db_open()
        db.flush(True)
        Checkpoint(db).create_checkpoint(os.fspath(dest_dir))

    def snapshot_search(self, dest_dir: str | os.PathLike[str]) -> SearchSnapshot:
        """Queue a copy of the search indexes as of the applied offset into `dest_dir`/search (a checkpoint's
        projection directory); call it right after `checkpoint`, where no apply interleaves, and `wait()`
        on the result (off the event loop: the worker commits and hard-links the files)."""
        self._db_open()
        return self._search.request_snapshot(os.path.join(os.fspath(dest_dir), SEARCH_DIR), self._applied_offset)

    def close(self) -> None:
        """Flush and close; further calls raise `ProjectionError` (closing twice is fine)."""
        db = self._db
        if db is None:
            return
        search = getattr(self, "_search", None)
        if search is not None:
            search.close()
        self._db = None
        db.flush(True)
        db.close()

    def __enter__(self) -> "Projection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Projection({self.path!r}, applied_offset={self._applied_offset})"


_consume = deque(maxlen=0).extend  # run an iterator to its end (at C speed)
_ABSENT = object()
_SAME_KEYS: Any = object()  # `_flatten` → `_build`: `Write.same_index_keys` (the document's new state is all that changes)
_SEEN_MASK = (1 << 24) - 1  # `Projection._seen`: one byte per slot of hash(doc key) & mask
_SEEN_MAX = 1 << 22  # documents in the projection beyond which the filter says "maybe" too often


def _index_order(t: "_TableOps") -> bytes:
    """Sorts tables as their index entries do (a table's entries all start with the same table prefix)."""
    return t.ti.by_id


class _TableOps:
    """One table's pending index operations in a batch, over all its indexes (whose keys share a prefix).

    `_finish` writes the deletes first, then the puts: the last operation on a
    key wins, as a delete takes its key out of `ops` and a put leaves `gone` as it is.
    """

    __slots__ = ("ti", "doc_keys", "key_changes", "ops", "gone", "delta")

    def __init__(self, ti: TableIndexes) -> None:
        self.ti = ti
        self.doc_keys = ti.doc_keys
        self.key_changes = ti.key_changes
        self.ops: dict[bytes, bytes] = {}  # index key -> document id, to write
        self.gone: set[bytes] = set()  # index keys to delete (unless also in `ops`)
        self.delta = 0  # documents added minus documents removed


def _walk(it: Any, ro: ReadOptions) -> Iterator[tuple[bytes, str]]:
    # `ro` is only held: it owns the iterator's upper bound.
    valid = it.valid
    key = it.key
    value = it.value
    step = it.next
    while valid():
        yield key(), value().decode()
        step()
    _check_iterator(it)


def _walk_back(it: Any, lo: bytes, ro: ReadOptions) -> Iterator[tuple[bytes, str]]:
    # `ro` is only held: it owns the iterator's upper bound.
    valid = it.valid
    key = it.key
    value = it.value
    step = it.prev
    while valid():
        k = key()
        if k < lo:
            return
        yield k, value().decode()
        step()
    _check_iterator(it)


def _check_iterator(it: Any) -> None:
    """RocksDB ends an iteration quietly at a damaged block; turn that into a loud error."""
    try:
        it.status()
    except Exception as exc:
        raise ProjectionError(
            f"the projection is damaged ({exc}); it is rebuildable from the log: "
            "tape doctor --data DATA_DIR --rebuild-projection") from None
