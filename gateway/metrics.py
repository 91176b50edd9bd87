"""`GET /metrics`: the deployment's health in the Prometheus text format (prometheus_client).

On the server's own port the endpoint needs the admin key, as the admin API does
(``Authorization: Convex <key>``, or ``Bearer <key>``, which is what Prometheus sends
with ``authorization: {credentials_file: DATA/admin_key}``): function paths and
traffic are not for everyone. ``--metrics-port PORT`` also serves it, without the
key, on a port of its own (bind it where only your Prometheus reaches).

Everything is read when scraped: the committer's counters, sessions and
subscriptions, the log and projection offsets, and the histograms of
`engine.metrics` (function durations by path and outcome, group-commit sizes,
fsync latency, scheduler lateness) and `REPLICA_APPLY_DELAY_SECONDS` below.
Serving requests pays only those histograms' observations and one integer
addition per WebSocket frame pushed (``Node.pushed_bytes``).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from engine.metrics import (COMMIT_BATCH_RECORDS, FSYNC_SECONDS, FUNCTION_SECONDS, SCHEDULER_LATENESS_SECONDS,
                            Histogram, LATENESS_BUCKETS, LabeledHistogram)
from gateway.config import NODE_KEY

if TYPE_CHECKING:
    from gateway.node import Node

METRICS_PATH = "/metrics"
#: Seconds from a record's commit timestamp to its application on this replica (per applied batch, its last record).
REPLICA_APPLY_DELAY_SECONDS = Histogram(LATENESS_BUCKETS)
_REGISTRY: "web.AppKey[CollectorRegistry]" = web.AppKey("tape.metrics.registry")
_PUBLIC: "web.AppKey[bool]" = web.AppKey("tape.metrics.public")


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc)
    buckets, total, _count = histogram.snapshot()
    family.add_metric([], [(floatToGoString(b), n) for b, n in buckets], total)
    return family


def _labeled(name: str, doc: str, histograms: LabeledHistogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=list(histograms.labels))
    for labels, histogram in sorted(histograms.items()):
        buckets, total, _count = histogram.snapshot()
        family.add_metric(list(labels), [(floatToGoString(b), n) for b, n in buckets], total)
    return family


class NodeCollector(Collector):
    """Reads a node's state into Prometheus metric families at scrape time."""

    def __init__(self, node: "Node") -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        role = node.config.role
        yield self._info(role)
        yield GaugeMetricFamily("tape_sessions", "Open WebSocket sessions.", value=len(node.sessions))
        subscriptions = sum(len(getattr(s, "queries", ())) for s in list(node.sessions))
        yield GaugeMetricFamily("tape_subscriptions", "Live query subscriptions over all sessions.",
                                value=subscriptions)
        shared = node.subscriptions.query_count if node.subscriptions is not None else 0
        yield GaugeMetricFamily("tape_shared_queries",
                                "Distinct (path, args, identity) queries the subscriptions share.", value=shared)
        yield CounterMetricFamily("tape_pushed_bytes", "WebSocket frame bytes sent (or queued) to clients.",
                                  value=node.pushed_bytes)
        runtime = node.runtime
        if runtime is None:
            return
        committer = runtime.committer
        yield CounterMetricFamily("tape_commits", "Transactions this node committed to the log (committer only).",
                                  value=committer.committed)
        yield CounterMetricFamily("tape_commit_batches", "Group commits (one log append + fsync each).",
                                  value=committer.batches)
        yield _histogram("tape_commit_batch_records", "Records per group commit.", COMMIT_BATCH_RECORDS)
        yield _histogram("tape_fsync_seconds", "Time of each fsync of the log's appended data (FileLog writer).",
                         FSYNC_SECONDS)
        yield _labeled("tape_function_duration_seconds",
                       "Time a function's handler ran, by path and outcome (success, app_error: it threw "
                       "AppError, error, timeout).", FUNCTION_SECONDS)
        yield _histogram("tape_scheduler_lateness_seconds",
                         "Seconds between a scheduled job's scheduledTime and its start.", SCHEDULER_LATENESS_SECONDS)
        yield GaugeMetricFamily("tape_scheduled_jobs_pending", "Scheduled jobs waiting for their time.",
                                value=runtime.scheduler.pending)
        yield CounterMetricFamily("tape_scheduled_jobs_completed", "Scheduled jobs this process finished.",
                                  value=runtime.scheduler.completed)
        projection = runtime.projection
        log_ = runtime.log
        applied, applied_ts = projection.applied_offset, projection.applied_ts
        yield GaugeMetricFamily("tape_applied_offset", "Last log offset applied to this node's projection.",
                                value=applied)
        if log_ is None:
            return
        end, last_ts = log_.next_offset() - 1, log_.last_ts()
        yield GaugeMetricFamily("tape_log_offset", "Last durable log offset this node knows of.", value=end)
        if role == "replica":
            behind = max(0, end - applied)
            yield GaugeMetricFamily("tape_replica_lag_records", "Log records this replica has not applied yet.",
                                    value=behind)
            lag = max(0.0, (last_ts - applied_ts) / 1e9) if behind else 0.0
            yield GaugeMetricFamily("tape_replica_lag_seconds",
                                    "Commit-time distance from the newest record to the last applied one.",
                                    value=lag)
            yield _histogram("tape_replica_apply_delay_seconds",
                             "Seconds from a record's commit to its application here.", REPLICA_APPLY_DELAY_SECONDS)

    def _info(self, role: str) -> GaugeMetricFamily:
        family = GaugeMetricFamily("tape_info", "This node (value 1): its role and version.", labels=["role", "version"])
        family.add_metric([role, self.node.version], 1)
        return family


def registry_for(node: "Node") -> CollectorRegistry:
    """A registry with the node's metrics and the process's (CPU, memory, open files)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    ProcessCollector(registry=registry)
    return registry


def observe_replica_apply(last_ts_ns: int) -> None:
    """A replica applied records up to one committed at `last_ts_ns`."""
    REPLICA_APPLY_DELAY_SECONDS.observe(max(0.0, (time.time_ns() - last_ts_ns) / 1e9))


async def handle_metrics(request: web.Request) -> web.Response:
    """GET /metrics: the Prometheus text; 401 without the admin key unless served on --metrics-port."""
    node: Node = request.app[NODE_KEY]
    if not request.app.get(_PUBLIC, False) and not node.admin.check(request.headers.get("Authorization")):
        return web.json_response({"code": "Unauthorized",
                                  "message": "/metrics needs the admin key: send 'Authorization: Convex <admin key>' "
                                             "(or Bearer), or serve it on --metrics-port"},
                                 status=401, headers={"WWW-Authenticate": 'Bearer realm="tape"'})
    return web.Response(body=generate_latest(request.app[_REGISTRY]), headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application, node: "Node") -> None:
    """`GET /metrics` behind the admin key (the node's own port)."""
    app[_REGISTRY] = registry_for(node)
    app.router.add_get(METRICS_PATH, handle_metrics)


def metrics_app(node: "Node") -> web.Application:
    """The app `--metrics-port` serves: only `GET /metrics`, without the admin key."""
    app = web.Application()
    app[NODE_KEY] = node
    app[_PUBLIC] = True
    app[_REGISTRY] = registry_for(node)
    app.router.add_get(METRICS_PATH, handle_metrics)
    return app


__all__ = ["METRICS_PATH", "NodeCollector", "REPLICA_APPLY_DELAY_SECONDS", "add_routes", "handle_metrics",
           "metrics_app", "observe_replica_apply", "registry_for"]
