"""`tape run`: an internal function through /api/admin/run, with and without the admin key (issue 16)."""
from __future__ import annotations

import json

import pytest

from ops import cli


def test_tape_run_internal_function_with_and_without_the_key(server_factory, tmp_path, capsys,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAPE_ADMIN_KEY", raising=False)
    monkeypatch.delenv("TAPE_ADMIN_KEY_FILE", raising=False)
    data = tmp_path / "data"
    server = server_factory("jobs", data)
    # Without a key: refused before anything is sent.
    assert cli.main(["run", server.url, "jobs:record", '{"tag": "nokey"}']) == 1
    assert "needs the admin key" in capsys.readouterr().err.replace("\n", " ")
    # With a wrong key: the server refuses (401) and nothing runs.
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-key\n")
    wrong.chmod(0o600)
    assert cli.main(["run", server.url, "jobs:record", '{"tag": "wrong"}', "--admin-key-file", str(wrong)]) == 1
    assert "401" in capsys.readouterr().err
    # With the key (from the data directory): the internal mutation runs; then a query and an action.
    assert cli.main(["run", server.url, "jobs:record", '{"tag": "ok"}', "--data", str(data)]) == 0
    assert json.loads(capsys.readouterr().out).startswith("")  # the new id
    monkeypatch.setenv("TAPE_ADMIN_KEY_FILE", str(data / "admin_key"))
    assert cli.main(["run", server.url, "jobs:events"]) == 0
    assert json.loads(capsys.readouterr().out) == ["ok"]
    assert cli.main(["run", server.url, "jobs:work", '{"tag": "act", "sleep": 0}']) == 0
    assert json.loads(capsys.readouterr().out) == "act"
    # Errors are reported with the function's message.
    assert cli.main(["run", server.url, "jobs:nope"]) == 1
    assert "Could not find" in capsys.readouterr().err
    assert cli.main(["run", server.url, "jobs:record", "[1]"]) == 1
