"""Schemas: `define_schema` and `define_table`, with indexes and document validation."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from engine.errors import ArgumentError
from engine.validators import Validator, _Object, as_object_validator

SYSTEM_INDEXES = ("by_id", "by_creation_time")
MAX_VECTOR_DIMENSIONS = 4096  # Convex allows 2..4096


@dataclass(frozen=True)
class VectorIndexSpec:
    """A vector index: documents' `vector_field` (a list of `dimensions` numbers), filterable by `filter_fields`."""

    vector_field: str
    dimensions: int
    filter_fields: tuple[str, ...] = ()

    def as_catalog_entry(self) -> dict[str, Any]:
        """The shape `projections.vectors.VectorIndexes.install` takes."""
        return {"field": self.vector_field, "dimensions": self.dimensions, "filter_fields": list(self.filter_fields)}


@dataclass
class TableDefinition:
    """A table: an optional document validator and its indexes (name → field list)."""

    validator: Validator | None = None
    indexes: dict[str, list[str]] = field(default_factory=dict)
    #: top-level fields any user index reads (a patch of other fields keeps every index key)
    indexed_fields: frozenset[str] = frozenset()
    #: vector indexes (name → spec), declared with `vector_index`
    vector_indexes: dict[str, VectorIndexSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.indexed_fields = frozenset(f.split(".")[0] for fs in self.indexes.values() for f in fs)

    def index(self, name: str, fields: list[str]) -> "TableDefinition":
        """Declare an index; chainable like Convex's `.index("by_x", ["x"])`."""
        if name in SYSTEM_INDEXES or name in self.indexes:
            raise ValueError(f"index name {name!r} is reserved or already declared")
        if not fields or not all(isinstance(f, str) and f for f in fields):
            raise ValueError(f"index {name!r} needs a non-empty list of field names")
        self.indexes[name] = list(fields)
        self.indexed_fields = frozenset(f.split(".")[0] for fs in self.indexes.values() for f in fs)
        return self

    def vector_index(self, name: str, *, vector_field: str, dimensions: int,
                     filter_fields: list[str] | tuple[str, ...] = ()) -> "TableDefinition":
        """Declare a vector index (Convex's `.vectorIndex`); search it with `ctx.vector_search` in actions."""
        if not isinstance(name, str) or not name.replace("_", "a").isalnum() or name in SYSTEM_INDEXES \
                or name in self.vector_indexes:
            raise ValueError(f"vector index name {name!r} is not letters, digits and '_', is reserved or is "
                             "already declared")
        if not isinstance(vector_field, str) or not vector_field or vector_field.startswith("_"):
            raise ValueError(f"vector index {name!r}: vector_field must be a user field name, got {vector_field!r}")
        if type(dimensions) is not int or not 2 <= dimensions <= MAX_VECTOR_DIMENSIONS:
            raise ValueError(f"vector index {name!r}: dimensions must be an integer from 2 to "
                             f"{MAX_VECTOR_DIMENSIONS}, got {dimensions!r}")
        if not all(isinstance(f, str) and f for f in filter_fields) or len(set(filter_fields)) != len(filter_fields):
            raise ValueError(f"vector index {name!r}: filter_fields must be distinct field names")
        self.vector_indexes[name] = VectorIndexSpec(vector_field, dimensions, tuple(filter_fields))
        return self

    def validate(self, table: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Check a document against the table's validator; returns it (normalised)."""
        if self.vector_indexes:
            self._check_vectors(table, doc)
        if self.validator is None:
            return doc
        return self.validator.check(doc, f"{table} document")

    def _check_vectors(self, table: str, doc: dict[str, Any]) -> None:
        """A vector-indexed field, when present, must hold exactly `dimensions` finite numbers."""
        for name, spec in self.vector_indexes.items():
            value = doc.get(spec.vector_field)
            if value is None:
                continue
            where = f"{table} document.{spec.vector_field}"
            if not isinstance(value, list):
                raise ArgumentError(f"{where}: vector index {name!r} needs an array of {spec.dimensions} numbers, "
                                    f"got {type(value).__name__}")
            if len(value) != spec.dimensions:
                raise ArgumentError(f"{where}: vector index {name!r} needs {spec.dimensions} dimensions, "
                                    f"got {len(value)}")
            for i, x in enumerate(value):
                if type(x) not in (float, int) or not math.isfinite(x):
                    raise ArgumentError(f"{where}[{i}]: vector index {name!r} needs finite numbers, got {x!r}")


def define_table(fields: Mapping[str, Validator] | Validator | None = None) -> TableDefinition:
    """Define a table; `fields` validates its documents (system fields are always allowed)."""
    if fields is None:
        return TableDefinition()
    validator = as_object_validator(fields)
    if isinstance(validator, _Object):
        validator.allow_system_fields = True
    return TableDefinition(validator)


@dataclass
class Schema:
    """An app's schema: table definitions; tables not named are schemaless unless `strict`."""

    tables: dict[str, TableDefinition]
    strict: bool = False

    def table(self, name: str) -> TableDefinition | None:
        return self.tables.get(name)

    def check_table_allowed(self, name: str) -> None:
        if self.strict and name not in self.tables:
            raise ArgumentError(f"table {name!r} is not declared in schema.py")

    def index_catalog(self) -> dict[str, dict[str, list[str]]]:
        """User indexes per table, in the shape the projection takes."""
        return {name: dict(t.indexes) for name, t in self.tables.items() if t.indexes}

    def vector_catalog(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Vector indexes per table, in the shape `projections.vectors.VectorIndexes.install` takes."""
        return {name: {n: s.as_catalog_entry() for n, s in t.vector_indexes.items()}
                for name, t in self.tables.items() if t.vector_indexes}


def define_schema(tables: Mapping[str, TableDefinition], *, strict_tables: bool = False) -> Schema:
    """Define the app schema from `{table name: define_table(...)}`."""
    for name, table in tables.items():
        if not isinstance(table, TableDefinition):
            raise TypeError(f"schema table {name!r} must be define_table(...), got {type(table).__name__}")
        if not name or name.startswith("_") or not name.replace("_", "a").isalnum():
            raise ValueError(f"invalid table name {name!r}: use letters, digits and '_' (not leading)")
    return Schema(dict(tables), strict_tables)


EMPTY_SCHEMA = Schema({})
