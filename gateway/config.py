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
    max_session_args_bytes: int = 16 << 20  # args (compact JSON) one connection's subscriptions may hold
    max_total_args_bytes: int = 1 << 30  # args held by all subscriptions; beyond it new ones fail "Overloaded"
    max_sessions: int = 50_000
    header_timeout: float = 15.0         # seconds a connection may sit idle or take to send a complete header
                                         # (from opening or its last response: also the keep-alive idle time)
    body_timeout: float = 30.0           # seconds a request may take to send its whole body
    connect_timeout: float = 10.0        # seconds a new WebSocket may take to send its Connect message
    max_inflight_requests_per_session: int = 1024  # Mutations/Actions running at once; beyond it reading pauses
    shutdown_timeout: float = 1.0        # seconds a stopping server waits for running requests
    switch_interval: float = 0.001       # GIL switch interval while serving (sys.setswitchinterval)
    checkpoint_interval: float = 0.0     # seconds between projection checkpoints (0: off)
    checkpoint_keep: int = 3
    retain_seconds: float | None = None  # --retain: seconds of history kept (None: everything)
    archive: str | None = None           # where retention moves segments: None = DATA/log-archive, "none" = delete
    bootstrap_from: Path | None = None   # a new replica's checkpoint source directory (else: the committer)
    segment_bytes: int | None = None     # FileLog segment size (None: the default, 64 MiB); retention removes whole ones
    static_dir: Path | None = None       # served at /, defaults to APP_DIR/public
    query_at_ts_window: float = 300.0    # seconds of history /api/query_at_ts serves without the admin key
                                         # (a state that was live within that long ago; Convex serves ~30 s)
    cors_origins: tuple[str, ...] = ("*",)  # browser origins allowed on the public API ("*": any; (): no CORS)
    cors_max_age: int = 3600             # seconds a browser may cache a CORS preflight answer
    admin_key: str | None = field(default=None, repr=False)  # a replica's copy of the committer's key
    site_port: int | None = None         # HTTP actions (http.py) are served here (None: port + 1; 0: not served)
    max_http_body_bytes: int = 20 << 20  # largest request body an HTTP action accepts (413 past it)
    metrics_port: int | None = None      # also serve GET /metrics, without the admin key, on this port
    max_upload_bytes: int = 1 << 30      # largest file POSTed to an upload URL (413 past it)
    upload_timeout: float = 600.0        # seconds a file upload's body may take (body_timeout for the rest)
    public_url: str | None = None        # base of upload/file URLs (default http://HOST:PORT)

    @property
    def log_location(self) -> str:
        return self.log_url or str(self.data_dir / "log")

    @property
    def projection_dir(self) -> Path:
        return self.data_dir / "projection"


NODE_KEY: web.AppKey[Any] = web.AppKey("node")
"""Where the aiohttp application keeps its `gateway.node.Node`."""
