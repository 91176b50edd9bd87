"""Schemas: `define_schema` and `define_table`, with indexes and document validation."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from engine.errors import ArgumentError
from engine.validators import ValidationError, Validator, _Object, as_object_validator

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


@dataclass(frozen=True)
class SearchIndexSpec:
    """A full-text search index: the string field it searches and the fields it filters on by equality."""

    search_field: str
    filter_fields: tuple[str, ...] = ()

    def as_catalog_entry(self) -> dict[str, Any]:
        """The shape the projection's index catalog takes for it."""
        return {"search_field": self.search_field, "filter_fields": list(self.filter_fields)}


@dataclass
class TableDefinition:
    """A table: an optional document validator and its indexes (name → field list)."""

    validator: Validator | None = None
    indexes: dict[str, list[str]] = field(default_factory=dict)
    #: top-level fields any user index reads (a patch of other fields keeps every index key)
    indexed_fields: frozenset[str] = frozenset()
    #: full-text search indexes (name -> spec), declared with `search_index`
    search_indexes: dict[str, SearchIndexSpec] = field(default_factory=dict)
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

    def search_index(self, name: str, search_field: str, filter_fields: list[str] | None = None) -> "TableDefinition":
        """Declare a full-text search index; chainable like Convex's `.searchIndex("search_body", {...})`."""
        if not isinstance(name, str) or not name or name.startswith("_") or name in SYSTEM_INDEXES \
                or name in self.indexes or name in self.search_indexes:
            raise ValueError(f"search index name {name!r} is invalid, reserved or already declared")
        if not isinstance(search_field, str) or not search_field:
            raise ValueError(f"search index {name!r}: search_field must be a field name")
        filters = list(filter_fields or [])
        if not all(isinstance(f, str) and f for f in filters) or len(set(filters)) != len(filters) \
                or search_field in filters:
            raise ValueError(f"search index {name!r}: filter_fields must be distinct field names "
                             f"other than the search field, got {filters!r}")
        fields = getattr(self.validator, "fields", None)
        declared = fields.get(search_field.split(".")[0]) if isinstance(fields, dict) and "." not in search_field else None
        if declared is not None and "string" not in declared.describe() and declared.describe() != "any":
            raise ValueError(f"search index {name!r}: search_field {search_field!r} is declared "
                             f"{declared.describe()}, not a string")
        self.search_indexes[name] = SearchIndexSpec(search_field, tuple(filters))
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
        try:
            return self.validator.check(doc, "")
        except ValidationError as exc:
            raise schema_error(table, exc) from None

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


def schema_error(table: str, exc: ValidationError) -> ArgumentError:
    """A document refused by its table's validator, worded as Convex words it."""
    return exc.prefixed(f'Failed to insert or update a document in table "{table}" because it does not match '
                        "the schema: ")


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

    def index_catalog(self) -> dict[str, dict[str, Any]]:
        """User indexes per table, in the shape the projection takes (search indexes as their catalog entries)."""
        out: dict[str, dict[str, Any]] = {name: dict(t.indexes) for name, t in self.tables.items() if t.indexes}
        for name, t in self.tables.items():
            for index, spec in t.search_indexes.items():
                out.setdefault(name, {})[index] = spec.as_catalog_entry()
        return out

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
