"""The Convex sync protocol's wire messages: parsing, validation and building.

No networking lives here. A gateway decodes each WebSocket text frame with
`parse_client_message_text` (or orjson + `parse_client_message`), acts on the
typed message, and answers with dicts built by the ``*_message`` builders,
serialised with `encode_server_message` and sent as **text** frames (the
browser client runs ``JSON.parse(event.data)``; a binary frame arrives as a
Blob and breaks it). `VersionTracker` keeps one connection's
``{querySet, ts, identity}`` bookkeeping so every Transition starts where the
client is.

Shape limits (a bad value is a `ProtocolError` naming the field): a
``sessionId`` is 1-64 characters of ``[A-Za-z0-9_-]`` (the clients send a
uuid4), a ``requestId``/``queryId`` a u32 as in Convex, a function path (and a
``componentPath``) at most 256 characters. Error messages quote at most 100
characters of a client's bad value, ending with '…' (`quote`).

How the official clients behave on the wire (what this module must match)
is written down in docs/protocol.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping, Sequence, Union

import orjson

from values import ConvexValueError, from_wire, to_wire
from values.sync_wire import (
    MAX_QUOTED_CHARS, MISSING, U32_MAX, U64_MAX, ProtocolError, StateVersion, as_int as _as_int, decode_ts,
    encode_ts, int_field as _int_field, json_type_name as _type_name, quote, require as _require,
)
from values.sync_wire import canonicalize_udf_path as _canonical_path

__all__ = [
    "ProtocolError",
    "encode_ts",
    "decode_ts",
    "canonicalize_udf_path",
    "check_session_id",
    "quote",
    "elide",
    "MAX_PATH_CHARS",
    "MAX_SESSION_ID_CHARS",
    "MAX_QUOTED_CHARS",
    "parse_udf_args",
    "Connect",
    "AddQuery",
    "RemoveQuery",
    "ModifyQuerySet",
    "Mutation",
    "Action",
    "Authenticate",
    "Event",
    "ClientMessage",
    "parse_client_message",
    "parse_client_message_text",
    "Wire",
    "StateVersion",
    "query_updated",
    "query_failed",
    "query_removed",
    "transition_message",
    "mutation_success_message",
    "mutation_failure_message",
    "action_success_message",
    "action_failure_message",
    "auth_error_message",
    "fatal_error_message",
    "ping_message",
    "transition_chunks",
    "encode_server_message",
    "encode_server_message_bytes",
    "VersionTracker",
    "MISSING",
]

MAX_PATH_CHARS = 256
"""Longest function path (``udfPath``/``path``, and ``componentPath``) accepted."""
MAX_SESSION_ID_CHARS = 64
"""Longest ``sessionId`` accepted (the official clients send a 36-character uuid4)."""
_SESSION_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,%d}" % MAX_SESSION_ID_CHARS)


# --- field helpers (timestamps, quoting, ints: values.sync_wire) ------------

def _str_field(obj: Mapping[str, Any], key: str, ctx: str, *, allow_empty: bool = False) -> str:
    value = _require(obj, key, ctx)
    if type(value) is not str:
        raise ProtocolError(f"{ctx}.{key}", f"expected a string, got {_type_name(value)}")
    if not allow_empty and not value:
        raise ProtocolError(f"{ctx}.{key}", "must not be empty")
    return value


def _opt_str_field(obj: Mapping[str, Any], key: str, ctx: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not str:
        raise ProtocolError(f"{ctx}.{key}", f"expected a string or null, got {_type_name(value)}")
    return value


# --- paths and args ---------------------------------------------------------

def canonicalize_udf_path(path: Any, field_path: str = "udfPath") -> str:
    """Canonical ``"module:function"`` form of a function path, at most `MAX_PATH_CHARS` long."""
    return _canonical_path(path, field_path, MAX_PATH_CHARS)


def elide(text: str, value: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """``text`` with each occurrence of ``value`` cut to ``limit`` characters plus '…' (when it is longer).

    For messages built elsewhere (the engine's "Could not find public
    function for '<path>'") that quote a client's long value whole.
    """
    if len(value) <= limit or value not in text:
        return text
    return text.replace(value, value[:limit] + "…")


def check_session_id(value: Any, field_path: str = "sessionId") -> str:
    """A session id: 1 to `MAX_SESSION_ID_CHARS` characters of ``[A-Za-z0-9_-]`` (the clients send a uuid4).

    The alphabet has no ``:``, so a WebSocket session id never looks like the
    ``http:…`` ids the HTTP API derives from an ``Idempotency-Key``.
    """
    if type(value) is not str:
        raise ProtocolError(field_path, f"expected a string, got {_type_name(value)}")
    if not _SESSION_ID_RE.fullmatch(value):
        raise ProtocolError(field_path, f"must be 1 to {MAX_SESSION_ID_CHARS} characters of A-Z, a-z, 0-9, '-' "
                                        f"and '_' (e.g. a uuid), got {quote(value)}")
    return value


def _component_path(obj: Mapping[str, Any], ctx: str) -> str | None:
    value = _opt_str_field(obj, "componentPath", ctx)
    if value is not None and len(value) > MAX_PATH_CHARS:
        raise ProtocolError(f"{ctx}.componentPath", f"is {len(value)} characters, over the {MAX_PATH_CHARS} "
                                                    f"character limit: {quote(value)}")
    return value or None


def parse_udf_args(value: Any, field_path: str = "args") -> dict[str, Any]:
    """Decode function arguments from Convex JSON into a Python dict.

    The sync protocol and ``ConvexHttpClient`` send a one-element array
    ``[{...}]``; a bare object is accepted too. JSON numbers become floats,
    ``{"$integer": …}`` becomes int, ``{"$bytes": …}`` bytes.
    """
    if type(value) is list:
        if len(value) != 1:
            raise ProtocolError(field_path, f"expected an array holding exactly one arguments object, got {len(value)} elements")
        value = value[0]
        field_path = f"{field_path}[0]"
    if type(value) is not dict:
        raise ProtocolError(field_path, f"arguments must be an object, got {_type_name(value)}")
    try:
        decoded = from_wire(value, field_path)
    except ConvexValueError as exc:
        raise ProtocolError(field_path, str(exc)) from None
    if type(decoded) is not dict:  # e.g. {"$integer": ...} at the top level
        raise ProtocolError(field_path, f"arguments must be an object, got {type(decoded).__name__}")
    return decoded


# --- client messages --------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Connect:
    """First message on every socket."""

    session_id: str
    connection_count: int
    last_close_reason: str | None = None
    max_observed_timestamp: int | None = None
    client_ts: int | None = None
    type: Literal["Connect"] = field(default="Connect", init=False)


@dataclass(frozen=True, slots=True)
class AddQuery:
    """Subscribe ``query_id`` to ``udf_path`` (canonical) with ``args``."""

    query_id: int
    udf_path: str
    args: dict[str, Any]
    journal: str | None = None
    component_path: str | None = None
    #: length of the args as compact JSON (what a subscription's args cost; not part of equality)
    args_bytes: int = field(default=0, compare=False)
    type: Literal["Add"] = field(default="Add", init=False)


@dataclass(frozen=True, slots=True)
class RemoveQuery:
    """Unsubscribe ``query_id``."""

    query_id: int
    type: Literal["Remove"] = field(default="Remove", init=False)


QuerySetModification = Union[AddQuery, RemoveQuery]


@dataclass(frozen=True, slots=True)
class ModifyQuerySet:
    """Change the query set from ``base_version`` to ``new_version``."""

    base_version: int
    new_version: int
    modifications: tuple[QuerySetModification, ...]
    type: Literal["ModifyQuerySet"] = field(default="ModifyQuerySet", init=False)


@dataclass(frozen=True, slots=True)
class Mutation:
    """Run a mutation; ``request_id`` is unique per session (``Connect.session_id``)."""

    request_id: int
    udf_path: str
    args: dict[str, Any]
    component_path: str | None = None
    type: Literal["Mutation"] = field(default="Mutation", init=False)


@dataclass(frozen=True, slots=True)
class Action:
    """Run an action."""

    request_id: int
    udf_path: str
    args: dict[str, Any]
    component_path: str | None = None
    type: Literal["Action"] = field(default="Action", init=False)


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Set (``"User"``/``"Admin"``) or clear (``"None"``) the identity.

    ``value`` is the JWT (User) or admin key (Admin), None for "None";
    ``impersonating`` is the raw JSON identity an admin acts as, if any.
    """

    base_version: int
    token_type: Literal["User", "Admin", "None"]
    value: str | None = None
    impersonating: Any = None
    type: Literal["Authenticate"] = field(default="Authenticate", init=False)


@dataclass(frozen=True, slots=True)
class Event:
    """Client telemetry; needs no answer."""

    event_type: str
    event: Any = None
    type: Literal["Event"] = field(default="Event", init=False)


ClientMessage = Union[Connect, ModifyQuerySet, Mutation, Action, Authenticate, Event]


def _parse_connect(obj: Mapping[str, Any]) -> Connect:
    ctx = "Connect"
    mot = obj.get("maxObservedTimestamp")
    client_ts = obj.get("clientTs")
    return Connect(
        session_id=check_session_id(_require(obj, "sessionId", ctx), f"{ctx}.sessionId"),
        connection_count=_int_field(obj, "connectionCount", ctx),
        last_close_reason=_opt_str_field(obj, "lastCloseReason", ctx),
        max_observed_timestamp=None if mot is None else decode_ts(mot, f"{ctx}.maxObservedTimestamp"),
        client_ts=None if client_ts is None else _as_int(client_ts, f"{ctx}.clientTs", -(1 << 63), (1 << 63) - 1),
    )


def _json_length(raw: Any, decoded: dict[str, Any]) -> int:
    """Length of ``raw`` (decoded JSON) re-encoded as compact JSON; ``decoded``'s wire form if it will not encode."""
    try:
        return len(orjson.dumps(raw))
    except (TypeError, orjson.JSONEncodeError):  # e.g. an int beyond 64 bits handed in as a Python object
        return len(orjson.dumps(to_wire(decoded)))


def _parse_modification(obj: Any, ctx: str) -> QuerySetModification:
    if type(obj) is not dict:
        raise ProtocolError(ctx, f"expected an object, got {_type_name(obj)}")
    kind = obj.get("type")
    if kind == "Add":
        args = obj.get("args")
        journal = obj.get("journal")
        if journal is not None and type(journal) is not str:
            raise ProtocolError(f"{ctx}.journal", f"expected a string or null, got {_type_name(journal)}")
        query_id = _int_field(obj, "queryId", ctx)
        udf_path = canonicalize_udf_path(_require(obj, "udfPath", ctx), f"{ctx}.udfPath")
        decoded = {} if args is None else parse_udf_args(args, f"{ctx}.args")
        return AddQuery(
            query_id=query_id,
            udf_path=udf_path,
            args=decoded,
            journal=journal,
            component_path=_component_path(obj, ctx),
            args_bytes=0 if args is None else _json_length(args, decoded),
        )
    if kind == "Remove":
        return RemoveQuery(query_id=_int_field(obj, "queryId", ctx))
    if kind is None:
        raise ProtocolError(f"{ctx}.type", "missing required field")
    raise ProtocolError(f"{ctx}.type", f"unknown query set modification {quote(kind)} (expected 'Add' or 'Remove')")


def _parse_modify_query_set(obj: Mapping[str, Any]) -> ModifyQuerySet:
    ctx = "ModifyQuerySet"
    base = _int_field(obj, "baseVersion", ctx)
    new = _int_field(obj, "newVersion", ctx)
    mods = _require(obj, "modifications", ctx)
    if type(mods) is not list:
        raise ProtocolError(f"{ctx}.modifications", f"expected an array, got {_type_name(mods)}")
    parsed = tuple(_parse_modification(m, f"{ctx}.modifications[{i}]") for i, m in enumerate(mods))
    return ModifyQuerySet(base_version=base, new_version=new, modifications=parsed)


def _parse_request(obj: Mapping[str, Any], kind: str) -> Mutation | Action:
    cls = Mutation if kind == "Mutation" else Action
    return cls(
        request_id=_int_field(obj, "requestId", kind),
        udf_path=canonicalize_udf_path(_require(obj, "udfPath", kind), f"{kind}.udfPath"),
        args=parse_udf_args(_require(obj, "args", kind), f"{kind}.args"),
        component_path=_component_path(obj, kind),
    )


def _parse_authenticate(obj: Mapping[str, Any]) -> Authenticate:
    ctx = "Authenticate"
    base = _int_field(obj, "baseVersion", ctx)
    token_type = _require(obj, "tokenType", ctx)
    if token_type == "None":
        return Authenticate(base_version=base, token_type="None")
    if token_type == "User":
        return Authenticate(base_version=base, token_type="User", value=_str_field(obj, "value", ctx))
    if token_type == "Admin":
        acting = obj.get("impersonating", obj.get("actingAs"))
        if acting is not None and type(acting) is not dict:
            raise ProtocolError(f"{ctx}.impersonating", f"expected an object, got {_type_name(acting)}")
        return Authenticate(base_version=base, token_type="Admin", value=_str_field(obj, "value", ctx), impersonating=acting)
    raise ProtocolError(f"{ctx}.tokenType", f"expected 'User', 'Admin' or 'None', got {quote(token_type)}")


def _parse_event(obj: Mapping[str, Any]) -> Event:
    return Event(event_type=_str_field(obj, "eventType", "Event"), event=obj.get("event"))


_PARSERS = {
    "Connect": _parse_connect,
    "ModifyQuerySet": _parse_modify_query_set,
    "Mutation": lambda obj: _parse_request(obj, "Mutation"),
    "Action": lambda obj: _parse_request(obj, "Action"),
    "Authenticate": _parse_authenticate,
    "Event": _parse_event,
}


def parse_client_message(obj: Any) -> ClientMessage:
    """Validate one decoded client message and return its typed form.

    Raises `ProtocolError` naming the field on a missing field, a wrong type
    or an unknown message type. Paths come back canonical and args decoded
    into Python values (see `parse_udf_args`).
    """
    if type(obj) is not dict:
        raise ProtocolError("message", f"expected a JSON object, got {_type_name(obj)}")
    kind = obj.get("type")
    if kind is None:
        raise ProtocolError("type", "missing required field")
    if type(kind) is not str:
        raise ProtocolError("type", f"expected a string, got {_type_name(kind)}")
    parser = _PARSERS.get(kind)
    if parser is None:
        raise ProtocolError("type", f"unknown client message type {quote(kind)}")
    return parser(obj)


def parse_client_message_text(data: str | bytes) -> ClientMessage:
    """Decode a WebSocket text frame and parse it (bad JSON → `ProtocolError`)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("message", f"invalid JSON: {exc}") from None
    return parse_client_message(obj)


# --- server messages --------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Wire:
    """A value already in Convex JSON (e.g. a cached ``to_wire`` result).

    Builders pass it through untouched instead of converting again, so one
    query result encoded once can go to many clients.
    """

    json: Any


def _wire(value: Any) -> Any:
    return value.json if isinstance(value, Wire) else to_wire(value)


def _log_lines(lines: Iterable[str] | None) -> list[str]:
    return [] if lines is None else [str(line) for line in lines]


def query_updated(query_id: int, value: Any, *, log_lines: Iterable[str] | None = None, journal: str | None = None) -> dict[str, Any]:
    """A ``QueryUpdated`` modification carrying the query's new value."""
    return {"type": "QueryUpdated", "queryId": query_id, "value": _wire(value), "logLines": _log_lines(log_lines), "journal": journal}


def query_failed(
    query_id: int,
    error_message: str,
    *,
    error_data: Any = MISSING,
    log_lines: Iterable[str] | None = None,
    journal: str | None = None,
) -> dict[str, Any]:
    """A ``QueryFailed`` modification; ``error_data`` (a ConvexError payload) only when given."""
    out: dict[str, Any] = {
        "type": "QueryFailed",
        "queryId": query_id,
        "errorMessage": str(error_message),
        "logLines": _log_lines(log_lines),
        "journal": journal,
    }
    if error_data is not MISSING:
        out["errorData"] = _wire(error_data)
    return out


def query_removed(query_id: int) -> dict[str, Any]:
    """A ``QueryRemoved`` modification."""
    return {"type": "QueryRemoved", "queryId": query_id}


def transition_message(
    start: StateVersion,
    end: StateVersion,
    modifications: Sequence[Mapping[str, Any]] = (),
    *,
    client_clock_skew: int | None = None,
    server_ts: int | None = None,
) -> dict[str, Any]:
    """A ``Transition`` from ``start`` (must equal the client's version) to ``end``.

    ``client_clock_skew`` (ms, client clock minus server clock) and
    ``server_ts`` (server time in ns) are optional and only used by the
    client for logging slow transitions and token refresh timing.
    """
    out: dict[str, Any] = {
        "type": "Transition",
        "startVersion": start.to_json(),
        "endVersion": end.to_json(),
        "modifications": list(modifications),
    }
    if client_clock_skew is not None:
        out["clientClockSkew"] = client_clock_skew
    if server_ts is not None:
        out["serverTs"] = server_ts
    return out


def mutation_success_message(request_id: int, result: Any, ts: int, *, log_lines: Iterable[str] | None = None) -> dict[str, Any]:
    """A successful ``MutationResponse``; the client resolves it once it sees a Transition at ``ts``."""
    return {
        "type": "MutationResponse",
        "requestId": request_id,
        "success": True,
        "result": _wire(result),
        "ts": encode_ts(ts),
        "logLines": _log_lines(log_lines),
    }


def mutation_failure_message(
    request_id: int, error_message: str, *, error_data: Any = MISSING, log_lines: Iterable[str] | None = None
) -> dict[str, Any]:
    """A failed ``MutationResponse``: the message goes in ``result``, the payload in ``errorData``."""
    out: dict[str, Any] = {
        "type": "MutationResponse",
        "requestId": request_id,
        "success": False,
        "result": str(error_message),
        "ts": None,
        "logLines": _log_lines(log_lines),
    }
    if error_data is not MISSING:
        out["errorData"] = _wire(error_data)
    return out


def action_success_message(request_id: int, result: Any, *, log_lines: Iterable[str] | None = None) -> dict[str, Any]:
    """A successful ``ActionResponse``."""
    return {"type": "ActionResponse", "requestId": request_id, "success": True, "result": _wire(result), "logLines": _log_lines(log_lines)}


def action_failure_message(
    request_id: int, error_message: str, *, error_data: Any = MISSING, log_lines: Iterable[str] | None = None
) -> dict[str, Any]:
    """A failed ``ActionResponse`` (same shape as a failed mutation, without ``ts``)."""
    out: dict[str, Any] = {
        "type": "ActionResponse",
        "requestId": request_id,
        "success": False,
        "result": str(error_message),
        "logLines": _log_lines(log_lines),
    }
    if error_data is not MISSING:
        out["errorData"] = _wire(error_data)
    return out


def auth_error_message(error: str, base_version: int | None = None, *, auth_update_attempted: bool | None = None) -> dict[str, Any]:
    """An ``AuthError`` for the ``Authenticate`` whose ``baseVersion`` is given."""
    out: dict[str, Any] = {"type": "AuthError", "error": str(error), "baseVersion": base_version}
    if auth_update_attempted is not None:
        out["authUpdateAttempted"] = auth_update_attempted
    return out


def fatal_error_message(error: str) -> dict[str, Any]:
    """A ``FatalError``: the JS client stops for good (no reconnect). Close the socket after it."""
    return {"type": "FatalError", "error": str(error)}


def ping_message() -> dict[str, Any]:
    """A ``Ping`` keep-alive (send one when nothing else went out for ~15 s)."""
    return {"type": "Ping"}


def encode_server_message(message: Mapping[str, Any]) -> str:
    """Serialise a server message for a WebSocket *text* frame."""
    return orjson.dumps(message).decode("utf-8")


def encode_server_message_bytes(message: Mapping[str, Any]) -> bytes:
    """Serialise a server message as UTF-8 bytes (send them with a TEXT opcode)."""
    return orjson.dumps(message)


def transition_chunks(message: Mapping[str, Any] | str, max_chars: int, transition_id: str) -> list[dict[str, Any]]:
    """Split a Transition's JSON text into ``TransitionChunk`` messages of at most ``max_chars``.

    Only the npm client understands chunks; returns a single-element list
    holding ``message`` unchanged (as a dict) when it already fits.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be positive")
    text = message if isinstance(message, str) else encode_server_message(message)
    if len(text) <= max_chars:
        return [dict(orjson.loads(text)) if isinstance(message, str) else dict(message)]
    parts = [text[i:i + max_chars] for i in range(0, len(text), max_chars)]
    return [
        {"type": "TransitionChunk", "chunk": part, "partNumber": n, "totalParts": len(parts), "transitionId": transition_id}
        for n, part in enumerate(parts)
    ]


# --- per-connection version bookkeeping ------------------------------------

class VersionTracker:
    """One connection's view of the client's ``StateVersion``.

    Feed it every ``ModifyQuerySet`` (`apply_modify_query_set`) and
    ``Authenticate`` (`apply_authenticate`) in arrival order; it rejects
    version gaps with `ProtocolError`. `transition` then builds the next
    Transition, starting exactly at the last version sent and ending at the
    latest query-set/identity versions and the given ts.
    """

    def __init__(self) -> None:
        self.sent = StateVersion()
        self.query_set_version = 0
        self.identity_version = 0

    @property
    def has_pending_versions(self) -> bool:
        """True when the client is waiting for a Transition to confirm a query-set or identity change."""
        return self.query_set_version != self.sent.query_set or self.identity_version != self.sent.identity

    def apply_modify_query_set(self, message: ModifyQuerySet) -> None:
        """Check and record a ``ModifyQuerySet``'s version step."""
        if message.base_version != self.query_set_version:
            raise ProtocolError(
                "ModifyQuerySet.baseVersion",
                f"expected {self.query_set_version} (the current query set version), got {message.base_version}",
            )
        if message.new_version <= message.base_version:
            raise ProtocolError(
                "ModifyQuerySet.newVersion",
                f"must be greater than baseVersion {message.base_version}, got {message.new_version}",
            )
        self.query_set_version = message.new_version

    def apply_authenticate(self, message: Authenticate) -> None:
        """Check and record an ``Authenticate``: the identity version becomes ``baseVersion + 1``."""
        if message.base_version != self.identity_version:
            raise ProtocolError(
                "Authenticate.baseVersion",
                f"expected {self.identity_version} (the current identity version), got {message.base_version}",
            )
        self.identity_version = message.base_version + 1

    def transition(
        self,
        ts: int,
        modifications: Sequence[Mapping[str, Any]] = (),
        *,
        client_clock_skew: int | None = None,
        server_ts: int | None = None,
    ) -> dict[str, Any]:
        """Build the next Transition to ``ts`` and remember its end version.

        ``ts`` may not go below the last sent ts (the client resolves
        mutations by comparing timestamps). With no new versions, the same
        ts and no modifications the result is a no-op Transition
        (``startVersion == endVersion``): send one after each
        MutationResponse whose ts the client has already seen.
        """
        if ts < self.sent.ts:
            raise ValueError(f"transition ts {ts} is older than the last sent ts {self.sent.ts}")
        end = StateVersion(self.query_set_version, ts, self.identity_version)
        message = transition_message(self.sent, end, modifications, client_clock_skew=client_clock_skew, server_ts=server_ts)
        self.sent = end
        return message
