"""`engine.env_vars`: name and value rules (as Convex's) and the read-only `ctx.env` mapping."""
from __future__ import annotations

import pytest

from engine.env_vars import MAX_VALUE_BYTES, EnvVarError, EnvVars, check_name, check_value


@pytest.mark.parametrize("name", ["A", "api_key", "OPENAI_API_KEY", "x1", "A" * 40])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name,why", [("", "non-empty"), ("1A", "start with a letter"), ("_A", "start with a letter"),
                                      ("A-B", "letters, digits"), ("A B", "letters, digits"), ("é", "letters"),
                                      ("A" * 41, "longer than 40"), (None, "non-empty string"), (5, "non-empty")])
def test_bad_names_say_why(name: object, why: str) -> None:
    with pytest.raises(EnvVarError, match=why):
        check_name(name)


def test_values_are_strings_of_at_most_8_kib() -> None:
    assert check_value("K", "x" * MAX_VALUE_BYTES) == "x" * MAX_VALUE_BYTES
    assert check_value("K", "") == ""
    with pytest.raises(EnvVarError, match="K: value is 8193 bytes, over the 8192 byte limit"):
        check_value("K", "x" * (MAX_VALUE_BYTES + 1))
    with pytest.raises(EnvVarError, match="over the 8192"):
        check_value("K", "é" * 4097)  # counted in UTF-8 bytes
    with pytest.raises(EnvVarError, match="K: value must be a string, got int"):
        check_value("K", 1)


def test_ctx_env_is_a_read_only_mapping() -> None:
    env = EnvVars({"A": "1", "B": "2"})
    assert env["A"] == "1" and env.get("C") is None and env.get("C", "d") == "d"
    assert "B" in env and sorted(env) == ["A", "B"] and len(env) == 2 and dict(env) == {"A": "1", "B": "2"}
    with pytest.raises(KeyError, match="'C' is not set"):
        env["C"]
    with pytest.raises(TypeError):
        env["A"] = "x"  # type: ignore[index]
    assert "1" not in repr(env)  # values never shown in logs or tracebacks
