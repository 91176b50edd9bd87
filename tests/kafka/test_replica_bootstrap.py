"""Kafka replicas: bootstrap from the committer's checkpoint; refuse a topic that deleted what they need."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.app import App
from gateway.config import ServerConfig
from gateway.node import Node
from gateway.replica import check_start_offset
from log.errors import LogError
from log.kafka_log import KafkaLog
from log.record import Record, Write
from tests.bootstrap_flow import KITCHEN, bootstrap_while_writing

pytestmark = pytest.mark.slow


async def test_kafka_replica_bootstraps_from_the_committers_checkpoint(tmp_path: Path, kafka_url: str) -> None:
    output, line = await bootstrap_while_writing(tmp_path, kafka_url, history=60)
    assert "bootstrapped from committer" in line, output
    assert int(re.search(r"checkpoint at offset (\d+)", line).group(1)) >= 60  # type: ignore[union-attr]


class TrimmedTopic(KafkaLog):
    """A KafkaLog whose broker reports a low watermark above 0, as after topic retention deleted records.

    (The Tansu test broker does not implement DeleteRecords or enforce retention.ms, so the deletion is
    reported at the one place Tape asks the broker for it: `low_watermark`.)
    """

    deleted_before = 0

    async def low_watermark(self) -> int:
        self._first = self.deleted_before
        return self._first


async def test_replica_start_offset_deleted_by_topic_retention_is_refused(kafka_url: str) -> None:
    log = TrimmedTopic(kafka_url)
    await log.open()
    try:
        await log.append([Record([Write("t", f"d{i}", b"{}")], function="f") for i in range(10)])
        TrimmedTopic.deleted_before = 6
        assert await log.low_watermark() == 6
        check_start_offset(log, 6, kafka_url)  # a replica that has applied offset 5 may follow
        with pytest.raises(LogError) as info:
            check_start_offset(log, 3, kafka_url)  # one that needs offset 3 may not
        message = str(info.value)
        assert "needs the log from offset 3" in message and "starts at offset 6" in message
        assert "empty --data" in message and "checkpoint" in message  # names the fix
    finally:
        await log.close()


async def test_new_replica_without_a_checkpoint_source_is_refused_on_a_trimmed_topic(
        tmp_path: Path, kafka_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = KafkaLog(kafka_url)
    await writer.open()
    await writer.append([Record([Write("t", f"d{i}", b"{}")], function="f") for i in range(5)])
    await writer.close()

    async def trimmed(self: KafkaLog) -> int:
        self._first = 3
        return 3

    monkeypatch.setattr(KafkaLog, "low_watermark", trimmed)
    config = ServerConfig(app_dir=KITCHEN, data_dir=tmp_path / "replica", log_url=kafka_url, role="replica")
    node = Node(config, App.load(KITCHEN))
    with pytest.raises(LogError, match="starts at offset 3.*--committer URL"):
        await node.start()
