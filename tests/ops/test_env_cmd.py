"""`tape env list|set|remove` against a running deployment, with the admin key from --data or nowhere."""
from __future__ import annotations

import asyncio
import io
import sys
from pathlib import Path

import pytest

from gateway.replica import ADMIN_KEY_ENV, ADMIN_KEY_FILE_ENV
from ops import cli
from tests.gateway.served_node import served_node


def test_tape_env_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        async with served_node(tmp_path / "data", app="dashboard") as (node, url):
            data = ["--data", str(tmp_path / "data")]
            steps = [(["set", url, "GREETING", "bonjour"], 0, "set GREETING"),
                     (["set", url, "SECRET", "-"], 0, "set SECRET"),  # the value from stdin
                     (["list", url], 0, "GREETING=bonjour\nSECRET=s3cr3t\n"),
                     (["remove", url, "SECRET"], 0, "removed SECRET"),
                     (["list", url], 0, "GREETING=bonjour\n"),
                     (["set", url, "9bad", "v"], 1, "must start with a letter"),
                     (["remove", url, "SECRET"], 1, "SECRET is not set"),
                     (["set", url, "X"], 1, "needs a VALUE")]
            for argv, rc, shown in steps:
                monkeypatch.setattr(sys, "stdin", io.StringIO("s3cr3t\n"))
                assert await asyncio.to_thread(cli.main, ["env", *argv, *data]) == rc, argv
                out = capsys.readouterr()
                assert shown in (out.out if rc == 0 else out.out + out.err), (argv, out)
            assert node.runtime.run_query("messages:greeting", {}).value == "bonjour, 1 variable(s)"
            assert await asyncio.to_thread(cli.main, ["env", "list", url]) == 1  # no key anywhere
            assert "tape env needs the admin key" in capsys.readouterr().err
    monkeypatch.delenv(ADMIN_KEY_ENV, raising=False)
    monkeypatch.delenv(ADMIN_KEY_FILE_ENV, raising=False)
    asyncio.run(scenario())
