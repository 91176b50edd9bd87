"""Fixtures for the Kafka tests: one Tansu broker for the whole session, a fresh topic per test."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.kafka_broker import BrokerNotFound, TansuBroker, TcpProxy, free_port


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """A Tansu broker on a free loopback port, shared by the session (stopped at the end)."""
    try:
        broker = TansuBroker(log_path=tmp_path_factory.mktemp("kafka") / "tansu.log")
    except BrokerNotFound as exc:
        pytest.fail(f"no Kafka test broker: {exc}", pytrace=False)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def kafka_topic() -> str:
    """A topic name no other test uses."""
    return f"tape-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def kafka_url(kafka_broker: TansuBroker, kafka_topic: str) -> str:
    return kafka_broker.url(kafka_topic)


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[tuple[TansuBroker, TcpProxy]]:
    """A broker of this test's own, reached only through a `TcpProxy` that can play an outage."""
    real = free_port()
    proxy = TcpProxy(real).start()
    try:
        broker = TansuBroker(port=real, advertised_port=proxy.port, log_path=tmp_path / "tansu.log")
    except BrokerNotFound as exc:
        proxy.stop()
        pytest.fail(f"no Kafka test broker: {exc}", pytrace=False)
    broker.start()
    yield broker, proxy
    broker.stop()
    proxy.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A broker of this test's own (for tests that restart it and so lose every topic)."""
    try:
        broker = TansuBroker(log_path=tmp_path / "tansu.log")
    except BrokerNotFound as exc:
        pytest.fail(f"no Kafka test broker: {exc}", pytrace=False)
    broker.start()
    yield broker
    broker.stop()
