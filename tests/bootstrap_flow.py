"""A new replica bootstrapping from the committer's checkpoint while writes continue (FileLog and Kafka tests)."""
from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import aiohttp

from ops.doctor_cmd import check_projection
from tests.server_process import ServerProcess

APPS = Path(__file__).resolve().parent / "apps"
KITCHEN = APPS / "kitchen"


async def call(server: ServerProcess, kind: str, path: str, args: dict[str, Any]) -> Any:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/api/{kind}", json={"path": path, "args": args, "format": "json"},
                             timeout=aiohttp.ClientTimeout(total=60)) as resp:
            body = await resp.json()
    assert body["status"] == "success", body
    return body["value"]


async def items(server: ServerProcess, list_id: str) -> list[str]:
    return [d["text"] for d in await call(server, "query", "lists:items", {"list_id": list_id})]


async def bootstrap_while_writing(root: Path, log: str | None, history: int = 150,
                                  extra_replica: list[str] | None = None,
                                  committer_extra: list[str] | None = None) -> tuple[str, str]:
    """Committer with `history` writes, then a new replica started while a writer keeps going.

    Returns (the replica's server output, its bootstrap line). Asserts both
    nodes end with the same items and the same projection digest.
    """
    extra = ["--role", "committer"] + (["--log", log] if log else []) + (committer_extra or [])
    committer = ServerProcess(KITCHEN, root / "committer", command="serve", extra=extra).start(40)
    replica: ServerProcess | None = None
    try:
        list_id = await call(committer, "mutation", "lists:create", {"name": "history"})
        for i in range(history):
            await call(committer, "mutation", "lists:add", {"list_id": list_id, "text": f"h{i}"})
        written: list[str] = []
        stop = asyncio.Event()

        async def writer() -> None:
            n = 0
            while not stop.is_set():
                await call(committer, "mutation", "lists:add", {"list_id": list_id, "text": f"w{n}"})
                written.append(f"w{n}")
                n += 1

        task = asyncio.create_task(writer())
        key = (committer.data_dir / "admin_key").read_text().strip()
        replica_extra = ["--role", "replica", "--committer", committer.url,
                         "--log", log or str(committer.data_dir / "log"), "--admin-key", key, *(extra_replica or [])]
        replica = ServerProcess(KITCHEN, root / "replica", command="serve", extra=replica_extra)
        await asyncio.to_thread(replica.start, 40)
        during = len(written)
        await asyncio.sleep(0.3)
        stop.set()
        await task
        assert len(written) > during > 0 or len(written) > 0, "the writer made no progress during the start"
        expected = [f"h{i}" for i in range(history)] + written
        assert await items(committer, list_id) == expected
        for _ in range(200):
            if await items(replica, list_id) == expected:
                break
            await asyncio.sleep(0.05)
        assert await items(replica, list_id) == expected
        output = replica.output()
        line = next((ln for ln in output.splitlines() if "bootstrapped from" in ln), "")
    finally:
        if replica is not None:
            assert replica.stop() == 0, replica.output()
        assert committer.stop() == 0, committer.output()
    mine, theirs = check_projection(root / "committer" / "projection"), check_projection(root / "replica" / "projection")
    assert mine.applied_offset == theirs.applied_offset
    assert mine.digest == theirs.digest and mine.digest is not None
    return output, line


INDEXED_SEARCHES = [{"text": "apple"}, {"text": "banana ch"}, {"text": "delta", "channel": "a"}, {"text": "zzz"}]
INDEXED_PROBES = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.2, 0.0], [-0.3, 0.3, 0.3, 0.9]]


async def fill_indexed(server: ServerProcess, seed: int, message_batches: int, docs: int) -> None:
    """Write the indexed test app's data: batches of 100 short messages, then `docs` 4-dimensional vectors."""
    rng = random.Random(seed)
    words = "apple banana cherry delta echo falcon".split()
    for _ in range(message_batches):
        batch = [{"body": " ".join(rng.choices(words, k=3)), "channel": rng.choice("ab")} for _ in range(100)]
        await call(server, "mutation", "messages:send_many", {"items": batch})
    rows = [{"title": f"d{i}", "kind": "x", "embedding": [rng.uniform(-1, 1) for _ in range(4)]} for i in range(docs)]
    await call(server, "mutation", "docs:add_many", {"rows": rows})


async def indexed_answers(server: ServerProcess) -> tuple[list[Any], list[Any]]:
    """The indexed app's search answers (query, over HTTP) and vector answers (action), in a fixed order."""
    searches = [await call(server, "query", "messages:search", args) for args in INDEXED_SEARCHES]
    vectors = []
    for probe in INDEXED_PROBES:
        deadline = time.monotonic() + 10
        while True:
            try:
                vectors.append(await call(server, "action", "docs:similar", {"vector": probe}))
                break
            except AssertionError as exc:  # a vector index loaded at start re-reads recent writes first
                if "still being built" not in str(exc) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
    return searches, vectors
