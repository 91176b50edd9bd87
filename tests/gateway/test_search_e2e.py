"""Search through a real `tape` server and the PyPI `convex` client: live updates, then a crash and a doctor rebuild."""
from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from convex import ConvexClient

from tests.server_process import ROOT


def query_when_built(client: ConvexClient, args: dict[str, Any], timeout: float = 20.0) -> Any:
    """The query's answer once the search index has been (re)built after a start."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.query("messages:search", args)
        except Exception as exc:
            if "still building" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_live_search_survives_crash_and_rebuild(server_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    server = server_factory("search", data)
    client = ConvexClient(server.url)
    updates = iter(client.subscribe("messages:search", {"text": "hello wo"}))
    assert next(updates) == []
    client.mutation("messages:send", {"body": "hello world", "channel": "a"})
    assert next(updates) == ["hello world"]
    client.mutation("messages:send", {"body": "say hello to the wonderful world", "channel": "b"})
    assert sorted(next(updates)) == ["hello world", "say hello to the wonderful world"]
    with_channel = {"text": "hello", "channel": "b"}
    expected = (client.query("messages:search", {"text": "hello wo"}), client.query("messages:search", with_channel))
    assert expected[1] == ["say hello to the wonderful world"]

    server.kill()  # no shutdown code: the search index is not committed at the last offset
    doctor = subprocess.run([sys.executable, "-m", "ops.cli", "doctor", "--data", str(data), "--rebuild-projection"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    server = server_factory("search", data)
    client = ConvexClient(server.url)
    assert (query_when_built(client, {"text": "hello wo"}), client.query("messages:search", with_channel)) == expected
    try:
        client.query("messages:bad", {"mode": "bad_filter"})
        raise AssertionError("expected an error")
    except Exception as exc:
        assert "cannot filter on 'author'" in str(exc)
