"""A served kitchen-app node behind aiohttp's test client, with its admin key (the `deployment` fixture in
conftest.py; shared by gateway tests)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.node import Node

APPS = Path(__file__).resolve().parents[1] / "apps"


class Deployment:
    def __init__(self, node: Node, client: TestClient) -> None:
        self.node = node
        self.client = client
        self.auth = {"Authorization": f"Convex {node.admin.value}"}

    async def mutate(self, path: str, args: dict[str, Any]) -> Any:
        r = await self.client.post("/api/mutation", json={"path": path, "args": args, "format": "json"})
        body = await r.json()
        assert r.status == 200, body
        return body["value"]

    async def query_at(self, headers: dict[str, str] | None = None, **body: Any) -> tuple[int, Any]:
        """POST /api/admin/query_at; (status, body)."""
        r = await self.client.post("/api/admin/query_at", json={"format": "json", **body},
                                   headers=self.auth if headers is None else headers)
        return r.status, await r.json()

    async def call(self, endpoint: str, post: bool = False, **args: Any) -> dict[str, Any]:
        """An admin-keyed GET (args as query parameters) or POST (as JSON) of /api/`endpoint`; asserts 200."""
        if post:
            r = await self.client.post(f"/api/{endpoint}", json=args, headers=self.auth)
        else:
            params = {k: str(v) for k, v in args.items() if v is not None}
            r = await self.client.get(f"/api/{endpoint}", params=params, headers=self.auth)
        body = await r.json()
        assert r.status == 200, body
        return body
