"""Vector search through a real `tape dev` server with the PyPI `convex` client; the index survives a restart."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from convex import ConvexClient

DIMS = 8


def until_ready(client: ConvexClient, vector: list[float], seconds: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return client.action("docs:similar", {"vector": vector, "limit": 3})
        except Exception as exc:  # the index is built in the background after start
            if "still being built" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_vector_search_over_http_and_after_restart(server_factory, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = server_factory("vectors", data)
    client = ConvexClient(server.url)
    axis = [[1.0 if i == j else 0.0 for i in range(DIMS)] for j in range(DIMS)]
    ids = [client.mutation("docs:add", {"title": f"axis{j}", "kind": "doc" if j % 2 else "faq", "embedding": axis[j]})
           for j in range(DIMS)]
    near = [0.9, 0.1] + [0.0] * (DIMS - 2)
    hits = until_ready(client, near)
    assert [h["_id"] for h in hits[:2]] == [ids[0], ids[1]] and hits[0]["_score"] == pytest.approx(0.9939, abs=1e-3)
    assert [h["_id"] for h in client.action("docs:similar", {"vector": near, "kind": "doc"})][:1] == [ids[1]]
    with pytest.raises(Exception, match="has 2 dimensions, the index expects 8"):
        client.action("docs:similar", {"vector": [1.0, 0.0]})
    with pytest.raises(Exception, match="docs document.embedding: vector index 'by_embedding' needs 8 dimensions"):
        client.mutation("docs:add", {"title": "bad", "kind": "doc", "embedding": [1.0]})
    client.mutation("docs:remove", {"id": ids[0]})
    assert server.stop() == 0
    assert (data / "vectors" / "docs.by_embedding" / "meta.json").is_file()  # saved at shutdown
    server = server_factory("vectors", data)
    client = ConvexClient(server.url)
    assert [h["_id"] for h in until_ready(client, near)] == [ids[1], ids[2], ids[3]]
