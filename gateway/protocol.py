"""The Convex sync protocol's wire messages: parsing, validation and building.

No networking lives here. A gateway decodes each WebSocket text frame with
`parse_client_message_text` (or orjson + `parse_client_message`), acts on the
typed message, and answers with dicts built by the ``*_message`` builders,
serialised with `encode_server_message` and sent as **text** frames (the
browser client runs ``JSON.parse(event.data)``; a binary frame arrives as a
Blob and breaks it). `VersionTracker` keeps one connection's
``{querySet, ts, identity}`` bookkeeping so every Transition starts where the
client is.

Facts verified against the official clients (npm ``convex`` 1.48.0,
``dist/esm/browser/sync/*.js``; the Rust core of PyPI ``convex`` 0.8.1 via
``convex-backend/crates/convex/sync_types/src/types/json.rs``), beyond those
in ``/work/shared/convex-protocol-notes.md``:

Client → server

* ``Connect``: ``sessionId`` (uuid v4 string, stable for the client's life),
  ``connectionCount`` (0 on the first socket, +1 per reconnect),
  ``lastCloseReason`` (``"InitialConnect"`` first, then the close reason or
  null), ``clientTs`` (ms, integer), ``maxObservedTimestamp`` (encoded u64,
  only once the client has seen a ts; absent keys are dropped by
  ``JSON.stringify``). Convex refuses the socket when ``maxObservedTimestamp``
  is ahead of its latest ts (linearizability guard) - so a server's ts must
  never go backwards across restarts.
* The Rust client (PyPI ``convex``) connects to ``/api/sync``, sends
  ``clientTs: 0`` and no ``maxObservedTimestamp``, and puts ``args`` first in
  its objects (key order is irrelevant).
* On *every* socket open the JS client sends ``Connect``, then
  ``Authenticate`` with ``baseVersion: 0`` if it has auth, then a
  ``ModifyQuerySet`` with ``baseVersion: 0, newVersion: 1`` re-adding every
  live query under its old ``queryId`` (possibly with an empty
  ``modifications`` list), then re-sends unfinished mutations. It resets its
  remote state to ``{querySet: 0, ts: 0, identity: 0}``.
* ``Add``: ``{type, queryId, udfPath, args: [obj]}`` plus ``journal`` and
  ``componentPath`` only when set. The JS client canonicalises the path of a
  *query* (``"mod"`` → ``"mod:default"``, ``"mod.js:f"`` → ``"mod:f"``) but
  sends mutation/action paths as the caller wrote them; Rust sends them as
  written. `canonicalize_udf_path` does the same for all.
* ``Authenticate``: ``{baseVersion, tokenType: "User", value: JWT}``,
  ``{tokenType: "Admin", value, impersonating?}`` or ``{tokenType: "None"}``.
  The client bumps its own identity version to ``baseVersion + 1``. The
  server confirms by a Transition whose ``endVersion.identity`` is
  ``baseVersion + 1`` (and greater than ``startVersion.identity``); only then
  is ``setAuth``'s ``onChange(true)`` called. For ``"None"`` (sent by
  ``clearAuth``) nothing else is expected: just carry the new identity
  version in the next Transition. ``setAuth`` pauses the socket while it
  fetches the token, so the first messages are then ``Connect``,
  ``Authenticate`` (``baseVersion: 0``), ``ModifyQuerySet``.
* ``Event``: ``{eventType, event}``, telemetry only - ``"ClientConnect"``
  (performance marks, only with ``reportDebugInfoToConvex``),
  ``"ClientReceivedTransition"`` ``{transitionTransitTime, messageLength}``
  and ``"NetworkRecoveryReconnect"`` ``{timeSavedMs}``. Nothing is answered.
* ``usePaginatedQuery`` / ``onPaginatedUpdate_experimental`` subscribe to the
  same query once per page with args ``{...args, paginationOpts: {numItems,
  cursor, id}}``: ``cursor`` is null for the first page then the previous
  page's ``continueCursor``, ``id`` is a client-side number identifying the
  paginated query (it keeps page subscriptions of different hook instances
  apart; the function must ignore it), and when the client splits a page it
  adds ``endCursor``. The result must be ``{page: [...], isDone: bool,
  continueCursor: str}`` (the client throws on anything else) with optional
  ``splitCursor`` and ``pageStatus`` (``"SplitRecommended"`` /
  ``"SplitRequired"`` ask the client to split the page in two at
  ``splitCursor``).

Server → client

* ``Transition``: ``{type, startVersion, endVersion, modifications,
  clientClockSkew?, serverTs?}``, versions ``{querySet, ts: encoded u64,
  identity}``. The client only checks ``startVersion`` equals its version
  (else it throws "Invalid start version" and the socket handler dies), then
  adopts ``endVersion``. Modifications:
  ``{type: "QueryUpdated", queryId, value: ConvexJSON, logLines: [], journal: null}``,
  ``{type: "QueryFailed", queryId, errorMessage, logLines: [], journal: null, errorData?}``,
  ``{type: "QueryRemoved", queryId}``. ``logLines`` must be an array (the client
  iterates it). After ``QueryFailed``, reading the query (``onUpdate``'s
  value, ``client.query``) throws ``Error("[CONVEX Q(path)] <errorMessage>\\n
  Called by client")``, a ``ConvexError`` with ``.data`` when ``errorData`` is
  present; ``onUpdate`` passes it to its ``onError`` callback.
* A mutation's promise resolves only once a Transition with ``endVersion.ts``
  ≥ the MutationResponse ``ts`` arrives *after* that response: the JS client
  checks completed mutations only when a Transition is processed, so a
  Transition that reached the client before the MutationResponse does not
  count (observed: subscribe + mutate on one client hangs forever when the
  server pushes the query update first and answers second). Send a Transition
  after every MutationResponse; a no-op one (``startVersion == endVersion``,
  no modifications) is accepted and is enough. In the JS client failed
  mutations and all ActionResponses resolve immediately, but the Rust client
  (PyPI) completes a failed mutation that carries ``errorData`` only on the
  next Transition - so send one after failures too.
* The JS client calls ``onUpdate`` listeners for every query named in a
  ``QueryUpdated``/``QueryFailed`` modification (a new result object, even if
  the value is equal), and never for queries a Transition omits - so a
  server may leave unchanged queries out.
* ``logLines`` entries must look like ``"[LOG] text"`` (``[LEVEL] `` prefix,
  e.g. LOG/INFO/WARN/ERROR); the client logs "Could not parse console.log"
  for anything else.
* ``MutationResponse``: success ``{requestId, success: true, result:
  ConvexJSON, ts: encoded u64, logLines}``; failure ``{requestId, success:
  false, result: <error message string>, logLines, errorData?}`` (Convex also
  sends ``ts: null`` there). The error message is in ``result``, the
  ConvexError payload in ``errorData``; the client throws
  ``ConvexError`` with ``.data = errorData`` when present, else ``Error``.
* ``ActionResponse``: the same without ``ts``.
* ``AuthError``: ``{error, baseVersion, authUpdateAttempted?}``. The client
  ignores it when ``baseVersion + 1`` is older than its identity version;
  otherwise it refetches a token (or reports auth failure). Convex sends it
  right before closing the socket.
* ``FatalError``: ``{error}``. The JS client logs ``[CONVEX FATAL ERROR] …``,
  *terminates* the WebSocket manager (no reconnect, ever) and throws. Convex
  sends it only for deterministic user errors, then closes the socket.
* ``Ping``: ``{type: "Ping"}``, ignored by the client except that any message
  resets its 60 s inactivity timer: with no message for 60 s the client
  closes and reconnects ("InactiveServer"). Convex's sync worker sends a Ping
  after 15 s without other messages.
* ``TransitionChunk`` ``{chunk, partNumber, totalParts, transitionId}`` lets a
  large Transition's JSON text be split; the npm client reassembles them
  (Convex only sends them to new npm clients). See `transition_chunks`.
* Close codes: the JS client reconnects after any close; codes other than
  1000/1001/1005/4040 are logged. The backoff depends on the close reason
  prefix (``"InternalServerError"`` → 1 s, overload reasons → 3 s, anything
  else → 1 s initial, doubling, max 16 s, with jitter).
"""
from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping, Sequence, Union

import orjson

from values import ConvexValueError, from_wire, to_wire

__all__ = [
    "ProtocolError",
    "encode_ts",
    "decode_ts",
    "canonicalize_udf_path",
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

U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1


class ProtocolError(ValueError):
    """A client message that breaks the protocol.

    ``field`` names the offending field as a dotted path (e.g.
    ``"ModifyQuerySet.modifications[0].queryId"``); the message says what was
    expected and what arrived.
    """

    def __init__(self, field_path: str, message: str) -> None:
        self.field = field_path
        # Messages from values already start with the (deeper) path.
        prefixed = not field_path or message.startswith(field_path)
        super().__init__(message if prefixed else f"{field_path}: {message}")


class _Missing:
    """Sentinel type for "argument not given" (distinct from None = null)."""

    _instance: "_Missing | None" = None

    def __new__(cls) -> "_Missing":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()
"""Default for optional ``error_data`` parameters: omit the field entirely."""


# --- timestamps -------------------------------------------------------------

def encode_ts(ts: int) -> str:
    """Encode a u64 timestamp as the protocol does: base64 of 8 little-endian bytes."""
    if type(ts) is not int or not 0 <= ts <= U64_MAX:
        raise ValueError(f"timestamp must be an int in [0, 2**64), got {ts!r}")
    return base64.b64encode(struct.pack("<Q", ts)).decode("ascii")


def decode_ts(text: Any, field_path: str = "ts") -> int:
    """Decode an encoded u64 timestamp; raises `ProtocolError` naming ``field_path``."""
    if type(text) is not str:
        raise ProtocolError(field_path, f"expected a base64 string (encoded u64), got {_type_name(text)}")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ProtocolError(field_path, f"not valid base64: {text!r}") from None
    if len(raw) != 8:
        raise ProtocolError(field_path, f"encoded u64 must be 8 bytes, got {len(raw)}")
    return struct.unpack("<Q", raw)[0]


# --- field helpers ----------------------------------------------------------

def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if type(value) is bool:
        return "boolean"
    if type(value) in (int, float):
        return "number"
    if type(value) is str:
        return "string"
    if type(value) is list:
        return "array"
    if type(value) is dict:
        return "object"
    return type(value).__name__


def _require(obj: Mapping[str, Any], key: str, ctx: str) -> Any:
    if key not in obj:
        raise ProtocolError(f"{ctx}.{key}", "missing required field")
    return obj[key]


def _as_int(value: Any, path: str, lo: int = 0, hi: int = U32_MAX) -> int:
    if type(value) is int:
        out = value
    elif type(value) is float and value.is_integer():
        out = int(value)
    else:
        raise ProtocolError(path, f"expected an integer, got {_type_name(value)} {value!r}")
    if not lo <= out <= hi:
        raise ProtocolError(path, f"integer {out} out of range [{lo}, {hi}]")
    return out


def _int_field(obj: Mapping[str, Any], key: str, ctx: str, lo: int = 0, hi: int = U32_MAX) -> int:
    return _as_int(_require(obj, key, ctx), f"{ctx}.{key}", lo, hi)


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
    """Canonical ``"module:function"`` form of a function path.

    Like the clients: a path without ``:`` names the module's ``default``
    export, and a trailing ``.js`` on the module is dropped
    (``"lists"`` → ``"lists:default"``, ``"lists.js:all"`` → ``"lists:all"``).
    """
    if type(path) is not str:
        raise ProtocolError(field_path, f"expected a string, got {_type_name(path)}")
    module, sep, function = path.rpartition(":")
    if not sep:
        module, function = path, "default"
    if module.endswith(".js"):
        module = module[:-3]
    if not module or not function:
        raise ProtocolError(field_path, f"invalid function path {path!r} (expected 'module:function')")
    if any(ch.isspace() for ch in path):
        raise ProtocolError(field_path, f"invalid function path {path!r} (contains whitespace)")
    return f"{module}:{function}"


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
        session_id=_str_field(obj, "sessionId", ctx),
        connection_count=_int_field(obj, "connectionCount", ctx),
        last_close_reason=_opt_str_field(obj, "lastCloseReason", ctx),
        max_observed_timestamp=None if mot is None else decode_ts(mot, f"{ctx}.maxObservedTimestamp"),
        client_ts=None if client_ts is None else _as_int(client_ts, f"{ctx}.clientTs", -(1 << 63), (1 << 63) - 1),
    )


def _parse_modification(obj: Any, ctx: str) -> QuerySetModification:
    if type(obj) is not dict:
        raise ProtocolError(ctx, f"expected an object, got {_type_name(obj)}")
    kind = obj.get("type")
    if kind == "Add":
        args = obj.get("args")
        journal = obj.get("journal")
        if journal is not None and type(journal) is not str:
            raise ProtocolError(f"{ctx}.journal", f"expected a string or null, got {_type_name(journal)}")
        return AddQuery(
            query_id=_int_field(obj, "queryId", ctx),
            udf_path=canonicalize_udf_path(_require(obj, "udfPath", ctx), f"{ctx}.udfPath"),
            args={} if args is None else parse_udf_args(args, f"{ctx}.args"),
            journal=journal,
            component_path=_opt_str_field(obj, "componentPath", ctx) or None,
        )
    if kind == "Remove":
        return RemoveQuery(query_id=_int_field(obj, "queryId", ctx))
    if kind is None:
        raise ProtocolError(f"{ctx}.type", "missing required field")
    raise ProtocolError(f"{ctx}.type", f"unknown query set modification {kind!r} (expected 'Add' or 'Remove')")


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
        component_path=_opt_str_field(obj, "componentPath", kind) or None,
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
    raise ProtocolError(f"{ctx}.tokenType", f"expected 'User', 'Admin' or 'None', got {token_type!r}")


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
        raise ProtocolError("type", f"unknown client message type {kind!r}")
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


@dataclass(frozen=True, slots=True)
class StateVersion:
    """A client's position: query-set version, timestamp and identity version."""

    query_set: int = 0
    ts: int = 0
    identity: int = 0

    def to_json(self) -> dict[str, Any]:
        """The wire form ``{querySet, ts: encoded u64, identity}``."""
        return {"querySet": self.query_set, "ts": encode_ts(self.ts), "identity": self.identity}

    @classmethod
    def from_json(cls, obj: Any, field_path: str = "version") -> "StateVersion":
        """Parse the wire form (used by tests and tools)."""
        if type(obj) is not dict:
            raise ProtocolError(field_path, f"expected an object, got {_type_name(obj)}")
        return cls(
            query_set=_int_field(obj, "querySet", field_path),
            ts=decode_ts(_require(obj, "ts", field_path), f"{field_path}.ts"),
            identity=_int_field(obj, "identity", field_path),
        )


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
