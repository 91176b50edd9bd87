"""`VectorIndex`: one vector index of one table, an in-memory projection of the log.

Each document whose vector field holds a list of `dimensions` numbers
occupies one row: its unit-length vector (float32, so a dot product is its
cosine similarity) in a numpy matrix, the same vector in a usearch HNSW graph
(key = row), and the key encodings (`projections.keys.encode_value_key`) of
its filter fields in per-field postings. Searches are exact (a numpy product
over the candidate rows) while the candidates number at most `EXACT_BELOW`,
and go through the HNSW graph above that, re-scored exactly from the matrix.

The index is thread-safe: the writer (`upsert` / `remove`, on the server loop)
and searches (on action threads) take `lock`; usearch and numpy release the
GIL while they compute.
"""
from __future__ import annotations

import math
import os
import threading
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import orjson
from usearch.index import Index

from .keys import encode_value_key

EXACT_BELOW = 10_000
"""Candidate rows up to which a search is an exact numpy product rather than an HNSW walk."""

HNSW_CONNECTIVITY = 24
HNSW_EXPANSION_ADD = 128
HNSW_EXPANSION_SEARCH = 400
HNSW_DTYPE = "i8"
HNSW_METRIC = "ip"
"""usearch graph parameters (bench/vector_bench.py measures recall@10 and latency with them). The graph
holds 8-bit quantized vectors (4× less memory per distance than float32; at 20,000 × 768 a build adds
~5,200 vectors/s against ~1,100 for float32); the candidates it returns are re-scored exactly from the
float32 matrix, which restores the recall quantization costs. The metric is the inner product: every
vector is unit length, so it orders like cosine, and it skips the two norms cosine computes per distance
(at 100,000 × 768, expansion 300: the same recall@10, 0.962, in 2.3 ms against 3.7–4.5 ms for "cos",
and a build ~1.5× faster, measured in one run)."""

GRAPH_LAYOUT = f"usearch/{HNSW_DTYPE}/{HNSW_METRIC}/{HNSW_CONNECTIVITY}/{HNSW_EXPANSION_ADD}"
"""Stamped on saved copies: a copy saved with other graph parameters is rebuilt, not loaded."""

RERANK_CANDIDATES = 150
"""Graph candidates fetched per unfiltered search and re-scored exactly (at least; more for large `count`)."""

_GROW = 1024
_NUMBER_TYPES = frozenset((float, int))


class VectorValueError(ValueError):
    """A vector that is not a list of `dimensions` finite numbers."""


def unit_vector(value: Any, dimensions: int, what: str) -> np.ndarray:
    """`value` (a list of numbers) as a unit-length float32 array; raises `VectorValueError` naming `what`."""
    if not isinstance(value, (list, tuple)):
        raise VectorValueError(f"{what} must be an array of {dimensions} numbers, got {type(value).__name__}")
    if len(value) != dimensions:
        raise VectorValueError(f"{what} has {len(value)} dimensions, the index expects {dimensions}")
    if not _NUMBER_TYPES.issuperset(map(type, value)):  # one C-level pass (bool is not a number here)
        bad = next(x for x in value if type(x) not in (float, int))
        raise VectorValueError(f"{what} must hold only numbers, found {type(bad).__name__}")
    vec = np.asarray(value, dtype=np.float32)
    norm = float(np.linalg.norm(vec))
    if not math.isfinite(norm):
        raise VectorValueError(f"{what} holds a non-finite number")
    if norm == 0.0:
        raise VectorValueError(f"{what} is the zero vector (cosine similarity is undefined for it)")
    return vec / norm


def filter_key(value: Any) -> bytes:
    """The key a filter-field value is posted under (Convex equality: same type and value)."""
    return encode_value_key(value)


class VectorIndex:
    """Rows of (document id, unit vector, filter keys), searchable by cosine similarity."""

    def __init__(self, table: str, name: str, field: str, dimensions: int, filter_fields: Sequence[str]) -> None:
        self.table = table
        self.name = name
        self.field = field
        self.dimensions = dimensions
        self.filter_fields = tuple(filter_fields)
        self.lock = threading.Lock()
        self._graph = Index(ndim=dimensions, metric=HNSW_METRIC, dtype=HNSW_DTYPE, connectivity=HNSW_CONNECTIVITY,
                            expansion_add=HNSW_EXPANSION_ADD, expansion_search=HNSW_EXPANSION_SEARCH)
        self._vectors = np.zeros((0, dimensions), dtype=np.float32)
        self._live = np.zeros(0, dtype=bool)
        self._row_of: dict[str, int] = {}
        self._id_of: list[str | None] = []
        self._free: list[int] = []
        self._keys_of: list[tuple[bytes | None, ...] | None] = []
        self._postings: list[dict[bytes, set[int]]] = [{} for _ in self.filter_fields]
        self._token = uuid.uuid4().hex
        self._changes = 0

    def generation(self) -> str:
        """Names this index's contents: equal generations (of one process) mean equal contents."""
        return f"{self._token}:{self._changes}"

    def __len__(self) -> int:
        return len(self._row_of)

    @property
    def label(self) -> str:
        return f"{self.table}.{self.name}"

    # --- writing (callers hold `lock`) ------------------------------------------------

    def document_entry(self, doc: dict[str, Any]) -> tuple[np.ndarray, tuple[bytes | None, ...]] | None:
        """The (unit vector, filter keys) `doc` indexes as, or None (no usable vector: not indexed)."""
        value = doc.get(self.field)
        if value is None:
            return None
        try:
            vec = unit_vector(value, self.dimensions, self.field)
        except VectorValueError:
            return None  # the schema refuses such writes; data from before the index is simply not indexed
        keys = tuple(filter_key(doc[f]) if f in doc else None for f in self.filter_fields)
        return vec, keys

    def upsert(self, doc_id: str, doc: dict[str, Any]) -> None:
        """Index `doc` (its latest state) under `doc_id`, or drop it if it holds no usable vector."""
        entry = self.document_entry(doc)
        if entry is None:
            self.remove(doc_id)
            return
        self.put_many([doc_id], [entry], threads=1)

    def put_many(self, ids: list[str], entries: list[tuple[np.ndarray, tuple[bytes | None, ...]]],
                 threads: int = 1) -> None:
        """Index the documents `ids` with their `entries` (from `document_entry`), replacing older rows."""
        self._changes += 1
        add_rows: list[int] = []
        add_vecs: list[np.ndarray] = []
        for doc_id, (vec, keys) in zip(ids, entries):
            row = self._row_of.get(doc_id)
            if row is not None:
                if self._keys_of[row] != keys:
                    self._unpost(row)
                    self._post(row, keys)
                if np.array_equal(self._vectors[row], vec):
                    continue  # a write that left the vector alone
                self._graph.remove(row)
            else:
                row = self._new_row()
                self._row_of[doc_id] = row
                self._id_of[row] = doc_id
                self._post(row, keys)
                self._live[row] = True
            self._vectors[row] = vec
            add_rows.append(row)
            add_vecs.append(vec)
        if add_rows:
            self._graph.add(np.asarray(add_rows, dtype=np.uint64), np.stack(add_vecs), threads=threads)

    def remove(self, doc_id: str) -> None:
        """Forget `doc_id` (deleted, or no longer holding a vector)."""
        row = self._row_of.pop(doc_id, None)
        if row is None:
            return
        self._changes += 1
        self._graph.remove(row)
        self._unpost(row)
        self._id_of[row] = None
        self._live[row] = False
        self._free.append(row)

    def _new_row(self) -> int:
        if self._free:
            return self._free.pop()
        row = len(self._id_of)
        if row >= len(self._vectors):
            grow = max(_GROW, len(self._vectors))
            self._vectors = np.concatenate([self._vectors, np.zeros((grow, self.dimensions), dtype=np.float32)])
            self._live = np.concatenate([self._live, np.zeros(grow, dtype=bool)])
        self._id_of.append(None)
        self._keys_of.append(None)
        return row

    def _post(self, row: int, keys: tuple[bytes | None, ...]) -> None:
        self._keys_of[row] = keys
        for postings, key in zip(self._postings, keys):
            if key is not None:
                postings.setdefault(key, set()).add(row)

    def _unpost(self, row: int) -> None:
        keys = self._keys_of[row]
        if keys is None:
            return
        for postings, key in zip(self._postings, keys):
            if key is not None:
                rows = postings.get(key)
                if rows is not None:
                    rows.discard(row)
                    if not rows:
                        del postings[key]
        self._keys_of[row] = None

    # --- searching (callers hold `lock`) ------------------------------------------------

    def search(self, query: np.ndarray, count: int, any_of: Iterable[tuple[str, bytes]] | None = None,
               exact: bool = False) -> list[tuple[str, float]]:
        """The `count` best (document id, cosine similarity) for the unit vector `query`, best first.

        `any_of` restricts the rows to those whose filter field equals one of
        the (field, `filter_key`) pairs; `exact` forces a brute-force search.
        """
        if count <= 0 or not self._row_of:
            return []
        candidates: np.ndarray | None = None
        if any_of is not None:
            rows: set[int] = set()
            for fieldname, key in any_of:
                rows |= self._postings[self.filter_fields.index(fieldname)].get(key, set())
            if not rows:
                return []
            candidates = np.fromiter(rows, dtype=np.int64, count=len(rows))
        n_candidates = len(self._row_of) if candidates is None else len(candidates)
        if exact or n_candidates <= EXACT_BELOW:
            return self._exact(query, count, candidates)
        return self._approximate(query, count, candidates)

    def _exact(self, query: np.ndarray, count: int, rows: np.ndarray | None) -> list[tuple[str, float]]:
        if rows is None:
            used = len(self._id_of)
            scores = self._vectors[:used] @ query
            scores[~self._live[:used]] = -np.inf
            rows = np.arange(used)
        else:
            scores = self._vectors[rows] @ query
        return self._top(rows, scores, count)

    def _top(self, rows: np.ndarray, scores: np.ndarray, count: int) -> list[tuple[str, float]]:
        if len(scores) > count:
            best = np.argpartition(-scores, count - 1)[:count]
        else:
            best = np.arange(len(scores))
        best = best[np.argsort(-scores[best], kind="stable")]
        id_of = self._id_of
        out = []
        for i in best:
            score = float(scores[i])
            doc_id = id_of[int(rows[i])]
            if doc_id is not None and score != -np.inf:
                out.append((doc_id, score))
        return out

    def _approximate(self, query: np.ndarray, count: int, rows: np.ndarray | None) -> list[tuple[str, float]]:
        """HNSW candidates re-scored exactly; with a filter, over-fetch until enough pass it."""
        total = len(self._row_of)
        allowed = None if rows is None else set(rows.tolist())
        share = 1.0 if rows is None else len(rows) / total
        fetch = min(total, max(RERANK_CANDIDATES, 2 * count, int(count / share * 2) + 8))
        while True:
            self._graph.expansion_search = max(HNSW_EXPANSION_SEARCH, 2 * fetch)
            found = self._graph.search(query, fetch)
            keys = np.asarray(found.keys, dtype=np.int64)
            if allowed is not None:
                keys = np.asarray([k for k in keys.tolist() if k in allowed], dtype=np.int64)
            if len(keys) >= count or fetch >= total:
                return self._top(keys, self._vectors[keys] @ query, count) if len(keys) else []
            if fetch * 4 >= total:
                return self._exact(query, count, rows)
            fetch *= 4

    # --- saving (callers hold `lock`) ---------------------------------------------------

    def save(self, directory: Path, sync: bool = True) -> None:
        """Write the index into the empty directory `directory` (graph, vectors, rows), each file fsynced
        (unless `sync` is False: the caller fsyncs them, outside the index's lock)."""
        used = len(self._id_of)
        graph = directory / "graph.usearch"
        self._graph.save(str(graph))
        np.save(directory / "vectors.npy", self._vectors[:used])
        rows = {"ids": self._id_of, "free": self._free,
                "keys": [None if k is None else [None if x is None else x.hex() for x in k] for k in self._keys_of]}
        (directory / "rows.json").write_bytes(orjson.dumps(rows))
        if not sync:
            return
        for path in directory.iterdir():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def load(self, directory: Path) -> None:
        """Replace this (empty) index's contents with those `save` wrote into `directory`."""
        self._changes += 1
        rows = orjson.loads((directory / "rows.json").read_bytes())
        vectors = np.load(directory / "vectors.npy")
        ids: list[str | None] = rows["ids"]
        if vectors.shape != (len(ids), self.dimensions) or len(rows["keys"]) != len(ids):
            raise ValueError(f"{directory}: the saved rows and vectors do not match")
        self._graph.load(str(directory / "graph.usearch"))
        capacity = max(_GROW, len(ids))
        self._vectors = np.zeros((capacity, self.dimensions), dtype=np.float32)
        self._vectors[:len(ids)] = vectors
        self._live = np.zeros(capacity, dtype=bool)
        self._id_of = ids
        self._free = list(rows["free"])
        self._keys_of = [None] * len(ids)
        self._row_of = {}
        self._postings = [{} for _ in self.filter_fields]
        for row, (doc_id, keys) in enumerate(zip(ids, rows["keys"])):
            if doc_id is None:
                continue
            self._row_of[doc_id] = row
            self._live[row] = True
            self._post(row, tuple(None if x is None else bytes.fromhex(x) for x in keys))
        if len(self._graph) != len(self._row_of):
            raise ValueError(f"{directory}: the saved graph holds {len(self._graph)} vectors, the rows "
                             f"{len(self._row_of)}")

    # --- reading ----------------------------------------------------------------------

    def entries(self) -> dict[str, tuple[list[float], tuple[bytes | None, ...]]]:
        """Every indexed document: id → (unit vector as floats, filter keys) (for comparing indexes)."""
        return {doc_id: (self._vectors[row].tolist(), self._keys_of[row] or ())
                for doc_id, row in self._row_of.items()}
