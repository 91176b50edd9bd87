"""Convex's HTTP function API: request parsing and response bodies, no networking.

Request shapes accepted by `parse_function_call` (all POST bodies, JSON):

* ``ConvexHttpClient`` (npm) → ``/api/query|mutation|action``:
  ``{"path", "format": "convex_encoded_json", "args": [{...}]}``; for
  ``consistentQuery`` it first posts an empty body to ``/api/query_ts`` and
  then ``{..., "ts": <what query_ts returned>}`` to ``/api/query_at_ts``.
* ``ConvexHttpClient.function`` → ``/api/function``:
  ``{"componentPath", "path", "format", "args": {...}}`` (object, not array).
* The legacy PyPI ``ConvexHttpClient`` (convex 0.8.1 ``http_client.py``):
  ``{"path", "format": "convex_encoded_json", "args": {...}}`` with
  ``Convex-Client: python-<version>``.
* Documented / third-party callers: ``"format": "json"``, the format only in
  the query string (``?format=json``), or no format at all; args an object or
  absent (= ``{}``).

Arguments are always decoded with the Convex-JSON rules (``$integer`` etc.
understood, every JSON number a float64), as Convex does for both formats.

Responses (`success_body`, `error_body`): ``{"status": "success", "value",
"logLines"}`` with HTTP 200; a function error is HTTP **560** with
``{"status": "error", "errorMessage", "errorData"?, "logLines"}``. Values are
encoded per the *response* format (`response_format`): ``convex_encoded_json``
→ Convex JSON (`values.to_wire`); ``json`` → Convex's lossy "clean"
export (int64 → decimal string, bytes → base64 string, NaN/±Infinity →
``"NaN"``/``"Infinity"``/``"-Infinity"``). With no format given, official
clients (``Convex-Client: npm-…``/``python-…``) get Convex JSON and everyone
else clean JSON, as Convex decides by client type.

Malformed requests raise `HttpApiError` (HTTP 400) whose `HttpApiError.body`
is Convex's ``{"code", "message"}`` error shape - the legacy Python client
reads exactly those two keys from any non-2xx response. For the same reason
560 bodies also carry ``code``/``message`` (the JS client ignores extra keys).
"""
from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping

import orjson

from values import to_wire
from gateway.protocol import (MAX_PATH_CHARS, MISSING, ProtocolError, Wire, canonicalize_udf_path, check_session_id,
                              decode_ts, encode_ts, parse_udf_args, quote)

__all__ = [
    "FUNCTION_ERROR_STATUS",
    "FORMATS",
    "HttpApiError",
    "FunctionCall",
    "parse_function_call",
    "parse_query_ts",
    "parse_idempotency_key",
    "MAX_REQUEST_ID",
    "response_format",
    "encode_value",
    "clean_json",
    "success_body",
    "error_body",
    "query_ts_body",
]

FUNCTION_ERROR_STATUS = 560
"""HTTP status of a function (UDF) error; clients treat any other non-2xx as a transport error."""

MAX_REQUEST_ID = (1 << 53) - 1
"""Largest request number in an ``Idempotency-Key`` (exact in a JavaScript number)."""

FORMATS = ("convex_encoded_json", "json")
"""Value formats understood in ``format``."""

Endpoint = Literal["query", "mutation", "action", "function", "query_at_ts"]
ValueFormat = Literal["convex_encoded_json", "json"]


class HttpApiError(Exception):
    """A malformed HTTP API request (not a function error)."""

    def __init__(self, message: str, *, code: str = "BadRequest", status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status

    @property
    def body(self) -> dict[str, str]:
        """Convex's error body ``{"code", "message"}``."""
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """A parsed function call.

    ``path`` is canonical (``module:function``); ``args`` holds Python values;
    ``format`` is the format the caller asked for (None when absent);
    ``ts`` is set only for ``query_at_ts``.
    """

    path: str
    args: dict[str, Any]
    format: str | None = None
    component_path: str | None = None
    ts: int | None = None


def _decode_body(body: bytes | str | Mapping[str, Any] | None) -> dict[str, Any]:
    if body is None:
        return {}
    if isinstance(body, Mapping):
        return dict(body)
    if isinstance(body, (bytes, bytearray, memoryview)):
        body = bytes(body)
        if not body.strip():
            return {}
    elif not body.strip():
        return {}
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HttpApiError(f"Request body is not valid JSON: {exc}", code="BadJsonBody") from None
    if type(decoded) is not dict:
        raise HttpApiError(f"Request body must be a JSON object, got {type(decoded).__name__}", code="BadJsonBody")
    return decoded


def _check_format(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if type(value) is not str or value not in FORMATS:
        raise HttpApiError(f"{where}: unsupported format {quote(value)} (expected one of {', '.join(FORMATS)})",
                           code="BadFormat")
    return value


def parse_query_ts(value: Any, field_path: str = "ts") -> int:
    """Parse the ``ts`` of a ``query_at_ts`` body.

    Accepts what `query_ts_body` hands out (an encoded u64 string) as well as
    a non-negative integer or a decimal string.
    """
    if type(value) is int and value >= 0:
        return value
    if type(value) is float and value.is_integer() and value >= 0:
        return int(value)
    if type(value) is str:
        if value.isdigit():
            return int(value)
        try:
            return decode_ts(value, field_path)
        except ProtocolError as exc:
            raise HttpApiError(str(exc), code="BadTimestamp") from None
    raise HttpApiError(f"{field_path}: expected an encoded timestamp, got {quote(value)}", code="BadTimestamp")


def parse_idempotency_key(value: str) -> tuple[str, int]:
    """Split an ``Idempotency-Key`` header into (session, request number).

    ``<session>:<n>`` gives request ``n`` (decimal, below 2**53) of that
    session; a key without ``:`` is a session of its own with request 0. The
    session follows the sync protocol's ``sessionId`` rules (1-64 characters
    of ``[A-Za-z0-9_-]``). Raises `HttpApiError` (400) naming the header.
    """
    session, sep, number = value.rpartition(":")
    if not sep:
        session, number = value, "0"
    try:
        check_session_id(session, "Idempotency-Key")
    except ProtocolError as exc:
        raise HttpApiError(f"{exc} (expected '<session>:<number>')", code="BadIdempotencyKey") from None
    if not (number.isascii() and number.isdigit()) or len(number) > 16 or int(number) > MAX_REQUEST_ID:
        raise HttpApiError(f"Idempotency-Key: the request number must be a decimal integer from 0 to "
                           f"{MAX_REQUEST_ID}, got {quote(number)}", code="BadIdempotencyKey")
    return session, int(number)


def parse_function_call(
    body: bytes | str | Mapping[str, Any] | None,
    *,
    endpoint: Endpoint = "query",
    query_format: str | None = None,
) -> FunctionCall:
    """Parse an HTTP API request body into a `FunctionCall`.

    ``query_format`` is the ``format`` query-string parameter, if any; the
    body's ``format`` wins when both are present. Raises `HttpApiError`
    (400) naming the bad field.
    """
    obj = _decode_body(body)
    fmt = _check_format(obj.get("format"), "format")
    if fmt is None:
        fmt = _check_format(query_format, "format (query string)")
    path = obj.get("path")
    if path is None:
        raise HttpApiError("path: missing required field", code="BadPath")
    try:
        canonical = canonicalize_udf_path(path, "path")
    except ProtocolError as exc:
        raise HttpApiError(str(exc), code="BadPath") from None
    raw_args = obj.get("args")
    try:
        args = {} if raw_args is None else parse_udf_args(raw_args, "args")
    except ProtocolError as exc:
        raise HttpApiError(str(exc), code="BadArgs") from None
    component = obj.get("componentPath")
    if component is not None and type(component) is not str:
        raise HttpApiError(f"componentPath: expected a string, got {type(component).__name__}", code="BadRequest")
    if component is not None and len(component) > MAX_PATH_CHARS:
        raise HttpApiError(f"componentPath: is {len(component)} characters, over the {MAX_PATH_CHARS} character "
                           f"limit: {quote(component)}", code="BadRequest")
    ts = None
    if endpoint == "query_at_ts":
        if "ts" not in obj:
            raise HttpApiError("ts: missing required field", code="BadTimestamp")
        ts = parse_query_ts(obj["ts"])
    return FunctionCall(path=canonical, args=args, format=fmt, component_path=component or None, ts=ts)


def response_format(requested: str | None, convex_client: str | None = None) -> ValueFormat:
    """The format to encode a response in.

    An explicit format wins; otherwise official clients (``Convex-Client``
    header starting ``npm-`` or ``python-``) get ``convex_encoded_json`` and
    anyone else ``json``.
    """
    if requested in FORMATS:
        return requested  # type: ignore[return-value]
    if convex_client and convex_client.startswith(("npm-", "python-")):
        return "convex_encoded_json"
    return "json"


def clean_json(value: Any) -> Any:
    """Convex's lossy "clean" JSON export of a Python Convex value."""
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        return str(value)
    if t is float:
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if t is dict:
        return {k: clean_json(v) for k, v in value.items()}
    if t is list or t is tuple:
        return [clean_json(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"{t.__name__} is not a Convex value")


def encode_value(value: Any, fmt: ValueFormat = "convex_encoded_json") -> Any:
    """Encode a Python value for a response body in ``fmt`` (a `Wire` passes through)."""
    if isinstance(value, Wire):
        return value.json
    return to_wire(value) if fmt == "convex_encoded_json" else clean_json(value)


def success_body(value: Any, *, fmt: ValueFormat = "convex_encoded_json", log_lines: Iterable[str] | None = None) -> dict[str, Any]:
    """Body of a successful call (send with HTTP 200)."""
    return {"status": "success", "value": encode_value(value, fmt), "logLines": [] if log_lines is None else list(log_lines)}


def error_body(
    error_message: str,
    *,
    error_data: Any = MISSING,
    fmt: ValueFormat = "convex_encoded_json",
    log_lines: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Body of a function error (send with HTTP `FUNCTION_ERROR_STATUS`, 560).

    ``errorData`` appears only when ``error_data`` is given (a ConvexError /
    AppError payload); clients then throw a ``ConvexError`` whose ``data`` is it.
    """
    out: dict[str, Any] = {
        "status": "error",
        "errorMessage": str(error_message),
        "logLines": [] if log_lines is None else list(log_lines),
        "code": "FunctionError",
        "message": str(error_message),
    }
    if error_data is not MISSING:
        out["errorData"] = encode_value(error_data, fmt)
    return out


def query_ts_body(ts: int) -> dict[str, str]:
    """Body for ``/api/query_ts``: the client echoes ``ts`` back to ``/api/query_at_ts``."""
    return {"ts": encode_ts(ts)}
