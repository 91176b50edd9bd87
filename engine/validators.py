"""Argument and document validators: the `v` namespace, modelled on Convex's `v`."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from engine.errors import ArgumentError
from values import INT64_MAX, INT64_MIN, MAX_DEPTH, table_of


def show_value(value: Any, limit: int = 200) -> str:
    """A value as Convex error messages show it: JSON-like, int64 as ``5n``, object keys bare; cut at `limit`."""
    text = _show(value, 0)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: Any, depth: int) -> str:
    t = type(value)
    if value is None:
        return "null"
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return f"{value}n"
    if t is float:
        if math.isfinite(value) and value == int(value) and abs(value) < 1e21:
            return str(int(value))
        return {math.inf: "Infinity", -math.inf: "-Infinity"}.get(value, "NaN" if value != value else repr(value))
    if t is str:
        return json.dumps(value, ensure_ascii=False)
    if t is bytes or isinstance(value, (bytearray, memoryview)):
        return f"<bytes: {len(value)}>"
    if depth > 8:
        return "..."
    if t is list or t is tuple:
        return "[" + ", ".join(_show(v, depth + 1) for v in value[:20]) + (", ...]" if len(value) > 20 else "]")
    if t is dict:
        items = list(value.items())
        body = ", ".join(f"{k}: {_show(v, depth + 1)}" for k, v in items[:20])
        return "{" + body + (", ...}" if len(items) > 20 else "}")
    return f"<{t.__name__}>"


class ValidationError(ArgumentError):
    """A value that does not match a validator, worded like Convex's (``Value does not match validator.``).

    `path` is where inside the checked value (``.list_id``, ``[2].text``; "" for the value itself);
    `detail` the Convex-style description. The message is `detail` with the path; callers add
    what was checked (``ArgumentValidationError: ...``, ``ReturnsValidationError: ...``).
    """

    def __init__(self, detail: str, path: str, value: Any = None, validator: str | None = None,
                 *, object_form: bool = False) -> None:
        self.detail, self.path, self.value, self.validator = detail, path, value, validator
        where = f"\nPath: {path}" if path else ""
        if object_form:  # missing / extra field: the object and the object validator (Convex's layout)
            text = f"{detail}\n{where[1:]}\nObject: {show_value(value)}\nValidator: {validator}"
        elif validator is not None:
            text = f"{detail}{where}\nValue: {show_value(value)}\nValidator: {validator}"
        else:
            text = f"{detail}{where}"
        super().__init__(text)

    def prefixed(self, prefix: str) -> ArgumentError:
        """The same failure as an `ArgumentError` whose message starts with `prefix`."""
        error = ArgumentError(f"{prefix}{self}")
        error.path = self.path  # type: ignore[attr-defined]
        return error


class Validator:
    """Base class: `check(value, path)` returns the (possibly normalised) value or raises `ValidationError`.

    `path` is the Convex path of `value` inside what is being checked ("" for the whole value).
    """

    optional: bool = False
    kind: str = "any"
    declares_int64: bool = False  # whether some position under it is v.int64() (see engine.client_values)

    def check(self, value: Any, path: str) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def describe(self) -> str:
        """The validator as Convex writes it: ``v.string()``, ``v.object({a: v.float64()})``, ..."""
        return f"v.{self.kind}()"

    def _fail(self, value: Any, path: str) -> ValidationError:
        return ValidationError("Value does not match validator.", path, value, self.describe())


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
    kind = "float64"

    def check(self, value: Any, path: str) -> Any:
        t = type(value)
        if t is float:
            return value
        if t is int:
            return float(value)
        raise self._fail(value, path)


class _Int64(Validator):
    kind = "int64"
    declares_int64 = True

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
        return f'v.id("{self.table}")'

    def check(self, value: Any, path: str) -> Any:
        found = table_of(value)
        if found == self.table:
            return value
        if found is not None:
            raise ValidationError(f'Found ID "{value}" from table `{found}`, which does not match the table name '
                                  f"in validator `{self.describe()}`.", path)
        raise self._fail(value, path)


@dataclass
class _Literal(Validator):
    value: Any
    kind: str = "literal"

    def __post_init__(self) -> None:
        self.declares_int64 = type(self.value) is int

    def describe(self) -> str:
        shown = json.dumps(self.value) if type(self.value) in (str, bool, float) else f"{self.value}n"
        return f"v.literal({shown})"

    def check(self, value: Any, path: str) -> Any:
        if type(value) is type(self.value) and value == self.value:
            return value
        if isinstance(self.value, float) and type(value) is int and float(value) == self.value:
            return float(value)
        raise ValidationError(f"`{show_value(value)}` does not match literal validator `{self.describe()}`.", path)


@dataclass
class _Array(Validator):
    item: Validator
    kind: str = "array"

    def __post_init__(self) -> None:
        self.declares_int64 = self.item.declares_int64

    def describe(self) -> str:
        return f"v.array({self.item.describe()})"

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not list:
            raise self._fail(value, path)
        if path.count("[") + path.count(".") > MAX_DEPTH:
            raise ValidationError(f"Value is too nested (more than {MAX_DEPTH} levels).", path)
        check = self.item.check
        return [check(item, f"{path}[{i}]") for i, item in enumerate(value)]


@dataclass
class _Object(Validator):
    fields: dict[str, Validator]
    kind: str = "object"
    allow_system_fields: bool = False

    def __post_init__(self) -> None:
        self.declares_int64 = any(f.declares_int64 for f in self.fields.values())

    def describe(self) -> str:
        return "v.object({" + ", ".join(f"{k}: {f.describe()}" for k, f in self.fields.items()) + "})"

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not dict:
            raise self._fail(value, path)
        out: dict[str, Any] = {}
        fields = self.fields
        for key, validator in fields.items():
            if key in value:
                out[key] = validator.check(value[key], f"{path}.{key}")
            elif not validator.optional:
                raise ValidationError(f"Object is missing the required field `{key}`. Consider wrapping the field "
                                      "validator in `v.optional(...)` if this is expected.", path, value,
                                      self.describe(), object_form=True)
        if len(out) != len(value):
            for key, item in value.items():
                if key in fields:
                    continue
                if self.allow_system_fields and key in ("_id", "_creationTime"):
                    out[key] = item
                    continue
                raise ValidationError(f"Object contains extra field `{key}` that is not in the validator.", path,
                                      value, self.describe(), object_form=True)
        return out


@dataclass
class _Record(Validator):
    key: Validator
    value: Validator
    kind: str = "record"

    def __post_init__(self) -> None:
        self.declares_int64 = self.value.declares_int64

    def describe(self) -> str:
        return f"v.record({self.key.describe()}, {self.value.describe()})"

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not dict:
            raise self._fail(value, path)
        return {self.key.check(k, f"{path}.keys()"): self.value.check(item, f"{path}.{k}") for k, item in value.items()}


@dataclass
class _Optional(Validator):
    inner: Validator
    optional: bool = True
    kind: str = "optional"

    def __post_init__(self) -> None:
        self.declares_int64 = self.inner.declares_int64

    def describe(self) -> str:
        return f"v.optional({self.inner.describe()})"

    def check(self, value: Any, path: str) -> Any:
        return self.inner.check(value, path)


@dataclass
class _Union(Validator):
    members: list[Validator] = field(default_factory=list)
    kind: str = "union"

    def __post_init__(self) -> None:
        self.declares_int64 = any(m.declares_int64 for m in self.members)

    def describe(self) -> str:
        return "v.union(" + ", ".join(m.describe() for m in self.members) + ")"

    def check(self, value: Any, path: str) -> Any:
        if len(self.members) == 1:
            return self.members[0].check(value, path)
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
