"""`ctx.vector_search` for actions: checks the request, builds the filter, asks the projection's vector indexes.

    await ctx.vector_search("docs", "by_embedding", {
        "vector": embedding,                          # as many numbers as the index's dimensions
        "limit": 16,                                  # 1..256, default 10
        "filter": lambda q: q.or_(q.eq("kind", "doc"), q.eq("kind", "faq")),
    })                                                # -> [{"_id": ..., "_score": ...}, ...] best first

Like Convex, scores are cosine similarities and the search reads the latest
committed state (it is not part of a transaction); load the documents with
`ctx.run_query`.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from engine.errors import ArgumentError, EngineError
from projections.vector_index import VectorValueError, filter_key, unit_vector
from projections.vectors import VectorIndexes, VectorIndexError

MAX_LIMIT = 256
DEFAULT_LIMIT = 10


class VectorFilter:
    """One disjunct set of `field == value` conditions (what a filter callback returns)."""

    def __init__(self, terms: list[tuple[str, Any]]) -> None:
        self.terms = terms


class VectorFilterBuilder:
    """The `q` a `filter` callback receives: `q.eq(field, value)` and `q.or_(...)` of those (Convex's `q.or`)."""

    def eq(self, field: str, value: Any) -> VectorFilter:
        """Documents whose filter field `field` equals `value`."""
        if not isinstance(field, str):
            raise ArgumentError(f"vector_search filter: q.eq field must be a string, got {type(field).__name__}")
        return VectorFilter([(field, value)])

    def or_(self, *filters: VectorFilter) -> VectorFilter:
        """Documents matching any of `filters`."""
        terms: list[tuple[str, Any]] = []
        for f in filters:
            if not isinstance(f, VectorFilter):
                raise ArgumentError("vector_search filter: q.or_ takes q.eq(...) or q.or_(...) expressions, "
                                    f"got {type(f).__name__}")
            terms.extend(f.terms)
        return VectorFilter(terms)

    # Convex spells it `q.or`; `or` is a Python keyword, so `getattr(q, "or")` finds this too.
    locals()["or"] = or_


def parse_request(request: Any, dimensions: int, filter_fields: tuple[str, ...],
                  label: str) -> tuple[np.ndarray, int, list[tuple[str, bytes]] | None]:
    """The (unit query vector, limit, filter keys) of a `vector_search` request; clear errors for bad input."""
    if not isinstance(request, dict):
        raise ArgumentError(f"vector_search({label}): the request must be a dict with 'vector', got "
                            f"{type(request).__name__}")
    unknown = set(request) - {"vector", "limit", "filter"}
    if unknown:
        raise ArgumentError(f"vector_search({label}): unknown request field(s) {sorted(unknown)} "
                            "(allowed: vector, limit, filter)")
    if "vector" not in request:
        raise ArgumentError(f"vector_search({label}): the request needs a 'vector'")
    try:
        query = unit_vector(request["vector"], dimensions, f"vector_search({label}) vector")
    except VectorValueError as exc:
        raise ArgumentError(str(exc)) from None
    limit = request.get("limit", DEFAULT_LIMIT)
    if type(limit) is float and limit.is_integer():
        limit = int(limit)  # a JavaScript number, as clients send it
    if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
        raise ArgumentError(f"vector_search({label}): limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    any_of = None
    make = request.get("filter")
    if make is not None:
        if not callable(make):
            raise ArgumentError(f"vector_search({label}): filter must be a function q -> q.eq(...), "
                                f"got {type(make).__name__}")
        built = make(VectorFilterBuilder())
        if not isinstance(built, VectorFilter):
            raise ArgumentError(f"vector_search({label}): the filter function must return q.eq(...) or "
                                f"q.or_(...), got {type(built).__name__}")
        any_of = []
        for field, value in built.terms:
            if field not in filter_fields:
                allowed = ", ".join(filter_fields) or "none declared"
                raise ArgumentError(f"vector_search({label}): {field!r} is not a filter field of the index "
                                    f"(filter_fields: {allowed})")
            try:
                any_of.append((field, filter_key(value)))
            except TypeError as exc:
                raise ArgumentError(f"vector_search({label}): filter value for {field!r}: {exc}") from None
    return query, limit, any_of


def vector_search(indexes: VectorIndexes, check_table: Callable[[str], None], table: str, index: str,
                  request: Any) -> list[dict[str, Any]]:
    """Run one `ctx.vector_search`; returns ``[{"_id": id, "_score": cosine}]`` best first."""
    if not isinstance(table, str) or not isinstance(index, str):
        raise ArgumentError("vector_search(table, index, request): table and index must be strings")
    check_table(table)
    label = f"{table}.{index}"
    try:
        vi = indexes.index(table, index)
        query, limit, any_of = parse_request(request, vi.dimensions, vi.filter_fields, label)
        hits = indexes.search(table, index, query, limit, any_of)
    except VectorIndexError as exc:
        raise EngineError(str(exc)) from None
    return [{"_id": doc_id, "_score": score} for doc_id, score in hits]
