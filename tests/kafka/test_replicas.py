"""A committer and read replicas as real `tape serve` processes, over Kafka and over a shared FileLog."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import aiohttp
import pytest

from client import Client, FunctionError
from tests.kafka_broker import TansuBroker, TcpProxy
from tests.server_process import ServerProcess

APPS = Path(__file__).resolve().parents[1] / "apps"
KITCHEN = APPS / "kitchen"

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------ helpers


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def call(server: ServerProcess, kind: str, path: str, args: dict[str, Any],
               headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One HTTP API call; returns the JSON body (status success or error)."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/api/{kind}", json={"path": path, "args": args, "format": "json"},
                             headers=headers or {}, timeout=aiohttp.ClientTimeout(total=60)) as resp:
            return await resp.json()  # type: ignore[no-any-return]


async def items(server: ServerProcess, list_id: str) -> list[str]:
    body = await call(server, "query", "lists:items", {"list_id": list_id})
    assert body["status"] == "success", body
    return [d["text"] for d in body["value"]]


class Cluster:
    """A committer and replicas (subprocesses) sharing one log; all stopped at the end."""

    def __init__(self, root: Path, log: str | None) -> None:
        self.root = root
        self.log = log
        self.servers: list[ServerProcess] = []
        self.committer: ServerProcess | None = None

    def start_committer(self, data: Path | None = None) -> ServerProcess:
        extra = ["--role", "committer"] + (["--log", self.log] if self.log else [])
        server = ServerProcess(KITCHEN, data or self.root / "committer", command="serve", extra=extra).start(40)
        self.servers.append(server)
        self.committer = server
        return server

    @property
    def admin_key(self) -> str:
        assert self.committer is not None
        return (self.committer.data_dir / "admin_key").read_text().strip()

    def start_replica(self, name: str, log: str | None = None, key: str | None = "committer",
                      port: int | None = None) -> ServerProcess:
        assert self.committer is not None
        extra = ["--role", "replica", "--committer", self.committer.url, "--log", log or self.log or ""]
        if key is not None:
            extra += ["--admin-key", self.admin_key if key == "committer" else key]
        server = ServerProcess(KITCHEN, self.root / name, port=port, command="serve", extra=extra).start(40)
        self.servers.append(server)
        return server

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[[str | None], Cluster]]:
    made: list[Cluster] = []

    def make(log: str | None) -> Cluster:
        cluster = Cluster(tmp_path, log)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


# ------------------------------------------------------------------ over Kafka


async def test_replicas_share_writes_live_and_answer_after_showing_them(
        cluster_factory: Callable[[str | None], Cluster], kafka_url: str) -> None:
    cluster = cluster_factory(kafka_url)
    committer = cluster.start_committer()
    r1 = cluster.start_replica("replica1")
    r2 = cluster.start_replica("replica2")
    async with Client(r1.url) as c1, Client(r2.url) as c2, Client(committer.url) as c0:
        list_id = await c1.mutation("lists:create", {"name": "groceries"})
        # subscriptions on the other replica and on the committer see the write live
        sub2 = c2.subscribe("lists:items", {"list_id": list_id})
        sub0 = c0.subscribe("lists:items", {"list_id": list_id})
        assert await sub2.next(10) == [] and await sub0.next(10) == []
        await c1.mutation("lists:add", {"list_id": list_id, "text": "milk"})
        assert [d["text"] for d in await sub2.next(10)] == ["milk"]
        assert [d["text"] for d in await sub0.next(10)] == ["milk"]
        sub1 = c1.subscribe("lists:items", {"list_id": list_id})
        assert [d["text"] for d in await sub1.next(10)] == ["milk"]
        await c2.mutation("lists:add", {"list_id": list_id, "text": "eggs"})
        assert [d["text"] for d in await sub1.next(10)] == ["milk", "eggs"]
        # read-your-writes through any replica: when the mutation returns, that replica shows it
        for i in range(15):
            via = (r1, r2)[i % 2]
            client = (c1, c2)[i % 2]
            await client.mutation("lists:add", {"list_id": list_id, "text": f"t{i}"})
            assert f"t{i}" in await items(via, list_id)
            body = await call(via, "mutation", "lists:add", {"list_id": list_id, "text": f"h{i}"})
            assert body["status"] == "success", body
            assert f"h{i}" in await items(via, list_id)
        # app errors come back through the hop with their data
        with pytest.raises(FunctionError) as info:
            await c2.mutation("lists:add", {"list_id": list_id, "text": ""})
        assert getattr(info.value, "data", None) == {"code": "EMPTY_TEXT"}
    everything = await items(committer, list_id)
    assert len(everything) == 2 + 30
    await eventually(lambda: _same(r1, r2, list_id, everything), what="replicas to converge")


async def _same(r1: ServerProcess, r2: ServerProcess, list_id: str, expected: list[str]) -> bool:
    return await items(r1, list_id) == expected and await items(r2, list_id) == expected


async def test_forwarded_mutations_are_exactly_once(
        cluster_factory: Callable[[str | None], Cluster], kafka_url: str) -> None:
    cluster = cluster_factory(kafka_url)
    committer = cluster.start_committer()
    r1 = cluster.start_replica("replica1")
    r2 = cluster.start_replica("replica2")
    created = await call(r1, "mutation", "lists:create", {"name": "l"})
    list_id = created["value"]
    key = {"Idempotency-Key": "client-7:1"}
    first = await call(r1, "mutation", "lists:add", {"list_id": list_id, "text": "once"}, key)
    again = await call(r2, "mutation", "lists:add", {"list_id": list_id, "text": "once"}, key)
    direct = await call(committer, "mutation", "lists:add", {"list_id": list_id, "text": "once"}, key)
    assert first["status"] == again["status"] == direct["status"] == "success"
    assert first["value"] == again["value"] == direct["value"]
    assert await items(r2, list_id) == ["once"]
    assert await items(committer, list_id) == ["once"]


async def test_internal_endpoint_needs_the_admin_key(
        cluster_factory: Callable[[str | None], Cluster], kafka_url: str) -> None:
    cluster = cluster_factory(kafka_url)
    committer = cluster.start_committer()
    keyless = cluster.start_replica("keyless", key="tape_admin_wrong")
    body = await call(keyless, "mutation", "lists:create", {"name": "x"})
    assert body["status"] == "error" and "admin key" in body["errorMessage"], body
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{committer.url}/api/internal/mutation",
                             json={"path": "lists:create", "args": {"name": "x"}}) as resp:
            assert resp.status == 401
        async with http.post(f"{keyless.url}/api/internal/mutation", json={"path": "lists:create", "args": {}},
                             headers={"Authorization": f"Convex {cluster.admin_key}"}) as resp:
            assert resp.status in (401, 409)  # a replica never runs forwarded mutations


async def test_killed_replica_catches_up_after_restart(
        cluster_factory: Callable[[str | None], Cluster], kafka_url: str) -> None:
    cluster = cluster_factory(kafka_url)
    committer = cluster.start_committer()
    r1 = cluster.start_replica("replica1")
    r2 = cluster.start_replica("replica2")
    list_id = (await call(r1, "mutation", "lists:create", {"name": "l"}))["value"]
    for i in range(5):
        assert (await call(r2, "mutation", "lists:add", {"list_id": list_id, "text": f"a{i}"}))["status"] == "success"
    r2.kill()  # SIGKILL: no shutdown code, projection flushed only as far as RocksDB got
    for i in range(20):
        assert (await call(r1, "mutation", "lists:add", {"list_id": list_id, "text": f"b{i}"}))["status"] == "success"
    assert (await call(committer, "mutation", "lists:add", {"list_id": list_id, "text": "c"}))["status"] == "success"
    expected = [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(20)] + ["c"]
    restarted = ServerProcess(KITCHEN, r2.data_dir, port=r2.port, command="serve", extra=r2.extra).start(40)
    cluster.servers.append(restarted)
    assert await items(restarted, list_id) == expected  # caught up before serving
    async with Client(restarted.url) as client:
        sub = client.subscribe("lists:items", {"list_id": list_id})
        assert len(await sub.next(10)) == 26
        await call(r1, "mutation", "lists:add", {"list_id": list_id, "text": "live"})
        assert [d["text"] for d in await sub.next(10)][-1] == "live"


async def test_broker_outage_fails_mutations_in_time_and_queries_keep_serving(
        cluster_factory: Callable[[str | None], Cluster], own_broker: TansuBroker, kafka_topic: str) -> None:
    url = own_broker.url(kafka_topic) + "?append_timeout=2"
    cluster = cluster_factory(url)
    committer = cluster.start_committer()
    r1 = cluster.start_replica("replica1")
    r2 = cluster.start_replica("replica2")
    list_id = (await call(r1, "mutation", "lists:create", {"name": "l"}))["value"]
    assert (await call(r2, "mutation", "lists:add", {"list_id": list_id, "text": "before"}))["status"] == "success"
    await eventually(lambda: _same(r1, r2, list_id, ["before"]), what="replicas to apply")

    own_broker.stop()
    for server in (r1, committer):
        t0 = time.monotonic()
        body = await call(server, "mutation", "lists:add", {"list_id": list_id, "text": "during"})
        took = time.monotonic() - t0
        assert body["status"] == "error", body
        # the first is in doubt (its outcome is unknown); the committer then refuses new writes (not run)
        message = body["errorMessage"]
        assert "Kafka" in message and ("outcome of this mutation is unknown" in message or "did not run" in message), body
        assert took < 6.0, took
    for server in (committer, r1, r2):  # reads keep being served from each projection
        assert await items(server, list_id) == ["before"]

    own_broker.start()  # memory storage: the topic and its history are gone

    async def refused_for_good() -> bool:  # once the recovering committer reaches the broker, it fences
        body = await call(r2, "mutation", "lists:add", {"list_id": list_id, "text": "after"})
        assert body["status"] == "error", body
        return "refuses to write a new history" in body["errorMessage"]
    await eventually(refused_for_good, what="the committer to refuse the new, empty topic")
    body = await call(committer, "mutation", "lists:create", {"name": "new"})
    assert body["status"] == "error" and "refuses" in body["errorMessage"], body
    for server in (committer, r1, r2):
        assert await items(server, list_id) == ["before"]
    # a replica restarted now refuses the new (empty, or auto-created with several partitions) topic
    r2.stop()
    with pytest.raises(RuntimeError, match="Refusing to (follow a different|start a new) history|has [0-9]+ partitions; a Tape log needs a topic with exactly one"):
        ServerProcess(KITCHEN, r2.data_dir, port=r2.port, command="serve", extra=r2.extra).start(40)


async def test_broker_that_comes_back_with_its_data_resumes_without_restart(
        cluster_factory: Callable[[str | None], Cluster],
        proxied_broker: tuple[TansuBroker, TcpProxy], kafka_topic: str) -> None:
    broker, proxy = proxied_broker
    cluster = cluster_factory(broker.url(kafka_topic) + "?append_timeout=2")
    cluster.start_committer()
    r1 = cluster.start_replica("replica1")
    r2 = cluster.start_replica("replica2")
    list_id = (await call(r1, "mutation", "lists:create", {"name": "l"}))["value"]
    proxy.down()
    t0 = time.monotonic()
    body = await call(r1, "mutation", "lists:add", {"list_id": list_id, "text": "doubtful"})
    assert body["status"] == "error" and "Kafka" in body["errorMessage"], body
    assert "outcome of this mutation is unknown" in body["errorMessage"], body
    assert time.monotonic() - t0 < 6.0
    assert await items(r2, list_id) == []
    proxy.up()

    async def works() -> bool:
        body = await call(r2, "mutation", "lists:add", {"list_id": list_id, "text": "back"})
        return body["status"] == "success"
    await eventually(works, timeout=30, what="mutations to work again")
    # the append in doubt was settled (committed once) when the committer recovered, before "back"
    await eventually(lambda: _same(r1, r2, list_id, ["doubtful", "back"]), what="both replicas to apply it")


# ------------------------------------------------------------------ over a shared FileLog


async def test_replica_on_the_committers_file_log(cluster_factory: Callable[[str | None], Cluster],
                                                  tmp_path: Path) -> None:
    cluster = cluster_factory(None)
    committer = cluster.start_committer(tmp_path / "committer")
    log_dir = str(committer.data_dir / "log")
    replica = cluster.start_replica("replica", log=log_dir)
    async with Client(replica.url) as on_replica, Client(committer.url) as on_committer:
        list_id = await on_replica.mutation("lists:create", {"name": "l"})
        assert await items(replica, list_id) == []
        sub = on_replica.subscribe("lists:items", {"list_id": list_id})
        assert await sub.next(10) == []
        await on_committer.mutation("lists:add", {"list_id": list_id, "text": "from committer"})
        assert [d["text"] for d in await sub.next(10)] == ["from committer"]
        await on_replica.mutation("lists:add", {"list_id": list_id, "text": "from replica"})
        assert await items(replica, list_id) == ["from committer", "from replica"]
    assert await items(committer, list_id) == ["from committer", "from replica"]
    assert not (replica.data_dir / "log").exists()  # the replica keeps only its projection
