"""The unmodified official `convex` npm client meets a mutation whose outcome is unknown.

The node's log loses the acknowledgement of one append (`tests.engine.test_committer_recovery.Outage`).
The server closes the client's socket (close reason ``MutationOutcomeUnknown``) instead of
answering; the client reconnects and resends the mutation with its request id; the repeat
waits while the committer recovers and is answered from the log: the client sees one success
and the item exists once.
"""
from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from tests.engine.test_committer_recovery import Outage, texts
from tests.gateway.served_node import served_node

JS_DIR = Path(__file__).resolve().parents[1] / "js"


async def test_official_client_resends_and_gets_the_true_answer(tmp_path: Path) -> None:
    if shutil.which("node") is None or not (JS_DIR / "node_modules" / "convex" / "package.json").is_file():
        pytest.fail("the official JS client tests need Node.js and tests/js/node_modules (run `make js`)")
    async with served_node(tmp_path / "data") as (node, url):
        rt = node.runtime
        list_id = (await rt.run_mutation("lists:create", {"name": "l"})).value
        outage = Outage(rt, landed=False)  # (the landed case: tests/engine/test_committer_recovery.py)
        config = {"url": url, "query": {"path": "lists:items", "args": {"list_id": list_id}},
                  "mutations": [{"path": "lists:add", "args": {"list_id": list_id, "text": "doubtful"}}],
                  "timeoutMs": 20000}
        proc = await asyncio.create_subprocess_exec("node", str(JS_DIR / "subscribe_mutate.mjs"), json.dumps(config),
                                                    cwd=JS_DIR, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        while rt.committer.health()["state"] != "recovering":  # the append was lost: the socket closes
            assert proc.returncode is None
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # the client reconnects and resends; the repeat waits
        outage.back()
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        events = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
        assert proc.returncode == 0, (events, err.decode()[-2000:])
        results = [e for e in events if e["event"] == "mutation"]
        assert len(results) == 1 and results[0]["ok"] is True, results
        assert "MutationOutcomeUnknown" in err.decode()  # the client logged why its socket closed
        assert texts(rt, list_id) == ["doubtful"]
