"""What search indexes are made of, apart from tantivy: definitions, terms, read-set keys and scoring.

* `SearchSpec` and the catalog helpers: a search index in the projection's
  index catalog is an entry ``{"search_field", "filter_fields"}``.
* `tokenize` (tantivy's default analyzer, in Python), `filter_term` and
  `SearchQuery` (terms, the last one also a prefix; filter equalities), with
  `SearchQuery.matches` for re-checking one document.
* Read sets (`doc_search_keys`, `query_search_ranges`): a key space of its
  own (leading byte ``s``): ``s + table + index + mask + filter values + token``
  for each token of a document and each combination of its filter fields, so
  a subscription reads the points (exact terms) and the prefix range (the
  last term) under its own filter values, and a write re-runs only the
  subscriptions whose terms it holds, in its old or new version.
* `bm25`: the score of a document re-checked outside tantivy, from the
  committed index's statistics.
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import IndexCatalogError
from .keys import UNDEFINED, encode_string_key, encode_value_key, prefix_successor

SEARCH_KEY = b"s"
"""Leading byte of the read-set keys of search indexes (see `doc_search_keys`)."""
MAX_RESULTS = 1024
"""At most this many results per search query, as in Convex."""
MAX_MASKED_FILTERS = 4
"""Up to this many filter fields, read-set keys are written for every combination of them."""
_K1 = 1.2  # tantivy's BM25 k1 (b drops out: a re-checked document's length is taken as the average)
_TOKEN = re.compile(r"[^\W_]+")
_MAX_TOKEN_BYTES = 40


@dataclass(frozen=True)
class SearchSpec:
    """One search index: its table and name, the text field, and the filter fields."""

    table: str
    name: str
    search_field: str
    filter_fields: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"search_field": self.search_field, "filter_fields": list(self.filter_fields)}


SearchCatalog = dict[str, dict[str, dict[str, Any]]]


def is_search_entry(value: Any) -> bool:
    """Whether an index catalog entry is a search index (a mapping with ``search_field``)."""
    return isinstance(value, Mapping) and "search_field" in value


def split_catalog(indexes: Mapping[str, Mapping[str, Any]] | None) -> tuple[dict[str, dict[str, Any]], SearchCatalog]:
    """(ordinary index catalog, search catalog) of a catalog holding both kinds of entries."""
    plain: dict[str, dict[str, Any]] = {}
    search: SearchCatalog = {}
    for table, per in (indexes or {}).items():
        if not isinstance(per, Mapping):
            plain[table] = per  # type: ignore[assignment]  # normalize_catalog reports it
            continue
        for name, value in per.items():
            if is_search_entry(value):
                search.setdefault(table, {})[name] = value
            else:
                plain.setdefault(table, {})[name] = value
    return plain, search


def normalize_search_catalog(search: Mapping[str, Mapping[str, Any]]) -> SearchCatalog:
    """Validate a search catalog; returns a sorted plain copy (raises `IndexCatalogError`)."""
    out: SearchCatalog = {}
    for table in sorted(search):
        for name in sorted(search[table]):
            entry = search[table][name]
            field = entry.get("search_field")
            filters = entry.get("filter_fields", [])
            where = f"{table}.{name}"
            if type(name) is not str or not name or name.startswith("_"):
                raise IndexCatalogError(f"{where}: invalid search index name")
            if type(field) is not str or not field:
                raise IndexCatalogError(f"{where}: search_field must be a non-empty field name")
            if isinstance(filters, (str, bytes)) or not all(type(f) is str and f for f in filters):
                raise IndexCatalogError(f"{where}: filter_fields must be a list of field names")
            if len(set(filters)) != len(filters) or field in filters:
                raise IndexCatalogError(f"{where}: filter_fields repeat a field: {list(filters)}")
            out.setdefault(table, {})[name] = {"search_field": field, "filter_fields": list(filters)}
    return out


def specs_of(catalog: SearchCatalog) -> list[SearchSpec]:
    return [SearchSpec(t, n, e["search_field"], tuple(e["filter_fields"]))
            for t, per in sorted(catalog.items()) for n, e in sorted(per.items())]


# --- text ----------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """The terms tantivy's default analyzer makes of `text` (alphanumeric runs under 40 bytes, lowercased)."""
    return [t.lower() for t in _TOKEN.findall(text) if len(t.encode()) < _MAX_TOKEN_BYTES]


def filter_term(value: Any) -> str:
    """The indexed term of a filter field's value, equal for equal values: a string is itself (unless it
    starts with NUL), any other value its `encode_value_key` in hex after a NUL."""
    if type(value) is str and value[:1] != "\x00":
        return value
    return "\x00" + encode_value_key(value).hex()


def value_at(doc: Mapping[str, Any], path: str) -> Any:
    """The value at dotted `path` in `doc`, or `UNDEFINED`."""
    v: Any = doc
    for part in path.split("."):
        if type(v) is not dict:
            return UNDEFINED
        v = v.get(part, UNDEFINED)
    return v


def doc_text(spec: SearchSpec, doc: Mapping[str, Any]) -> str:
    """The searchable text of `doc` (empty unless its search field is a string)."""
    v = value_at(doc, spec.search_field)
    return v if type(v) is str else ""


@dataclass(frozen=True)
class SearchQuery:
    """A parsed search: terms matched exactly, the last one also as a prefix, and filter equalities."""

    terms: tuple[str, ...]
    filters: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, text: str, filters: Iterable[tuple[str, Any]] = ()) -> "SearchQuery":
        terms = tuple(dict.fromkeys(tokenize(text)))
        return cls(terms, tuple(filters))

    @property
    def prefix(self) -> str | None:
        return self.terms[-1] if self.terms else None

    def matches(self, spec: SearchSpec, doc: Mapping[str, Any]) -> list[str] | None:
        """The tokens of `doc` if it matches (filters equal, a term present or the prefix extended), else None."""
        for name, value in self.filters:
            if filter_term(value_at(doc, name)) != filter_term(value):
                return None
        tokens = tokenize(doc_text(spec, doc))
        if not self.terms:
            return None
        present = set(tokens)
        prefix = self.terms[-1]
        if any(t in present for t in self.terms) or any(t.startswith(prefix) for t in present):
            return tokens
        return None


# --- read-set keys --------------------------------------------------------------------------


def _masks(n: int) -> list[tuple[int, ...]]:
    if n <= MAX_MASKED_FILTERS:
        return [c for k in range(n + 1) for c in itertools.combinations(range(n), k)]
    return [()] + [(i,) for i in range(n)]


def _base(spec: SearchSpec, positions: tuple[int, ...], values: list[Any]) -> bytes:
    mask = sum(1 << i for i in positions)
    return (SEARCH_KEY + encode_string_key(spec.table) + encode_string_key(spec.name) + mask.to_bytes(2, "big")
            + b"".join(encode_value_key(values[i]) for i in positions))


def search_prefix(spec: SearchSpec) -> bytes:
    """The prefix of every read-set key of `spec` (its bucket)."""
    return SEARCH_KEY + encode_string_key(spec.table) + encode_string_key(spec.name)


def doc_search_keys(spec: SearchSpec, doc: Mapping[str, Any]) -> list[bytes]:
    """The read-set keys a write of `doc` (old or new version) touches in `spec`."""
    tokens = set(tokenize(doc_text(spec, doc)))
    if not tokens:
        return []
    values = [value_at(doc, f) for f in spec.filter_fields]
    out = []
    for positions in _masks(len(spec.filter_fields)):
        base = _base(spec, positions, values)
        out.extend(base + t.encode() for t in tokens)
    return out


def query_search_ranges(spec: SearchSpec, query: SearchQuery) -> list[tuple[bytes, bytes]]:
    """The read-set ranges of `query`: a point per exact term, a prefix range for the last one."""
    if not query.terms:
        return []
    index_of = {f: i for i, f in enumerate(spec.filter_fields)}
    given = {index_of[name]: value for name, value in query.filters}
    positions = tuple(sorted(given))
    if positions not in set(_masks(len(spec.filter_fields))):
        positions = positions[:1]
    values = [given.get(i) for i in range(len(spec.filter_fields))]
    base = _base(spec, positions, values)
    ranges = [(base + t.encode(), base + t.encode() + b"\x00") for t in query.terms[:-1]]
    last = base + query.terms[-1].encode()
    ranges.append((last, prefix_successor(last)))
    return ranges


# --- scoring ----------------------------------------------------------------------------------


@dataclass
class SearchStats:
    """What a pending document's score needs from the committed index: documents and term frequencies."""

    searcher: Any
    field: str
    num_docs: int

    def idf(self, term: str) -> float:
        df = self.searcher.doc_freq(self.field, term) if self.num_docs else 0
        n = max(self.num_docs, 1)
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


def bm25(query: SearchQuery, tokens: list[str], stats: SearchStats) -> float:
    """BM25 of a (pending) document's tokens, as tantivy scores the query (document length taken as average)."""
    counts: dict[str, int] = {}
    for t in tokens:
        counts[t] = counts.get(t, 0) + 1
    scored = set(query.terms)
    prefix = query.terms[-1] if query.terms else None
    if prefix is not None:
        scored.update(t for t in counts if t.startswith(prefix))
    score = 0.0
    for term in scored:
        tf = counts.get(term, 0)
        if tf:
            score += stats.idf(term) * tf * (_K1 + 1) / (tf + _K1)
    return score
