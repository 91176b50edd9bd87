"""`engine.system_functions`: the dashboard's built-ins are found under `_system/`, admin-only, and
validators are described as JSON in Convex's shape."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.app import App
from engine.limits import DEFAULT_LIMITS
from engine.runtime import Runtime
from engine.errors import EngineError, FunctionNotFound
from engine.system_functions import SYSTEM_FUNCTIONS, validator_json
from engine.validators import v
from log.file_log import FileLog
from projections.store import Projection

APP = Path(__file__).resolve().parents[1] / "apps" / "dashboard"


def test_app_resolves_system_paths_but_lists_only_its_own() -> None:
    app = App.load(APP)
    assert app.function("_system/dashboard:documents") is SYSTEM_FUNCTIONS["_system/dashboard:documents"]
    assert not any(path.startswith("_system/") for path in app.functions)
    with pytest.raises(FunctionNotFound):
        app.function("_system/dashboard:nothing")


def test_validator_json_in_convex_shape() -> None:
    validator = v.object({"id": v.id("messages"), "tags": v.array(v.string()), "n": v.optional(v.number()),
                          "big": v.int64(), "mode": v.union(v.literal("a"), v.null()),
                          "meta": v.record(v.string(), v.any()), "ok": v.boolean(), "raw": v.bytes()})
    assert validator_json(validator) == {"type": "object", "value": {
        "id": {"fieldType": {"type": "id", "tableName": "messages"}, "optional": False},
        "tags": {"fieldType": {"type": "array", "value": {"type": "string"}}, "optional": False},
        "n": {"fieldType": {"type": "number"}, "optional": True},
        "big": {"fieldType": {"type": "int64"}, "optional": False},
        "mode": {"fieldType": {"type": "union", "value": [{"type": "literal", "value": "a"}, {"type": "null"}]},
                 "optional": False},
        "meta": {"fieldType": {"type": "record", "keys": {"type": "string"},
                               "values": {"fieldType": {"type": "any"}, "optional": False}}, "optional": False},
        "ok": {"fieldType": {"type": "boolean"}, "optional": False},
        "raw": {"fieldType": {"type": "bytes"}, "optional": False}}}
    assert validator_json(None) is None


def test_only_the_admin_may_call_them(tmp_path: Path) -> None:
    app = App.load(APP)
    projection = Projection(tmp_path / "projection", app.schema.index_catalog())
    runtime = Runtime(app, FileLog(tmp_path / "log"), projection, DEFAULT_LIMITS)
    try:
        args = {"table": "messages", "paginationOpts": {"numItems": 5, "cursor": None}}
        user = {"tokenIdentifier": "x|u", "subject": "u", "issuer": "x"}
        for identity in (None, user, {**user, "admin": True}):
            result = runtime.evaluate_query("_system/dashboard:documents", args, identity=identity)
            assert isinstance(result.error, EngineError) and "admin key" in str(result.error)
        page = runtime.run_query("_system/dashboard:documents", args, identity={"admin": True}).value
        assert page["page"] == [] and page["isDone"] is True
    finally:
        projection.close()
