"""Server configuration shared by `tape dev` and `tape serve`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.limits import DEFAULT_LIMITS, Limits


@dataclass
class ServerConfig:
    """Everything a gateway node needs to start."""

    app_dir: Path
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 3210
    log_url: str | None = None           # None: the FileLog in data_dir/log
    role: str = "committer"              # or "replica"
    committer_url: str | None = None     # replicas forward mutations here
    reload: bool = False                 # watch the app directory and reload on change
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)
    max_message_bytes: int = 8 << 20     # largest client message accepted
    max_send_buffer_bytes: int = 16 << 20  # a session queueing more than this is disconnected
    max_queries_per_session: int = 10_000
    max_sessions: int = 50_000
    checkpoint_interval: float = 0.0     # seconds between projection checkpoints (0: off)
    checkpoint_keep: int = 3
    static_dir: Path | None = None       # served at /, defaults to APP_DIR/public

    @property
    def log_location(self) -> str:
        return self.log_url or str(self.data_dir / "log")

    @property
    def projection_dir(self) -> Path:
        return self.data_dir / "projection"


NODE_KEY: web.AppKey[Any] = web.AppKey("node")
"""Where the aiohttp application keeps its `gateway.node.Node`."""
