"""Argument and document validators: the `v` namespace, modelled on Convex's `v`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from engine.errors import ArgumentError
from values import INT64_MAX, INT64_MIN, MAX_DEPTH, table_of


class Validator:
    """Base class: `check(value, path)` returns the (possibly normalised) value or raises ArgumentError."""

    optional: bool = False
    kind: str = "any"

    def check(self, value: Any, path: str) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def describe(self) -> str:
        return self.kind

    def _fail(self, value: Any, path: str) -> ArgumentError:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return ArgumentError(f"{path}: expected {self.describe()}, got {_type_name(value)} {shown}")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "int64", float: "number", str: "string", bytes: "bytes",
            list: "array", dict: "object"}.get(type(value), type(value).__name__)


class _Any(Validator):
    kind = "any"

    def check(self, value: Any, path: str) -> Any:
        return value


class _String(Validator):
    kind = "string"

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not str:
            raise self._fail(value, path)
        return value


class _Number(Validator):
    kind = "number (float64)"

    def check(self, value: Any, path: str) -> Any:
        t = type(value)
        if t is float:
            return value
        if t is int:
            return float(value)
        raise self._fail(value, path)


class _Int64(Validator):
    kind = "int64"

    def check(self, value: Any, path: str) -> Any:
        if type(value) is int and INT64_MIN <= value <= INT64_MAX:
            return value
        raise self._fail(value, path)


class _Boolean(Validator):
    kind = "boolean"

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not bool:
            raise self._fail(value, path)
        return value


class _Null(Validator):
    kind = "null"

    def check(self, value: Any, path: str) -> Any:
        if value is not None:
            raise self._fail(value, path)
        return value


class _Bytes(Validator):
    kind = "bytes"

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not bytes:
            raise self._fail(value, path)
        return value


@dataclass
class _Id(Validator):
    table: str
    kind: str = "id"

    def describe(self) -> str:
        return f'id("{self.table}")'

    def check(self, value: Any, path: str) -> Any:
        if table_of(value) != self.table:
            raise self._fail(value, path)
        return value


@dataclass
class _Literal(Validator):
    value: Any
    kind: str = "literal"

    def describe(self) -> str:
        return f"literal {self.value!r}"

    def check(self, value: Any, path: str) -> Any:
        if type(value) is type(self.value) and value == self.value:
            return value
        if isinstance(self.value, float) and type(value) is int and float(value) == self.value:
            return float(value)
        raise self._fail(value, path)


@dataclass
class _Array(Validator):
    item: Validator
    kind: str = "array"

    def describe(self) -> str:
        return f"array of {self.item.describe()}"

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not list:
            raise self._fail(value, path)
        if path.count("[") + path.count(".") > MAX_DEPTH:
            raise ArgumentError(f"{path}: nesting deeper than {MAX_DEPTH} levels")
        check = self.item.check
        return [check(item, f"{path}[{i}]") for i, item in enumerate(value)]


@dataclass
class _Object(Validator):
    fields: dict[str, Validator]
    kind: str = "object"
    allow_system_fields: bool = False

    def describe(self) -> str:
        return "object {" + ", ".join(f"{k}{'?' if f.optional else ''}: {f.describe()}" for k, f in self.fields.items()) + "}"

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not dict:
            raise self._fail(value, path)
        out: dict[str, Any] = {}
        for key, item in value.items():
            validator = self.fields.get(key)
            if validator is None:
                if self.allow_system_fields and key in ("_id", "_creationTime"):
                    out[key] = item
                    continue
                raise ArgumentError(f"{path}: unexpected field {key!r} (allowed: {', '.join(self.fields) or 'none'})")
            out[key] = validator.check(item, f"{path}.{key}")
        for key, validator in self.fields.items():
            if key not in value and not validator.optional:
                raise ArgumentError(f"{path}.{key}: missing required field (expected {validator.describe()})")
        return out


@dataclass
class _Record(Validator):
    key: Validator
    value: Validator
    kind: str = "record"

    def describe(self) -> str:
        return f"record<{self.key.describe()}, {self.value.describe()}>"

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not dict:
            raise self._fail(value, path)
        return {self.key.check(k, f"{path} key"): self.value.check(item, f"{path}.{k}") for k, item in value.items()}


@dataclass
class _Optional(Validator):
    inner: Validator
    optional: bool = True
    kind: str = "optional"

    def describe(self) -> str:
        return f"optional {self.inner.describe()}"

    def check(self, value: Any, path: str) -> Any:
        return self.inner.check(value, path)


@dataclass
class _Union(Validator):
    members: list[Validator] = field(default_factory=list)
    kind: str = "union"

    def describe(self) -> str:
        return " | ".join(m.describe() for m in self.members)

    def check(self, value: Any, path: str) -> Any:
        for member in self.members:
            try:
                return member.check(value, path)
            except ArgumentError:
                continue
        raise self._fail(value, path)


class _V:
    """The validator builders, used as `v.string()`, `v.id("lists")`, ..."""

    def any(self) -> Validator:
        return _Any()

    def string(self) -> Validator:
        return _String()

    def number(self) -> Validator:
        return _Number()

    float64 = number

    def int64(self) -> Validator:
        return _Int64()

    def boolean(self) -> Validator:
        return _Boolean()

    def null(self) -> Validator:
        return _Null()

    def bytes(self) -> Validator:
        return _Bytes()

    def id(self, table: str) -> Validator:
        return _Id(table)

    def literal(self, value: Any) -> Validator:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("v.literal does not accept non-finite floats")
        return _Literal(value)

    def array(self, item: Validator) -> Validator:
        return _Array(item)

    def object(self, fields: Mapping[str, Validator]) -> Validator:
        return _Object(dict(fields))

    def record(self, key: Validator, value: Validator) -> Validator:
        return _Record(key, value)

    def optional(self, inner: Validator) -> Validator:
        return _Optional(inner)

    def union(self, *members: Validator) -> Validator:
        return _Union(list(members))


v = _V()


def as_object_validator(spec: Mapping[str, Validator] | Validator | None) -> Validator:
    """Normalise an `args=` / table spec (a dict of validators or a validator) to one validator."""
    if spec is None:
        return _Any()
    if isinstance(spec, Validator):
        return spec
    if isinstance(spec, Mapping):
        for key, item in spec.items():
            if not isinstance(item, Validator):
                raise TypeError(f"validator for {key!r} must come from `v`, got {type(item).__name__}")
        return _Object(dict(spec))
    raise TypeError(f"expected a dict of validators or a validator, got {type(spec).__name__}")
