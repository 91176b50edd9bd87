"""Fixtures shared by the gateway tests."""
from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from engine.app import App
from gateway.config import ServerConfig
from gateway.node import Node
from gateway.server import build_app
from tests.gateway.kitchen_deployment import APPS, Deployment


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    app_dir = APPS / "kitchen"
    node = Node(ServerConfig(app_dir=app_dir, data_dir=tmp_path / "data"), App.load(app_dir))
    async with TestClient(TestServer(build_app(node))) as client:
        yield Deployment(node, client)
