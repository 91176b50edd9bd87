"""`GET /health`: is this node fit to serve? JSON with its role, state, offset and lag; 200 or 503.

States: ``ok``; ``starting``; ``recovering`` (the committer paused writes after an
append whose outcome is unknown, see `engine.committer`); ``broken`` or ``fenced``
(the committer refuses writes until an operator acts: the reason says why);
``log_unreachable`` (the log's store does not answer); ``catching_up`` (a replica
that has not yet applied the log it found at start); ``lagging`` (a replica
more than ``max_lag`` records behind the log, default `DEFAULT_MAX_LAG`, or behind
it while its follower keeps failing). Only ``ok`` answers 200, so load balancers and
container health checks take every other node out of rotation.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from gateway.config import NODE_KEY
from log.errors import LogError

if TYPE_CHECKING:
    from gateway.node import Node

HEALTH_PATH = "/health"
DEFAULT_MAX_LAG = 1000  # records a replica may be behind the log and still count as healthy
LOG_PROBE_SECONDS = 1.0  # how long the probe of the log's end may take


async def node_health(node: "Node", max_lag: int = DEFAULT_MAX_LAG) -> dict[str, Any]:
    """The health report of `node`; ``report["healthy"]`` is True only in state ``ok``."""
    role = node.config.role
    runtime = node.runtime
    if runtime is None or node.log is None:
        return {"role": role, "state": "starting", "healthy": False}
    projection = runtime.projection
    report: dict[str, Any] = {"role": role, "offset": projection.applied_offset, "ts": projection.applied_ts}
    state, reason = "ok", None
    log_ = runtime.log
    try:
        probe = getattr(log_, "end_offset", None)
        end = await probe(LOG_PROBE_SECONDS) if probe is not None else log_.next_offset()
    except LogError as exc:
        end, state, reason = log_.next_offset(), "log_unreachable", str(exc)
    report["log_end"] = end
    report["lag"] = max(end - 1 - projection.applied_offset, 0)
    if role == "committer":
        writer = runtime.committer.health()
        fenced = getattr(log_, "fenced", None)
        if fenced:
            state, reason = "fenced", fenced
        elif writer["state"] != "ok":
            state, reason = writer["state"], writer.get("reason")
    else:
        replica = getattr(node, "replica", None)
        if replica is not None and not replica.caught_up and state == "ok" and report["lag"] == 0:
            replica.caught_up = True  # the start-up catch-up failed, but the follower has caught up since
        if replica is None or not replica.caught_up:
            state, reason = "catching_up", "the replica has not yet applied the log it found at start"
        elif state == "ok" and replica.last_error is not None and report["lag"] > 0:
            # (an error the follower met before the log went quiet does not count once it has everything)
            state, reason = "lagging", f"the log follower is failing: {replica.last_error}"
        elif state == "ok" and report["lag"] > max_lag:
            state, reason = "lagging", f"{report['lag']} records behind the log (more than {max_lag})"
    report["state"] = state
    if reason is not None:
        report["reason"] = reason
    report["healthy"] = state == "ok"
    return report


async def handle_health(request: web.Request) -> web.Response:
    """``GET /health[?max_lag=N]``: the report as JSON, HTTP 200 when healthy and 503 otherwise."""
    node: Node = request.app[NODE_KEY]
    try:
        max_lag = int(request.query.get("max_lag", DEFAULT_MAX_LAG))
    except ValueError:
        return web.Response(body=orjson.dumps({"error": "max_lag must be an integer (records)"}), status=400,
                            content_type="application/json")
    report = await node_health(node, max_lag)
    return web.Response(body=orjson.dumps(report), status=200 if report["healthy"] else 503,
                        content_type="application/json", headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    app.router.add_get(HEALTH_PATH, handle_health)


__all__ = ["node_health", "handle_health", "add_routes", "HEALTH_PATH", "DEFAULT_MAX_LAG"]
