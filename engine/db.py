"""`ctx.db`: document reads and writes with read-set capture, and the query builder."""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, Iterator

from engine.cursors import DEFAULT_SEALER, CursorSealer
from engine.preempt import guard_state as preempt_guard
from engine.errors import ArgumentError, EngineError, LimitExceeded, ReadOnlyError
from engine.limits import Limits
from engine.overlay import Overlay
from engine.readset import ReadSet, key_successor
from engine.scan_cache import ScanCache
from engine.schema import Schema, schema_error
from engine.validators import ValidationError
from projections.keys import encode_value_key, prefix_successor
from projections.layout import index_prefix
from projections.search import SearchIndexBuilding
from projections.search_terms import MAX_RESULTS, SearchQuery, bm25, query_search_ranges, search_prefix
from projections.types import DocumentReader
from storage import STORAGE_TABLE
from values import MAX_DOC_DEPTH, ConvexValueError, check_document, check_value, decode_doc, encode_doc, new_id, table_of
from values.model import identifier_problem


class _Delete:
    """Sentinel: `ctx.db.patch(id, {"field": DELETE})` removes the field."""

    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()
_LOAD: Any = object()  # `_write`: read the document's current encoding itself
_NO_FIELDS: frozenset[str] = frozenset()
_MISSING: Any = object()

SCHEDULED_FUNCTIONS = "_scheduled_functions"
STORAGE = STORAGE_TABLE  # `_storage`: stored files (engine.storage)
READABLE_SYSTEM_TABLES: frozenset[str] = frozenset({SCHEDULED_FUNCTIONS, STORAGE})
"""System tables app code may read, through `ctx.db.system` only (never `_requests`)."""


def is_system_table(table: str) -> bool:
    """Whether `table` is a system table (its name starts with "_")."""
    return table.startswith("_")


class IndexRange:
    """Builds an index range: `q.eq("a", 1).gte("b", 2).lt("b", 5)`, fields in index order."""

    def __init__(self, fields: list[str], index: str) -> None:
        self._fields = fields
        self._index = index
        self.eq_values: list[Any] = []
        self.lower: tuple[Any, bool] | None = None
        self.upper: tuple[Any, bool] | None = None

    def _next_field(self, name: str, op: str) -> None:
        position = len(self.eq_values)
        if self.lower is not None or self.upper is not None:
            bound_field = self._fields[position] if position < len(self._fields) else None
            if op != "eq" and name == bound_field:
                return
            raise ArgumentError(f"index {self._index!r}: {op}({name!r}) after a range bound; eq() must come first")
        if position >= len(self._fields) or self._fields[position] != name:
            expected = self._fields[position] if position < len(self._fields) else "nothing more"
            raise ArgumentError(f"index {self._index!r} fields are {self._fields}: expected {expected!r} next, got {name!r}")

    def eq(self, name: str, value: Any) -> "IndexRange":
        self._next_field(name, "eq")
        self.eq_values.append(value)
        return self

    def _bound(self, name: str, value: Any, op: str, lower: bool, inclusive: bool) -> "IndexRange":
        self._next_field(name, op)
        if lower:
            if self.lower is not None:
                raise ArgumentError(f"index {self._index!r}: two lower bounds on {name!r}")
            self.lower = (value, inclusive)
        else:
            if self.upper is not None:
                raise ArgumentError(f"index {self._index!r}: two upper bounds on {name!r}")
            self.upper = (value, inclusive)
        return self

    def gt(self, name: str, value: Any) -> "IndexRange":
        return self._bound(name, value, "gt", True, False)

    def gte(self, name: str, value: Any) -> "IndexRange":
        return self._bound(name, value, "gte", True, True)

    def lt(self, name: str, value: Any) -> "IndexRange":
        return self._bound(name, value, "lt", False, False)

    def lte(self, name: str, value: Any) -> "IndexRange":
        return self._bound(name, value, "lte", False, True)


class Transaction:
    """State shared by one function execution: read set, limits, deadline and pending writes."""

    def __init__(self, projection: DocumentReader, schema: Schema, limits: Limits, overlay: Overlay | None,
                 writable: bool, clock: Callable[[], float] | None = None, batch: int = 0,
                 loaded: dict[str, bytes | None] | None = None, scans: ScanCache | None = None,
                 changed_tables: set[str] | None = None, cursors: CursorSealer | None = None,
                 journal: str | None = None) -> None:
        self.projection = projection
        self.schema = schema
        self.limits = limits
        self.overlay = overlay if overlay is not None else Overlay()
        self.writable = writable
        self.batch = batch
        self.read_set = ReadSet()
        self.reads = 0
        self.deadline = time.monotonic() + limits.max_seconds
        # id -> (table, encoded doc before this transaction) for every doc it wrote
        self.touched: dict[str, tuple[str, bytes | None]] = {}
        self._clock = clock or time.time
        # projection reads by id: this execution's own, or a cache the caller keeps in step with the projection
        self._loaded: dict[str, bytes | None] = {} if loaded is None else loaded
        self._scans = scans  # the writer's cache of small index scans (see engine.scan_cache)
        # tables in which this execution changed some index key (inserts, deletes, indexed fields)
        self.changed_tables: set[str] = set() if changed_tables is None else changed_tables
        self.cursors = cursors if cursors is not None else DEFAULT_SEALER  # seals pagination cursors
        # Query journal (see engine.pagination docs in docs/protocol.md): the end cursor the first
        # paginate() of this execution keeps from an earlier run, and the one this run leaves.
        self.journal_in = journal
        self.journal_out: str | None = None
        self.journal_taken = False

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise LimitExceeded(f"function ran longer than {self.limits.max_seconds:g}s")

    def count_read(self, n: int = 1) -> None:
        self.reads += n
        if self.reads > self.limits.max_reads:
            raise LimitExceeded(f"transaction read more than {self.limits.max_reads} documents")

    def load(self, doc_id: str) -> bytes | None:
        """Current encoded document (overlay first, then projection), without read-set bookkeeping.

        Projection reads are remembered in `loaded` (the projection does not
        change while a function runs; a shared cache is updated by its owner).
        """
        entry = self.overlay.get(doc_id)
        if entry is not None:
            return entry.doc
        seen = self._loaded
        raw = seen.get(doc_id, _MISSING)
        if raw is _MISSING:
            raw = seen[doc_id] = self.projection.get(doc_id)
        return raw

    def scan(self, lo: bytes, hi: bytes, reverse: bool, table: str) -> Iterator[tuple[bytes, str]]:
        """(index key, document id) in [lo, hi) of `table`'s indexes: the projection's, overlaid."""
        if self._scans is not None:
            base = self._scans.scan(self.projection, table, lo, hi, reverse)
        else:
            base = self.projection.scan(lo, hi, reverse)
        return self.overlay.merge_scan(base, lo, hi, reverse, table)


class DatabaseReader:
    """The read-only `ctx.db` of queries (and the read half of mutations)."""

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    @staticmethod
    def _check_id(doc_id: Any, system: bool = False) -> str:
        """The table of `doc_id`; system tables only when `system` (and then only readable ones)."""
        table = table_of(doc_id)
        if table is None:
            raise ArgumentError(f"invalid document id {doc_id!r}")
        if is_system_table(table) != system or (system and table not in READABLE_SYSTEM_TABLES):
            where = "ctx.db.system" if system else "ctx.db"
            raise ArgumentError(f"{where} cannot reach table {table!r} (system tables are read through "
                                f"ctx.db.system: {', '.join(sorted(READABLE_SYSTEM_TABLES))})")
        return table

    def _read(self, doc_id: Any, system: bool = False) -> tuple[str, bytes | None]:
        """(table, encoded document or None) for `doc_id`, counted and added to the read set."""
        table = self._check_id(doc_id, system)
        tx = self._tx
        tx.tick()
        tx.count_read()
        tx.read_set.add_point(tx.projection.doc_key(doc_id))  # the table is the id's: a cached key
        return table, tx.load(doc_id)

    async def get(self, doc_id: str) -> dict[str, Any] | None:
        """The document with this id, or None."""
        raw = self._read(doc_id)[1]
        return decode_doc(raw) if raw is not None else None

    def query(self, table: str) -> "QueryBuilder":
        """Start a query over `table` (default order: by creation time, ascending)."""
        if not isinstance(table, str) or not table:
            raise ArgumentError(f"table name must be a non-empty string, got {table!r}")
        if is_system_table(table):
            raise ArgumentError(f"ctx.db cannot reach system table {table!r}; read it through ctx.db.system")
        return QueryBuilder(self._tx, table)

    @property
    def system(self) -> "SystemReader":
        """`ctx.db.system`: read-only access to the readable system tables (`_scheduled_functions`, `_storage`)."""
        return SystemReader(self._tx)

    def normalize_id(self, table: str, doc_id: Any) -> str | None:
        """`doc_id` if it is an id of `table`, else None."""
        return doc_id if table_of(doc_id) == table else None

    async def insert(self, table: str, doc: dict[str, Any]) -> str:
        raise ReadOnlyError("queries cannot write: ctx.db.insert is only available in mutations")

    async def patch(self, doc_id: str, fields: dict[str, Any]) -> None:
        raise ReadOnlyError("queries cannot write: ctx.db.patch is only available in mutations")

    async def replace(self, doc_id: str, doc: dict[str, Any]) -> None:
        raise ReadOnlyError("queries cannot write: ctx.db.replace is only available in mutations")

    async def delete(self, doc_id: str) -> None:
        raise ReadOnlyError("queries cannot write: ctx.db.delete is only available in mutations")


class SystemReader:
    """`ctx.db.system`: `get` and `query` over the readable system tables, recorded in the read set."""

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    async def get(self, doc_id: str) -> dict[str, Any] | None:
        """The system document with this id, or None."""
        raw = DatabaseReader(self._tx)._read(doc_id, system=True)[1]
        return decode_doc(raw) if raw is not None else None

    def query(self, table: str) -> "QueryBuilder":
        """Start a query over a readable system table."""
        if table not in READABLE_SYSTEM_TABLES:
            raise ArgumentError(f"ctx.db.system cannot reach table {table!r} "
                                f"(readable: {', '.join(sorted(READABLE_SYSTEM_TABLES))})")
        return QueryBuilder(self._tx, table)


class DatabaseWriter(DatabaseReader):
    """The `ctx.db` of mutations: reads plus insert/patch/replace/delete."""

    def __init__(self, tx: Transaction, creation_clock: Callable[[], float]) -> None:
        super().__init__(tx)
        self._creation_clock = creation_clock

    def _validated(self, table: str, doc: dict[str, Any], what: str) -> bytes:
        tx = self._tx
        if type(doc) is not dict:
            raise ArgumentError(f"{what}: document must be a dict, got {type(doc).__name__}")
        definition = tx.schema.table(table)
        if definition is not None:
            doc = definition.validate(table, doc)
        else:
            tx.schema.check_table_allowed(table)
        try:
            check_document(doc, f"{table} document")
        except ConvexValueError as exc:
            raise ArgumentError(str(exc)) from None
        raw = encode_doc(doc)
        if len(raw) > tx.limits.max_doc_bytes:
            raise LimitExceeded(f"{what}: document is {len(raw)} bytes, over the {tx.limits.max_doc_bytes} byte limit")
        return raw

    def _write(self, doc_id: str, table: str, raw: bytes | None, doc: dict[str, Any] | None,
               current: Any = _LOAD, keys_unchanged: bool = False) -> None:
        """Stage a write; `current` is the document's encoding before it, when the caller has it.

        `keys_unchanged` says the write leaves every index key of the document as it was.
        """
        tx = self._tx
        if doc_id not in tx.touched:
            if len(tx.touched) >= tx.limits.max_writes:
                raise LimitExceeded(f"transaction wrote more than {tx.limits.max_writes} documents")
            tx.touched[doc_id] = (table, tx.load(doc_id) if current is _LOAD else current)
        if keys_unchanged:
            keys = None
        else:
            keys = tx.projection.index_keys(table, doc) if doc is not None else []
            tx.changed_tables.add(table)
        guard = preempt_guard()  # a preemption must not land halfway through the overlay's update
        guard.critical += 1
        try:
            tx.overlay.put(doc_id, table, raw, keys, tx.batch)
        finally:
            guard.critical -= 1

    def system_insert(self, table: str, fields: dict[str, Any]) -> str:
        """Engine use only: insert a system document (no schema; the engine builds the fields)."""
        self._require_writable()
        doc_id = new_id(table)
        full = dict(fields)
        full["_id"] = doc_id
        full["_creationTime"] = self._creation_clock()
        self._write(doc_id, table, encode_doc(full), full)
        return doc_id

    def system_load(self, doc_id: str) -> dict[str, Any] | None:
        """Engine use only: a readable system document as this transaction sees it (read-set tracked)."""
        raw = self._read(doc_id, system=True)[1]
        return decode_doc(raw) if raw is not None else None

    def system_replace(self, doc_id: str, doc: dict[str, Any], before: Any = _LOAD) -> None:
        """Engine use only: replace a system document (same `_id` and `_creationTime`, so the same index keys).

        `before` is the document's current encoding when the caller already read it.
        """
        self._require_writable()
        table = self._check_id(doc_id, system=True)
        self._write(doc_id, table, encode_doc(doc), doc, before, keys_unchanged=True)

    def system_delete(self, doc_id: str) -> bool:
        """Engine use only: delete a readable system document; False if it does not exist."""
        self._require_writable()
        table, raw = self._read(doc_id, system=True)
        if raw is None:
            return False
        self._write(doc_id, table, None, None, raw)
        return True

    def _require_writable(self) -> None:
        if not self._tx.writable:
            raise ReadOnlyError("queries cannot write")

    async def insert(self, table: str, doc: dict[str, Any]) -> str:
        """Insert a document; returns its new id."""
        self._require_writable()
        if not isinstance(table, str) or not table or table.startswith("_"):
            raise ArgumentError(f"invalid table name {table!r}")
        if type(doc) is not dict:
            raise ArgumentError(f"insert into {table!r}: document must be a dict, got {type(doc).__name__}")
        for key in doc:
            if isinstance(key, str) and key.startswith("_"):
                raise ArgumentError(f"insert into {table!r}: field {key!r} is reserved (system fields start with '_')")
        self._tx.tick()
        doc_id = new_id(table)
        full = dict(doc)
        full["_id"] = doc_id
        full["_creationTime"] = self._creation_clock()
        raw = self._validated(table, full, f"insert into {table!r}")
        self._write(doc_id, table, raw, full)
        return doc_id

    def _existing(self, doc_id: str, op: str) -> tuple[str, dict[str, Any], bytes]:
        """(table, decoded document, its encoding) of a document that must exist."""
        table, raw = self._read(doc_id)
        if raw is None:
            raise ArgumentError(f"{op}: document {doc_id!r} does not exist")
        return table, decode_doc(raw), raw

    async def patch(self, doc_id: str, fields: dict[str, Any]) -> None:
        """Shallow-merge `fields` into the document; a value of `DELETE` removes that field."""
        self._require_writable()
        if type(fields) is not dict:
            raise ArgumentError(f"patch: fields must be a dict, got {type(fields).__name__}")
        table, current, before = self._existing(doc_id, "patch")
        tx = self._tx
        definition = tx.schema.table(table)
        field_validators = getattr(definition.validator, "fields", None) if definition is not None else None
        for key, value in fields.items():
            if key in ("_id", "_creationTime"):
                if value != current[key]:
                    raise ArgumentError(f"patch: system field {key!r} cannot be changed")
                continue
            if type(key) is not str or key.startswith(("$", "_")) or identifier_problem(key) is not None:
                why = identifier_problem(key) if type(key) is str and not key.startswith(("$", "_")) else \
                    "top-level fields starting with '_' or '$' are reserved"
                raise ArgumentError(f"patch of {doc_id!r}: invalid field name {key!r}: {why}")
            if value is DELETE:
                if field_validators is not None and key in field_validators and not field_validators[key].optional:
                    raise ArgumentError(f"patch of {doc_id!r}: {table} document.{key} is required and cannot be removed")
                current.pop(key, None)
                continue
            if field_validators is not None:
                validator = field_validators.get(key)
                if validator is None:
                    raise ArgumentError(f"patch of {doc_id!r}: {table} document: unexpected field {key!r} "
                                        f"(allowed: {', '.join(field_validators)})")
                try:
                    value = validator.check(value, f".{key}")
                except ValidationError as exc:
                    raise schema_error(table, exc) from None
            try:
                check_value(value, f"{table} document.{key}", 1, MAX_DOC_DEPTH)
            except ConvexValueError as exc:
                raise ArgumentError(str(exc)) from None
            current[key] = value
        if field_validators is None and definition is not None and definition.validator is not None:
            raw = self._validated(table, current, f"patch of {doc_id!r}")
        else:
            if definition is None:
                tx.schema.check_table_allowed(table)
            raw = encode_doc(current)
            if len(raw) > tx.limits.max_doc_bytes:
                raise LimitExceeded(f"patch of {doc_id!r}: document is {len(raw)} bytes, over the "
                                    f"{tx.limits.max_doc_bytes} byte limit")
        indexed = definition.indexed_fields if definition is not None else _NO_FIELDS
        self._write(doc_id, table, raw, current, before, keys_unchanged=indexed.isdisjoint(fields))

    async def replace(self, doc_id: str, doc: dict[str, Any]) -> None:
        """Replace the whole document (system fields are kept)."""
        self._require_writable()
        if type(doc) is not dict:
            raise ArgumentError(f"replace: document must be a dict, got {type(doc).__name__}")
        table, current, before = self._existing(doc_id, "replace")
        full = {k: v for k, v in doc.items() if k not in ("_id", "_creationTime")}
        full["_id"] = doc_id
        full["_creationTime"] = current["_creationTime"]
        raw = self._validated(table, full, f"replace of {doc_id!r}")
        self._write(doc_id, table, raw, full, before)

    async def delete(self, doc_id: str) -> None:
        """Delete the document."""
        self._require_writable()
        table, _, before = self._existing(doc_id, "delete")
        self._write(doc_id, table, None, None, before)


@functools.lru_cache(maxsize=1 << 14)
def _eq_string_range(table: str, index: str, value: str) -> tuple[bytes, bytes]:
    """`index_range(table, index, [value])` for a string (the index is known to the schema), cached.

    Key encoding is pure, so the cache is keyed by the names and the value alone: its keys and results
    hold only str and bytes, which the collector stops tracking (a key holding the projection object
    stayed tracked: 16,000 live entries in every collection).
    """
    lo = index_prefix(table, index) + encode_value_key(value)
    return lo, prefix_successor(lo)


class _Results:
    """`first`, `unique` and async iteration, from a builder's own `take` and `collect`."""

    _table: str
    _kind = "query"  # named in errors

    async def take(self, n: int) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def collect(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def first(self) -> dict[str, Any] | None:
        docs = await self.take(1)
        return docs[0] if docs else None

    async def unique(self) -> dict[str, Any] | None:
        docs = await self.take(2)
        if len(docs) > 1:
            raise EngineError(f"unique(): {self._kind} on {self._table!r} returned more than one document")
        return docs[0] if docs else None

    def __aiter__(self) -> Any:
        return self._aiter()

    async def _aiter(self) -> Any:
        for doc in await self.collect():
            yield doc


class QueryBuilder(_Results):
    """A lazy query: `with_index`, `order`, `filter`, then `take`/`first`/`unique`/`collect`/`paginate`."""

    def __init__(self, tx: Transaction, table: str) -> None:
        self._tx = tx
        self._table = table
        self._index = "by_creation_time"
        self._range: IndexRange | None = None
        self._desc = False
        self._filters: list[Callable[[dict[str, Any]], Any]] = []

    def with_index(self, name: str, range_fn: Callable[[IndexRange], IndexRange] | None = None) -> "QueryBuilder":
        """Read through index `name`, restricted by `range_fn(q)` built from eq/gt/gte/lt/lte."""
        fields = self._index_fields(name)
        self._index = name
        if range_fn is not None:
            builder = IndexRange(fields, name)
            result = range_fn(builder)
            self._range = result if isinstance(result, IndexRange) else builder
        return self

    def _index_fields(self, name: str) -> list[str]:
        if name == "by_creation_time":
            return ["_creationTime"]
        if name == "by_id":
            return ["_id"]
        definition = self._tx.schema.table(self._table)
        if definition is None or name not in definition.indexes:
            known = ["by_id", "by_creation_time"] + (list(definition.indexes) if definition else [])
            raise ArgumentError(f"table {self._table!r} has no index {name!r} (indexes: {', '.join(known)})")
        return definition.indexes[name]

    def with_search_index(self, name: str, search_fn: Callable[["SearchFilter"], "SearchFilter"]) -> "SearchQueryBuilder":
        """Full-text search through search index `name`: `q.search(field, text)` then `eq(filter_field, value)`s.

        Results come in relevance order (BM25; the last term also matches as a prefix), at most 1,024.
        """
        definition = self._tx.schema.table(self._table)
        spec = definition.search_indexes.get(name) if definition is not None else None
        if spec is None:
            known = list(definition.search_indexes) if definition is not None else []
            raise ArgumentError(f"table {self._table!r} has no search index {name!r} "
                                f"(search indexes: {', '.join(known) or 'none'})")
        if not callable(search_fn):
            raise ArgumentError(f"with_search_index({name!r}, ...): expected a function building the search")
        builder = SearchFilter(name, spec.search_field, spec.filter_fields)
        search_fn(builder)
        if builder.text is None:
            raise ArgumentError(f"search index {name!r}: the search needs q.search({spec.search_field!r}, text)")
        return SearchQueryBuilder(self._tx, self._table, name, SearchQuery.parse(builder.text, builder.filters),
                                  self._filters)

    def order(self, order: str) -> "QueryBuilder":
        if order not in ("asc", "desc"):
            raise ArgumentError(f"order must be 'asc' or 'desc', got {order!r}")
        self._desc = order == "desc"
        return self

    def filter(self, predicate: Callable[[dict[str, Any]], Any]) -> "QueryBuilder":
        """Keep documents for which `predicate(doc)` is truthy (scanned rows still count as read)."""
        self._filters.append(predicate)
        return self

    def _bounds(self) -> tuple[bytes, bytes]:
        r = self._range
        projection = self._tx.projection
        if r is None:
            return projection.index_range(self._table, self._index, [], None, None)
        eq = r.eq_values
        if r.lower is None and r.upper is None and len(eq) == 1 and type(eq[0]) is str:
            return _eq_string_range(self._table, self._index, eq[0])  # the usual lookup
        return projection.index_range(self._table, self._index, eq, r.lower, r.upper)

    def _walk(self, lo: bytes, hi: bytes, limit: int | None, full_lo: bytes, full_hi: bytes,
              keys: list[bytes] | None = None, max_scan: int | None = None,
              matched_keys: list[bytes] | None = None, max_bytes: int | None = None
              ) -> tuple[list[dict[str, Any]], bytes | None, bool]:
        """Scan, decode and filter up to `limit` matches; records the walked range in the read set.

        With `keys`, the index key of every scanned row is appended to it (with
        `matched_keys`, that of every returned document); with
        `max_scan` / `max_bytes`, the walk stops (not exhausted) after scanning that
        many rows / once the documents scanned hold that many bytes (encoded).
        Returns (documents, last key walked, exhausted)."""
        tx = self._tx
        out: list[dict[str, Any]] = []
        last: bytes | None = None
        exhausted = True
        filters = self._filters
        desc = self._desc
        max_reads = tx.limits.max_reads
        load = tx.load
        scanned = 0
        bytes_read = 0
        for key, doc_id in tx.scan(lo, hi, desc, self._table):
            if (max_scan is not None and scanned >= max_scan) or (max_bytes is not None and bytes_read >= max_bytes):
                exhausted = False
                break
            scanned += 1
            last = key
            if keys is not None:
                keys.append(key)
            tx.reads += 1
            if tx.reads > max_reads:
                tx.count_read(0)  # raises the limit error
            raw = load(doc_id)
            if raw is None:
                continue
            if max_bytes is not None:
                bytes_read += len(raw)
            doc = decode_doc(raw)
            if filters and not all(f(doc) for f in filters):
                continue
            out.append(doc)
            if matched_keys is not None:
                matched_keys.append(key)
            if limit is not None and len(out) >= limit:
                exhausted = False
                break
        tx.tick()
        bucket = tx.projection.index_prefix(self._table, self._index)
        if exhausted:
            tx.read_set.add(lo, hi, bucket)
        elif desc:
            tx.read_set.add(last, hi, bucket)  # type: ignore[arg-type]
        else:
            tx.read_set.add(lo, key_successor(last), bucket)  # type: ignore[arg-type]
        return out, last, exhausted

    async def take(self, n: int) -> list[dict[str, Any]]:
        if type(n) is not int or n < 0:
            raise ArgumentError(f"take(n): n must be a non-negative int, got {n!r}")
        if n == 0:
            return []
        lo, hi = self._bounds()
        return self._walk(lo, hi, n, lo, hi)[0]

    async def collect(self) -> list[dict[str, Any]]:
        lo, hi = self._bounds()
        return self._walk(lo, hi, None, lo, hi)[0]

    def collect_now(self) -> list[dict[str, Any]]:
        """`collect()` for engine code that cannot await (`ctx.env`): the same reads, read set and limits."""
        lo, hi = self._bounds()
        return self._walk(lo, hi, None, lo, hi)[0]

    def _cursor_scope(self, lo: bytes, hi: bytes) -> bytes:
        """What a cursor of this query is bound to: its index range and order (never sent to clients)."""
        return (b"d" if self._desc else b"a") + len(lo).to_bytes(4, "big") + lo + hi

    async def paginate(self, opts: dict[str, Any]) -> dict[str, Any]:
        """One page: `{"page", "isDone", "continueCursor", "splitCursor", "pageStatus"}`.

        `opts` is Convex's PaginationOptions: `numItems`, `cursor` (null: from the
        start), optional `endCursor` (the page ends exactly there, inclusive),
        `maximumRowsRead` and `maximumBytesRead` (rows / document bytes scanned,
        before filters; the row that crosses the byte bound is the last one read).
        The first paginate() of a query execution given a journal (a live
        subscription's re-run) ends where the journal says, so a page keeps its end and grows or shrinks in place; the
        execution's journal is the page's end cursor. A page with a fixed end that
        holds more than twice `numItems` rows says "SplitRecommended"; one that hit
        a read bound before its end says "SplitRequired" (its page may be
        incomplete); both carry a `splitCursor` in the middle of the page.
        """
        if type(opts) is not dict:
            raise ArgumentError("paginationOpts must be an object {numItems, cursor}")
        num = _whole_number(opts.get("numItems"), "paginationOpts.numItems", allow_zero=True)
        max_rows = opts.get("maximumRowsRead")
        if max_rows is not None:
            max_rows = _whole_number(max_rows, "paginationOpts.maximumRowsRead", allow_zero=False)
        max_bytes = opts.get("maximumBytesRead")
        if max_bytes is not None:
            max_bytes = _whole_number(max_bytes, "paginationOpts.maximumBytesRead", allow_zero=False)
        tx = self._tx
        lo, hi = self._bounds()
        scope = self._cursor_scope(lo, hi)
        desc = self._desc
        start, end = lo, hi
        cursor = opts.get("cursor")
        if cursor is not None:
            key = tx.cursors.open(cursor, scope, "paginationOpts.cursor")
            if desc:
                end = key
            else:
                start = key_successor(key)
        end_cursor, end_field = opts.get("endCursor"), "paginationOpts.endCursor"
        journaled = not tx.journal_taken
        tx.journal_taken = True
        if end_cursor is None and journaled and tx.journal_in is not None:
            end_cursor, end_field = tx.journal_in, "the query journal"
        final = lo if desc else hi
        if end_cursor is not None:
            result = self._pinned_page(start, end, tx.cursors.open(end_cursor, scope, end_field),
                                       num, max_rows, max_bytes, scope, final)
        else:
            result = self._open_page(start, end, cursor, num, max_rows, max_bytes, scope, final)
        if journaled:
            tx.journal_out = result["continueCursor"]
        return result

    def _open_page(self, start: bytes, end: bytes, cursor: str | None, num: int, max_rows: int | None,
                   max_bytes: int | None, scope: bytes, final: bytes) -> dict[str, Any]:
        """A page ending after `num` matches (or `max_rows` rows / `max_bytes` scanned, or the range's end)."""
        seal = self._tx.cursors.seal
        if start >= end:
            return _page([], True, cursor if cursor is not None else seal(final, scope))
        if num == 0:
            return _page([], False, cursor if cursor is not None else seal(self._range_start(), scope))
        docs, last, exhausted = self._walk(start, end, num, start, end, max_scan=max_rows, max_bytes=max_bytes)
        if exhausted or last is None:
            return _page(docs, True, seal(final, scope))
        return _page(docs, False, seal(last, scope))

    def _range_start(self) -> bytes:
        """A cursor position before the first row of the range (in this query's order)."""
        lo, hi = self._bounds()
        return hi if self._desc else lo

    def _pinned_page(self, start: bytes, end: bytes, end_key: bytes, num: int, max_rows: int | None,
                     max_bytes: int | None, scope: bytes, final: bytes) -> dict[str, Any]:
        """Every match up to and including `end_key`; split advice when the page grew or scanned too much."""
        seal = self._tx.cursors.seal
        if self._desc:
            start = max(start, end_key)
        else:
            end = min(end, key_successor(end_key))
        continue_cursor = seal(end_key, scope)
        done = end_key == final
        if start >= end:
            return _page([], done, continue_cursor)
        tx = self._tx
        budget = tx.limits.max_reads - tx.reads  # a page too big for one transaction is split, not failed
        if budget <= 0:
            tx.count_read(1)  # raises the limit error
        cap = budget if max_rows is None else min(max_rows, budget)
        scanned: list[bytes] = []
        matched: list[bytes] = []
        docs, _last, exhausted = self._walk(start, end, None, start, end, keys=scanned, max_scan=cap,
                                            matched_keys=matched, max_bytes=max_bytes)
        if not exhausted:  # maximumRows/BytesRead (or the read limit) reached before the page's end: split it
            split = scanned[max(0, len(scanned) // 2 - 1)]
            return _page(docs, done, continue_cursor, seal(split, scope), "SplitRequired")
        if len(docs) > 2 * max(num, 1) and len(docs) >= 2:
            split = matched[len(docs) // 2 - 1]
            return _page(docs, done, continue_cursor, seal(split, scope), "SplitRecommended")
        return _page(docs, done, continue_cursor)


def _whole_number(value: Any, field: str, *, allow_zero: bool) -> int:
    """`value` as an int (Convex sends numbers as floats); an ArgumentError naming `field` otherwise."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not int or value < 0 or (value == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ArgumentError(f"{field}: expected a {kind} whole number, got {value!r}")
    return value


def _page(docs: list[dict[str, Any]], done: bool, continue_cursor: str, split_cursor: str | None = None,
          status: str | None = None) -> dict[str, Any]:
    """A PaginationResult as Convex's `paginate` returns it."""
    return {"page": docs, "isDone": done, "continueCursor": continue_cursor, "splitCursor": split_cursor,
            "pageStatus": status}


class SearchFilter:
    """Builds a search: `q.search("body", "hello wor").eq("channel", c)`."""

    def __init__(self, index: str, search_field: str, filter_fields: tuple[str, ...]) -> None:
        self._index = index
        self._search_field = search_field
        self._filter_fields = filter_fields
        self.text: str | None = None
        self.filters: list[tuple[str, Any]] = []

    def search(self, field_name: str, text: str) -> "SearchFilter":
        if field_name != self._search_field:
            raise ArgumentError(f"search index {self._index!r} searches {self._search_field!r}, not {field_name!r}")
        if type(text) is not str:
            raise ArgumentError(f"search index {self._index!r}: search text must be a string, got {type(text).__name__}")
        if self.text is not None:
            raise ArgumentError(f"search index {self._index!r}: search() given twice")
        self.text = text
        return self

    def eq(self, field_name: str, value: Any) -> "SearchFilter":
        if field_name not in self._filter_fields:
            raise ArgumentError(f"search index {self._index!r} cannot filter on {field_name!r} "
                                f"(filter fields: {', '.join(self._filter_fields) or 'none'})")
        if any(name == field_name for name, _ in self.filters):
            raise ArgumentError(f"search index {self._index!r}: eq({field_name!r}) given twice")
        try:
            check_value(value, f"search filter {field_name}")
        except ConvexValueError as exc:
            raise ArgumentError(str(exc)) from None
        self.filters.append((field_name, value))
        return self


class SearchQueryBuilder(_Results):
    """A full-text search query: `filter`, then `take`/`first`/`unique`/`collect`/`paginate`, in relevance order.

    Consistency: tantivy answers from its last commit; every document that may
    differ between that commit and this transaction's view (writes not yet
    committed to the index, writes after a snapshot, this mutation's writes
    in the overlay) is left out of tantivy's answer and re-checked against the
    view itself, scored with the same BM25 (see `projections.search`).
    """

    _kind = "search"

    def __init__(self, tx: Transaction, table: str, index: str, query: SearchQuery,
                 filters: list[Callable[[dict[str, Any]], Any]]) -> None:
        self._tx = tx
        self._table = table
        self._index = index
        self._query = query
        self._filters = list(filters)

    def filter(self, predicate: Callable[[dict[str, Any]], Any]) -> "SearchQueryBuilder":
        self._filters.append(predicate)
        return self

    def _ranked(self, limit: int) -> list[dict[str, Any]]:
        """The top `limit` (≤ 1,024) matching documents as this transaction sees them; records the read set."""
        tx = self._tx
        reader: Any = tx.projection
        table, query = self._table, self._query
        try:
            spec = reader.search_spec(table, self._index)
        except (KeyError, AttributeError):
            raise EngineError(f"search index {table}.{self._index} is not installed yet "
                              "(the schema was just changed?); retry") from None
        overlaid = [doc_id for doc_id, entry in tx.overlay.entries.items() if entry.table == table]
        try:
            found = reader.search_candidates(table, self._index, query, limit, lambda: overlaid)
        except SearchIndexBuilding as exc:
            raise EngineError(str(exc)) from None
        bucket = search_prefix(spec)
        for lo, hi in query_search_ranges(spec, query):
            tx.read_set.add(lo, hi, bucket)
        scored: list[tuple[float, str, dict[str, Any]]] = []
        load = tx.load
        for score, doc_id in found.hits:
            raw = load(doc_id)
            if raw is not None:
                scored.append((score, doc_id, decode_doc(raw)))
        for doc_id in found.suspects:
            raw = load(doc_id)
            if raw is None:
                continue
            doc = decode_doc(raw)
            tokens = query.matches(spec, doc)
            if tokens is not None:
                scored.append((bm25(query, tokens, found.stats), doc_id, doc))
        scored.sort(key=lambda item: -item[0])  # stable: ties keep tantivy's order (pages stay consistent)
        out = []
        filters = self._filters
        doc_key = tx.projection.doc_key
        for _score, doc_id, doc in scored:
            tx.count_read()
            tx.read_set.add_point(doc_key(doc_id, table))
            if filters and not all(f(doc) for f in filters):
                continue
            out.append(doc)
            if len(out) >= limit:
                break
        tx.tick()
        return out

    async def take(self, n: int) -> list[dict[str, Any]]:
        if type(n) is not int or n < 0:
            raise ArgumentError(f"take(n): n must be a non-negative int, got {n!r}")
        return self._ranked(min(n, MAX_RESULTS)) if n else []

    async def collect(self) -> list[dict[str, Any]]:
        """Every match, best first, up to 1,024 (Convex's bound for search queries)."""
        return self._ranked(MAX_RESULTS)

    async def paginate(self, opts: dict[str, Any]) -> dict[str, Any]:
        """One page of the ranking: `{"page", "isDone", "continueCursor"}` (the cursor counts the results before it)."""
        if type(opts) is not dict:
            raise ArgumentError("paginationOpts must be an object {numItems, cursor}")
        num = opts.get("numItems")
        if isinstance(num, float) and num.is_integer():
            num = int(num)
        if type(num) is not int or num < 0:
            raise ArgumentError(f"paginationOpts.numItems: expected a non-negative number, got {num!r}")
        start = _search_cursor(opts.get("cursor"))
        end = _search_cursor(opts.get("endCursor")) if opts.get("endCursor") is not None else start + num
        end = min(max(end, start), MAX_RESULTS)
        ranked = self._ranked(end) if end else []
        page = ranked[start:end]
        done = len(ranked) < end or end >= MAX_RESULTS
        return {"page": page, "isDone": done, "continueCursor": _SEARCH_CURSOR + str(end)}


_SEARCH_CURSOR = "search:"


def _search_cursor(cursor: Any) -> int:
    """The position a search page cursor stands for (None: the start)."""
    if cursor is None:
        return 0
    if type(cursor) is not str or not cursor.startswith(_SEARCH_CURSOR) or not cursor[len(_SEARCH_CURSOR):].isdigit():
        raise ArgumentError(f"paginationOpts.cursor: not a cursor of a search query: {cursor!r}")
    return int(cursor[len(_SEARCH_CURSOR):])
