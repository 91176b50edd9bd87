"""Function registration: `@query`, `@mutation`, `@action` and their internal variants."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Literal, Mapping

from engine.errors import ArgumentError, EngineError
from values import ConvexValueError, check_value
from engine.validators import ValidationError, Validator, as_object_validator

Kind = Literal["query", "mutation", "action"]
Handler = Callable[..., Awaitable[Any]]


class ReturnsValidationError(EngineError):
    """A function returned a value its `returns=` validator refuses."""


@dataclass
class FunctionDef:
    """A registered server function. `path` is filled in when the app is loaded."""

    kind: Kind
    handler: Handler
    args: Validator
    internal: bool
    returns: Validator | None = None
    path: str = ""

    def validate_args(self, args: Any) -> dict[str, Any]:
        """Validate arguments; errors name the argument (its path), the validator and the value, as Convex's."""
        try:
            check_value(args, "args")  # Convex's value limits (array length, field names, ...)
        except ConvexValueError as exc:
            raise ArgumentError(f"ArgumentValidationError: {exc}") from None
        try:
            return self.args.check(args, "")
        except ValidationError as exc:
            raise exc.prefixed("ArgumentValidationError: ") from None

    def check_returns(self, value: Any) -> Any:
        """Check a result against `returns` (normalised: a `v.number()` int becomes a float).

        A mismatch is a server error naming this function and the path inside the value.
        """
        if self.returns is None:
            return value
        try:
            return self.returns.check(value, "")
        except ValidationError as exc:
            raise ReturnsValidationError(f"ReturnsValidationError: {exc}\nFunction: {self.path}") from None

    def summary(self) -> str:
        visibility = "internal " if self.internal else ""
        return f"{visibility}{self.kind} {self.path}"

    def __call__(self, *a: Any, **kw: Any) -> Any:
        """Calling the decorated object calls the handler directly (handy in tests and helpers)."""
        return self.handler(*a, **kw)


def _register(kind: Kind, internal: bool) -> Callable[..., Any]:
    def decorator_factory(fn: Handler | None = None, *, args: Mapping[str, Validator] | Validator | None = None,
                          returns: Validator | None = None) -> Any:
        def wrap(handler: Handler) -> FunctionDef:
            if not inspect.iscoroutinefunction(handler):
                raise TypeError(f"{kind} {handler.__qualname__} must be declared with `async def`")
            return FunctionDef(kind, handler, as_object_validator(args if args is not None else {}) if args is not None
                               else as_object_validator(None), internal,
                               as_object_validator(returns) if returns is not None else None)
        if fn is not None:
            return wrap(fn)
        return wrap
    decorator_factory.__doc__ = f"Register an {'internal ' if internal else ''}{kind}: `@{'internal_' if internal else ''}{kind}(args={{...}})`."
    return decorator_factory


query = _register("query", False)
mutation = _register("mutation", False)
action = _register("action", False)
internal_query = _register("query", True)
internal_mutation = _register("mutation", True)
internal_action = _register("action", True)
