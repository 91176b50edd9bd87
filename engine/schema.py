"""Schemas: `define_schema` and `define_table`, with indexes and document validation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from engine.errors import ArgumentError
from engine.validators import ValidationError, Validator, _Object, as_object_validator

SYSTEM_INDEXES = ("by_id", "by_creation_time")


@dataclass
class TableDefinition:
    """A table: an optional document validator and its indexes (name → field list)."""

    validator: Validator | None = None
    indexes: dict[str, list[str]] = field(default_factory=dict)
    #: top-level fields any user index reads (a patch of other fields keeps every index key)
    indexed_fields: frozenset[str] = frozenset()

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

    def validate(self, table: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Check a document against the table's validator; returns it (normalised)."""
        if self.validator is None:
            return doc
        try:
            return self.validator.check(doc, "")
        except ValidationError as exc:
            raise schema_error(table, exc) from None


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

    def index_catalog(self) -> dict[str, dict[str, list[str]]]:
        """User indexes per table, in the shape the projection takes."""
        return {name: dict(t.indexes) for name, t in self.tables.items() if t.indexes}


def define_schema(tables: Mapping[str, TableDefinition], *, strict_tables: bool = False) -> Schema:
    """Define the app schema from `{table name: define_table(...)}`."""
    for name, table in tables.items():
        if not isinstance(table, TableDefinition):
            raise TypeError(f"schema table {name!r} must be define_table(...), got {type(table).__name__}")
        if not name or name.startswith("_") or not name.replace("_", "a").isalnum():
            raise ValueError(f"invalid table name {name!r}: use letters, digits and '_' (not leading)")
    return Schema(dict(tables), strict_tables)


EMPTY_SCHEMA = Schema({})
