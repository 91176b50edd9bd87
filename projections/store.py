"""`Projection`: the materialized state (documents + indexes) in one RocksDB directory.

The projection is a pure function of the commit log: `apply` folds records into
it in offset order, and the offset/ts of the last applied record are stored in
the *same* WriteBatch as the record's effects, so the directory always holds a
state "after record N" for some N. See `projections.layout` for the key layout.

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

import functools
import hashlib
import os
from collections import deque
from itertools import compress, repeat
from operator import is_not, not_
from typing import Any, Iterable, Iterator, Mapping

import orjson
from rocksdict import BlockBasedOptions, Checkpoint, Options, ReadOptions, Rdict, WriteBatch, WriteOptions

from values import decode_doc, table_of
from log.codec import FlatWrite
from log.record import Record

from .errors import ProjectionError, ProjectionFormatError
from .index_catalog import Catalog, TableIndexes, normalize_catalog
from .index_catalog import tail as _tail
from .prepare import PreparedWrite, WritePreparer, doc_keys, id_key
from .keys import FLOAT_POS_HEAD as _FLOAT_POS
from .keys import ID_KEY_FORMAT as _ID_KEY
from .keys import STRING_KEYS as _STRING_KEYS
from .keys import STRING_KEYS_MAX as _STRING_KEYS_MAX
from .keys import (
    _ENCODERS,
    _pack_d,
    UNDEFINED,
    _NUL,
    _NUL_ESC,
    _P_STRING,
    _STR_END,
    encode_float_key,
    encode_string_key,
    encode_value_key,
    prefix_successor,
)
from .layout import (
    BY_ID,
    DOC,
    DOC_RANGE,
    FORMAT_VERSION,
    META,
    META_APPLIED_OFFSET,
    META_APPLIED_TS,
    META_CATALOG,
    META_COUNT,
    META_FORMAT,
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
        self, path: str | os.PathLike[str], indexes: Mapping[str, Mapping[str, list[str]]] | None = None
    ) -> None:
        self.path = os.fspath(path)
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
        if indexes is not None and normalize_catalog(indexes) != self._catalog:
            self.set_indexes(indexes)

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
    def indexes(self) -> Catalog:
        """A copy of the current user index catalog."""
        return {t: {n: list(f) for n, f in per.items()} for t, per in self._catalog.items()}

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

    def write_preparer(self) -> WritePreparer:
        """A `WritePreparer` for this projection's index catalog (see `apply_prepared`)."""
        return WritePreparer(self._catalog, self.path)

    def apply_prepared(self, writes: list[PreparedWrite], last_offset: int, last_ts: int) -> None:
        """`apply_writes` for writes a `write_preparer()` has already computed the index keys of.

        The same catalog must be in place: `set_indexes` in between makes the keys stale.
        """
        base = self._applied_offset
        if last_offset <= base:
            return
        if writes and writes[0][0] <= base:
            writes = [w for w in writes if w[0] > base]
        batch, counts = self._build_prepared(writes, last_offset, last_ts)
        self._commit(batch, counts, last_offset, last_ts)

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
        self._commit(batch, counts, last_off, last_ts)

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

        Operations are collected per key space (documents, each index), then
        added in key order: RocksDB inserts sorted keys into its memtable
        several times faster than scattered ones.
        """
        db = self._db_open()
        db_get = db.get
        encoders = _ENCODERS  # decoded documents hold only Convex types, all of which have an encoder
        loads = _json_loads
        tables = self._tables
        absent = _ABSENT
        docs: dict[bytes, bytes | None] = {}  # doc key -> new document (None: deleted)
        docs_get = docs.get
        per_table: dict[str, _TableOps] = {}
        doc_dels = False  # whether `docs` holds a delete
        pack_d = _pack_d
        float_pos = _FLOAT_POS
        seen = self._seen
        seen_mask = _SEEN_MASK
        str_keys = _STRING_KEYS
        if len(str_keys) > _STRING_KEYS_MAX:
            str_keys.clear()
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
                    ids, by_id, cts, by_ct, simple = t.ids, t.by_id, t.cts, t.by_ct, t.simple
                    last_table = table
                dkey = DOC + idb
                if old_raw is None:
                    old_raw = docs_get(dkey, absent)
                    if old_raw is absent:
                        old_raw = db_get(dkey) if seen is None or seen[hash(dkey) & seen_mask] else None
                docs[dkey] = new_raw
                idk = _ID_KEY % idb if 0 not in idb else _P_STRING + idb.replace(_NUL, _NUL_ESC) + _STR_END
                if new_raw is not None:
                    new_doc = decode_doc(new_raw) if 36 in new_raw else loads(new_raw)
                    ct = new_doc.get("_creationTime", UNDEFINED)
                    if type(ct) is float and ct > 0.0:  # encode_float_key, inlined for the usual case
                        raw = pack_d(ct)
                        new_tail = float_pos[raw[0]] + raw[1:] + idk
                    else:
                        new_tail = encode_value_key(ct) + idk
                    if old_raw is None:
                        ids[by_id + idk] = idb
                        cts[by_ct + new_tail] = idb
                        if simple is not None:
                            get = new_doc.get
                            for prefix, field, ops in simple:
                                v = get(field, UNDEFINED)
                                if type(v) is str:
                                    ops[prefix + str_keys[v] + new_tail] = idb
                                else:
                                    ops[prefix + encoders[type(v)](v) + new_tail] = idb
                        elif t.user:
                            for key, ops in zip(t.ti.user_keys(new_doc, new_tail), t.user):
                                ops[key] = idb
                        t.delta += 1
                        if seen is not None:
                            seen[hash(dkey) & seen_mask] = 1
                        continue
                    old_doc = decode_doc(old_raw) if 36 in old_raw else loads(old_raw)
                    old_ct = old_doc.get("_creationTime", UNDEFINED)
                    if old_ct == ct and type(old_ct) is float and type(ct) is float and ct != 0.0:
                        old_tail = new_tail  # the usual case: _creationTime never changes
                    else:
                        if type(old_ct) is float:
                            old_tail = encode_float_key(old_ct) + idk
                        else:
                            old_tail = encode_value_key(old_ct) + idk
                        if old_tail != new_tail:
                            cts[by_ct + old_tail] = None
                            cts[by_ct + new_tail] = idb
                            t.ct_dels = True
                    if simple is not None:
                        get = new_doc.get
                        old_get = old_doc.get
                        for prefix, field, ops in simple:
                            v = get(field, UNDEFINED)
                            old_v = old_get(field, UNDEFINED)
                            if old_tail is new_tail and (
                                v is old_v or (type(v) is type(old_v) and type(v) in _EXACT_EQ and v == old_v)
                            ):
                                continue  # same field value (hence same key)
                            new_key = prefix + (str_keys[v] if type(v) is str else encoders[type(v)](v)) + new_tail
                            old_key = prefix + (
                                str_keys[old_v] if type(old_v) is str else encoders[type(old_v)](old_v)) + old_tail
                            if old_key != new_key:
                                ops[old_key] = None
                                ops[new_key] = idb
                                t.user_dels = True
                    elif t.user:
                        pairs = zip(t.ti.user_keys(old_doc, old_tail), t.ti.user_keys(new_doc, new_tail), t.user)
                        for old_key, new_key, ops in pairs:
                            if old_key != new_key:
                                ops[old_key] = None
                                ops[new_key] = idb
                                t.user_dels = True
                else:
                    doc_dels = True
                    if old_raw is not None:
                        old_doc = decode_doc(old_raw) if 36 in old_raw else loads(old_raw)
                        old_tail = _tail(old_doc, idk)
                        ids[by_id + idk] = None
                        cts[by_ct + old_tail] = None
                        for key, ops in zip(t.ti.user_keys(old_doc, old_tail), t.user):
                            ops[key] = None
                        t.delta -= 1
                        t.id_dels = t.ct_dels = t.user_dels = True
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
        # (prefix, operations, whether any is a delete), in key order
        spaces = [(META, meta, True), (DOC, docs, doc_dels)]
        for t in per_table.values():
            prefixes = t.ti.prefixes
            spaces.append((prefixes[0], t.ids, t.id_dels))
            spaces.append((prefixes[1], t.cts, t.ct_dels))
            spaces.extend([(prefix, ops, t.user_dels) for prefix, ops in zip(prefixes[2:], t.user)])
        spaces.sort(key=_first)
        wb = WriteBatch(raw_mode=True)
        put = wb.put
        delete = wb.delete
        for _prefix, ops, dels in spaces:
            if not ops:
                continue
            keys = sorted(ops)
            if not dels:
                _consume(map(put, keys, map(ops.__getitem__, keys)))
                continue
            values = list(map(ops.__getitem__, keys))
            live = list(map(is_not, values, repeat(None)))
            _consume(map(put, compress(keys, live), compress(values, live)))
            _consume(map(delete, compress(keys, map(not_, live))))
        return wb, counts

    def _build_prepared(
        self, writes: list[PreparedWrite], last_off: int, last_ts: int
    ) -> tuple[WriteBatch, dict[str, int]]:
        """`_build` for prepared writes: only what depends on the projection's state is left to do."""
        db_get = self._db_open().get
        tables = self._tables
        absent = _ABSENT
        docs: dict[bytes, bytes | None] = {}  # doc key -> new document (None: deleted)
        docs_get = docs.get
        per_table: dict[str, _TableOps] = {}
        doc_dels = False  # whether `docs` holds a delete
        seen = self._seen
        seen_mask = _SEEN_MASK
        off = table = idb = last_table = None
        try:
            for off, table, idb, new_raw, new_keys, old_raw in writes:
                if table is not last_table:
                    t = per_table.get(table)
                    if t is None:
                        t = per_table[table] = _TableOps(tables.get(table) or self._table(table))
                    ids, by_id, cts, user_ix = t.ids, t.by_id, t.cts, t.user_ix
                    last_table = table
                dkey = DOC + idb
                if old_raw is None:  # no prev: the document is new, unless the batch or the store holds it
                    old_raw = docs_get(dkey, absent)
                    if old_raw is absent:
                        old_raw = db_get(dkey) if seen is None or seen[hash(dkey) & seen_mask] else None
                old_keys = None if old_raw is None else doc_keys(t.ti, old_raw, idb, id_key(idb))
                docs[dkey] = new_raw
                if new_raw is not None:
                    if old_keys is None:  # a new document
                        ids[by_id + (_ID_KEY % idb if 0 not in idb else id_key(idb))] = idb
                        cts[new_keys[0]] = idb
                        for i, ops in user_ix:
                            ops[new_keys[i]] = idb
                        t.delta += 1
                        if seen is not None:
                            seen[hash(dkey) & seen_mask] = 1
                        continue
                    old_key = old_keys[0]
                    new_key = new_keys[0]
                    if old_key != new_key:
                        cts[old_key] = None
                        cts[new_key] = idb
                        t.ct_dels = True
                    for i, ops in user_ix:
                        old_key = old_keys[i]
                        new_key = new_keys[i]
                        if old_key != new_key:
                            ops[old_key] = None
                            ops[new_key] = idb
                            t.user_dels = True
                else:
                    doc_dels = True
                    if old_keys is not None:
                        ids[by_id + id_key(idb)] = None
                        cts[old_keys[0]] = None
                        for i, ops in user_ix:
                            ops[old_keys[i]] = None
                        t.delta -= 1
                        t.id_dels = t.ct_dels = t.user_dels = True
        except Exception as exc:
            where = "" if idb is None else f" ({table} {idb.decode(errors='replace')})"
            raise ProjectionError(f"{self.path}: cannot apply record {off}{where}: {exc}") from exc
        return self._finish(per_table, docs, doc_dels, last_off, last_ts)

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

    def set_indexes(self, indexes: Mapping[str, Mapping[str, list[str]]]) -> None:
        """Install a new user index catalog.

        Entries of removed (or redefined) indexes are deleted, added ones are
        backfilled from the stored documents, and the catalog is stored — all
        in one atomic write.
        """
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
                doc = decode_doc(raw)
                idb = doc_id.encode()
                for key in ti.user_keys(doc, _tail(doc, encode_string_key(doc_id))):
                    wb.put(key, idb)
        wb.put(META_CATALOG, orjson.dumps(new, option=orjson.OPT_SORT_KEYS))
        db.write(wb, self._wo)
        self._catalog = new
        self._tables = {}

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
            return index_prefix(table, BY_ID) + encode_string_key(doc_id)
        key = _doc_key_from_id(doc_id)
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

    def close(self) -> None:
        """Flush and close; further calls raise `ProjectionError` (closing twice is fine)."""
        db = self._db
        if db is None:
            return
        self._db = None
        db.flush(True)
        db.close()

    def __enter__(self) -> "Projection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Projection({self.path!r}, applied_offset={self._applied_offset})"


_json_loads = orjson.loads
_consume = deque(maxlen=0).extend  # run an iterator to its end (at C speed)
_ABSENT = object()
_SAME_KEYS: Any = object()  # `_flatten` → `_build`: `Write.same_index_keys` (the document's new state is all that changes)


_SEEN_MASK = (1 << 24) - 1  # `Projection._seen`: one byte per slot of hash(doc key) & mask
_SEEN_MAX = 1 << 22  # documents in the projection beyond which the filter says "maybe" too often

# Types whose == implies identical key encodings (unlike float: -0.0 == 0.0, or list: [1] == [1.0]).
_EXACT_EQ = frozenset({str, int, bool, type(None)})


@functools.lru_cache(maxsize=1 << 16)
def _doc_key_from_id(doc_id: str) -> bytes | None:
    """`Projection.doc_key` for a Tape id (decoding the table out of an id is slow-ish: cached)."""
    table = table_of(doc_id)
    return None if table is None else index_prefix(table, BY_ID) + encode_string_key(doc_id)


def _first(pair: tuple[bytes, Any]) -> bytes:
    return pair[0]


class _TableOps:
    """One table's pending index operations in a batch: key -> id bytes (None: delete), per index."""

    __slots__ = ("ti", "by_id", "by_ct", "ids", "cts", "user", "user_ix", "simple", "delta",
                 "id_dels", "ct_dels", "user_dels")

    def __init__(self, ti: TableIndexes) -> None:
        self.ti = ti
        self.by_id = ti.by_id
        self.by_ct = ti.by_ct
        self.ids: dict[bytes, bytes | None] = {}
        self.cts: dict[bytes, bytes | None] = {}
        self.user: list[dict[bytes, bytes | None]] = [{} for _ in ti.user]
        self.user_ix = tuple(enumerate(self.user, 1))  # (position in a `DocKeys`, operations) per user index
        self.simple = None if ti.simple is None else tuple(
            (prefix, field, ops) for (prefix, field), ops in zip(ti.simple, self.user)
        )
        self.delta = 0  # documents added minus documents removed
        # whether any operation on by_id, by_creation_time, the user indexes is a delete
        self.id_dels = self.ct_dels = self.user_dels = False


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
