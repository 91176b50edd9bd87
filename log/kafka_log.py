"""KafkaLog: the commit log on a single-partition Kafka topic.

URL: ``kafka://host:port[,host:port...]/topic[?option=value&...]``. Options
(also constructor keywords): ``append_timeout`` (seconds, default 5),
``fetch_wait_ms`` (how long the broker may hold an empty fetch; bounds the
replica lag, default 5; idle readers poll that often), ``replication_factor`` (for a topic Tape creates,
default 1), ``create`` (``0`` to refuse to create a missing topic).

Layout and guarantees
---------------------
* One deployment = one topic with exactly one partition (created with one
  partition and unlimited retention when missing; a topic with more
  partitions is refused with a LogError). A topic created by hand must keep
  its records forever (``retention.ms=-1``, no compaction): replicas and
  restarts replay it from offset 0.
* A record's Kafka value is the same self-checking Avro frame FileLog writes
  (`log.codec`). The log offset of a record is its Kafka offset; the frame
  carries the commit ts in nanoseconds (Kafka's own timestamp holds the same
  instant in milliseconds).
* `append` is a group commit: every record of one call goes into one Kafka
  record batch (more only past ``max_batch_bytes``), produced with
  ``acks="all"``; it returns after the broker acknowledged, and then sets
  each record's offset and ts. Timestamps are chosen like FileLog's: a
  caller's ts is kept when it is above the previous one, otherwise
  max(now, previous + 1).
* The producer is *not* idempotent (brokers such as Tansu lack it), so a
  produce retried after a lost acknowledgement can store a batch twice. Such
  a copy carries the commit ts of the records it repeats: **every reader
  skips a record whose ts is not above the highest ts before it**, so a
  duplicate is never applied twice. Offsets seen by readers can therefore
  have gaps (the skipped copies); ts stay strictly increasing.
* A broker that is down or slow makes `append` fail after ``append_timeout``
  seconds instead of hanging. Records that were handed to the producer may
  or may not have reached the topic: the append raises `LogOutcomeUnknown`
  and the log keeps them *in doubt*. `settle` (called by the committer while
  it recovers, and by the next `append` otherwise) re-sends exactly those
  frames, with their commit ts, once the broker answers: whether or not the
  first send landed, the records are then in the topic exactly once as
  readers see it (a second copy carries the same ts and is skipped). Every
  record written later gets a ts above every ts ever tried, so a first send
  that lands even after the re-send is skipped too. A topic that
  disappeared, an end below what this process already wrote (a broker that
  lost its data, e.g. Tansu's memory storage after a restart), or records
  this writer never produced (another writer) fence the log for good: every
  later append fails with a LogWriteError saying why, instead of silently
  starting a new history. A watchdog checks the topic every second on a
  writing log, and every acknowledged offset is compared with the expected
  one, so a lost topic is noticed even when no append failed. A restart of
  the committer replays what is in the topic.
* `read`/`tail` use a consumer with ``assign`` + ``seek`` + ``getmany`` (no
  consumer group); a tail that stays idle checks now and then that the topic
  still exists and reaches its position, and raises LogError otherwise.
* `offset_for_timestamp` is a binary search over record timestamps (brokers
  differ in how well they implement ``offsets_for_times``).
* `truncate` is impossible on Kafka: it raises LogError unless it would drop
  nothing.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, KafkaTimeoutError, OffsetOutOfRangeError, RequestTimedOutError

from log.base import Log
from log.codec import decode, encode_payload, frame_from_payload
from log.errors import LogClosedError, LogCorruptError, LogError, LogFormatError, LogOutcomeUnknown, LogWriteError
from log.record import Record

logger = logging.getLogger("tape.log.kafka")

DEFAULT_APPEND_TIMEOUT = 5.0
DEFAULT_FETCH_WAIT_MS = 5
DEFAULT_MAX_BATCH_BYTES = 1_000_000  # fits Kafka's default message.max.bytes
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_END_QUIET_MS = 100  # an empty fetch this long after a successful ListOffsets = the end
_TAIL_CHECK_SECONDS = 2.0
_OPEN_TAIL_WINDOW = 64
_NO_STOP = 1 << 62  # `stop` of a tail
_TRANSIENT = (KafkaError, OSError, asyncio.TimeoutError)


def parse_kafka_url(url: str) -> tuple[str, str, dict[str, str]]:
    """Split ``kafka://servers/topic?opts`` into (servers, topic, options)."""
    parts = urlsplit(url)
    if parts.scheme != "kafka":
        raise LogError(f"not a kafka:// URL: {url!r}")
    servers = parts.netloc
    topic = unquote(parts.path.lstrip("/"))
    if not servers:
        raise LogError(f"{url!r} names no broker (kafka://host:port/topic)")
    if not topic or not _TOPIC_NAME.match(topic):
        raise LogError(f"{url!r} names no valid topic (kafka://host:port/topic; "
                       "letters, digits, '.', '_' and '-')")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return servers, topic, options


@dataclass
class _InDoubt:
    """An append handed to the producer: its records and their frames and commit ts (re-sent as they are)."""

    records: list[Record]
    frames: list[bytes]
    stamps: list[int]


class KafkaLog(Log):
    """The commit log on a one-partition Kafka topic (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        append_timeout: float | None = None,
        fetch_wait_ms: int | None = None,
        replication_factor: int | None = None,
        create: bool | None = None,
        open_timeout: float = 15.0,
        read_timeout: float = 30.0,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        watch_interval: float = 1.0,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.url = url
        self.servers, self.topic, opts = parse_kafka_url(url)
        known = {"append_timeout", "fetch_wait_ms", "replication_factor", "create"}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise LogError(f"{url!r}: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        try:
            self.append_timeout = float(append_timeout if append_timeout is not None
                                        else opts.get("append_timeout", DEFAULT_APPEND_TIMEOUT))
            self.fetch_wait_ms = int(fetch_wait_ms if fetch_wait_ms is not None
                                     else opts.get("fetch_wait_ms", DEFAULT_FETCH_WAIT_MS))
            self.replication_factor = int(replication_factor if replication_factor is not None
                                          else opts.get("replication_factor", 1))
        except ValueError as exc:
            raise LogError(f"{url!r}: bad option value ({exc})") from None
        self.create = create if create is not None else opts.get("create", "1") not in ("0", "false", "no")
        if self.append_timeout <= 0 or self.fetch_wait_ms < 0 or max_batch_bytes < 1024:
            raise LogError(f"{url!r}: append_timeout must be > 0, fetch_wait_ms >= 0, max_batch_bytes >= 1024")
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.max_batch_bytes = max_batch_bytes
        self.watch_interval = watch_interval
        self._clock = clock
        self._tp = TopicPartition(self.topic, 0)
        self._opened = False
        self._closed = False
        self._next = 0              # offset the next acknowledged record gets
        self._last_ts = 0           # highest ts in the topic (duplicates never raise it)
        self._first = 0             # the topic's low watermark (Kafka retention deletes below it)
        self._last_base = -1        # base offset of the last batch known to be in the topic
        self._tried_ts = 0          # highest ts ever handed to the producer (failed appends too)
        self._doubt = False         # an append failed: settle (re-send, check the end) before the next one
        self._pending: _InDoubt | None = None  # records handed to the producer and not acknowledged
        self._fatal: str | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._meta: AIOKafkaConsumer | None = None
        self._meta_lock = asyncio.Lock()
        self._append_lock = asyncio.Lock()
        self._producer: AIOKafkaProducer | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._consumers: set[AIOKafkaConsumer] = set()
        self.duplicates_skipped = 0

    def __repr__(self) -> str:
        return f"KafkaLog({self.url!r}, next_offset={self._next})"

    # ------------------------------------------------------------ state

    def next_offset(self) -> int:
        """One past the last record of the topic known here (Kafka's log end offset)."""
        return self._next

    def last_ts(self) -> int:
        """The highest commit ts known to be in the topic, 0 when it is empty."""
        return self._last_ts

    def first_offset(self) -> int:
        """The topic's first offset when last asked (`low_watermark`): topic retention deletes what is below."""
        return self._first

    async def low_watermark(self) -> int:
        """Ask the broker for the topic's first offset (records below it were deleted by retention)."""
        assert self._meta is not None
        starts = await self._meta.beginning_offsets([self._tp])
        self._first = int(starts[self._tp])
        return self._first

    @property
    def fenced(self) -> str | None:
        """Why this log refuses appends for good, or None."""
        return self._fatal

    def _where(self) -> str:
        return f"Kafka topic {self.topic!r} at {self.servers}"

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"{self._where()}: log is closed")
        if not self._opened:
            raise LogClosedError(f"{self._where()}: log is not open")

    # ------------------------------------------------------------ clients

    def _new_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.servers,
            client_id=f"tape-log-reader-{self.topic}",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
            fetch_max_wait_ms=self.fetch_wait_ms,
            fetch_min_bytes=1,
            max_partition_fetch_bytes=8 << 20,
            request_timeout_ms=max(int(self.append_timeout * 2000), 10_000),
            retry_backoff_ms=50,
        )

    async def _consumer(self) -> AIOKafkaConsumer:
        consumer = self._new_consumer()
        try:
            await asyncio.wait_for(consumer.start(), self.open_timeout)
        except BaseException as exc:
            await self._stop_quietly(consumer)
            if isinstance(exc, _TRANSIENT):
                raise LogError(f"{self._where()}: cannot connect to the broker ({exc!r})") from exc
            raise
        consumer.assign([self._tp])
        self._consumers.add(consumer)
        return consumer

    async def _release(self, consumer: AIOKafkaConsumer) -> None:
        self._consumers.discard(consumer)
        await self._stop_quietly(consumer)

    @staticmethod
    async def _stop_quietly(client: Any, timeout: float = 5.0) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(client.stop() if hasattr(client, "stop") else client.close()),
                                   timeout)
        except Exception:  # a client of an unreachable broker may fail to stop cleanly
            logger.debug("closing a Kafka client failed", exc_info=True)

    # ------------------------------------------------------------ open/close

    async def open(self) -> None:
        """Connect, create the topic if it is missing, and learn its end and last ts."""
        if self._opened:
            if self._closed:
                raise LogClosedError(f"{self._where()}: a closed KafkaLog cannot be reopened")
            return
        try:
            await asyncio.wait_for(self._open(), self.open_timeout)
        except asyncio.TimeoutError:
            await self._close_clients()
            raise LogError(f"{self._where()}: no answer from the broker within {self.open_timeout:g}s") from None
        except LogError:
            await self._close_clients()
            raise
        except KafkaError as exc:
            await self._close_clients()
            raise LogError(f"{self._where()}: cannot open the log ({exc!r})") from exc
        except BaseException:
            await self._close_clients()
            raise
        self._opened = True

    async def _open(self) -> None:
        self._admin = AIOKafkaAdminClient(bootstrap_servers=self.servers, client_id=f"tape-log-admin-{self.topic}",
                                          request_timeout_ms=int(self.open_timeout * 1000))
        try:
            await self._admin.start()
        except KafkaError as exc:
            raise LogError(f"{self._where()}: cannot connect to the broker ({exc})") from exc
        await self._ensure_topic()
        self._meta = self._new_consumer()
        await self._meta.start()
        self._meta.assign([self._tp])
        self._meta.pause(self._tp)  # fetch only while scanning
        hw = await self._high_watermark()
        await self.low_watermark()
        # Up to the high watermark read above: a writer appending all the time never leaves the quiet
        # moment an open-ended scan waits for.
        records = await self._scan_from(max(hw - _OPEN_TAIL_WINDOW, self._first), reach=hw) if hw > 0 else []
        if records:
            self._next = records[-1][0] + 1
            self._last_ts = max(ts for _, ts in records)
        self._next = max(self._next, hw)
        self._last_base = hw - 1
        self._tried_ts = self._last_ts

    async def _ensure_topic(self) -> None:
        """Create the topic with one partition if missing; refuse one with several.

        Only a full-listing metadata request is used to look for the topic: a
        request naming a missing topic makes some brokers auto-create it
        with their default (several) partitions.
        """
        assert self._admin is not None
        topics = await self._admin.list_topics()
        if self.topic not in topics:
            if not self.create:
                raise LogError(f"{self._where()}: the topic does not exist (and create=0)")
            # The log is the database: Kafka must never expire its records.
            response = await self._admin.create_topics([NewTopic(
                self.topic, num_partitions=1, replication_factor=self.replication_factor,
                topic_configs={"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"})])
            for entry in getattr(response, "topic_errors", []):
                code, message = entry[1], entry[2] if len(entry) > 2 else None
                if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (someone else was faster)
                    raise LogError(f"{self._where()}: cannot create the topic (error {code}: {message})")
            logger.info("created %s with one partition", self._where())
        described = await self._admin.describe_topics([self.topic])
        for entry in described:
            if entry.get("topic") != self.topic:
                continue
            count = len(entry.get("partitions") or [])
            if count != 1:
                raise LogError(
                    f"{self._where()} has {count} partitions; a Tape log needs a topic with exactly one "
                    "(total order). Let Tape create it, or create it with 1 partition.")

    async def close(self) -> None:
        """Wait for an append in flight, then stop every Kafka client; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
            self._watch_task = None
        try:
            await asyncio.wait_for(self._append_lock.acquire(), self.append_timeout + 1)
            self._append_lock.release()
        except asyncio.TimeoutError:
            pass
        await self._close_clients()

    async def _close_clients(self) -> None:
        for consumer in list(self._consumers):
            await self._release(consumer)
        producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop_quietly(producer, self.append_timeout + 1)
        meta, self._meta = self._meta, None
        if meta is not None:
            await self._stop_quietly(meta)
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                await asyncio.wait_for(admin.close(), 5)
            except Exception:
                logger.debug("closing the Kafka admin client failed", exc_info=True)

    # ------------------------------------------------------------ end of the topic

    async def _high_watermark(self) -> int:
        """Kafka's end offset of the partition (raises on an unreachable broker).

        Brokers differ: Apache Kafka reports the end of the log; Tansu reports
        one past the base offset of the last batch. Either way it is never
        above the true end, which `_scan_from` finds by reading.
        """
        assert self._meta is not None
        ends = await self._meta.end_offsets([self._tp])
        return int(ends[self._tp])

    async def _scan_from(self, start: int, stop: int | None = None, reach: int | None = None) -> list[tuple[int, int]]:
        """(offset, ts) of every record from `start` to `stop` (None: the current end), via the meta consumer.

        With `reach`, the scan ends with the fetch that got past offset `reach - 1` (records appended
        meanwhile may follow), instead of waiting for a quiet fetch that a busy writer never leaves.
        """
        meta = self._meta
        if meta is None:
            raise LogClosedError(f"{self._where()}: log is closed")
        out: list[tuple[int, int]] = []
        async with self._meta_lock:
            meta.seek(self._tp, start)
            meta.resume(self._tp)
            try:
                done = stop is not None and start >= stop
                while not done:
                    try:
                        got = await meta.getmany(self._tp, timeout_ms=_END_QUIET_MS, max_records=4096)
                    except OffsetOutOfRangeError:
                        break
                    msgs = got.get(self._tp)
                    if not msgs:
                        break
                    for m in msgs:
                        if stop is not None and m.offset >= stop:
                            done = True
                            break
                        out.append((m.offset, self._decode(m)[0].ts))
                    if stop is not None and out and out[-1][0] >= stop - 1:
                        done = True
                    if reach is not None and out and out[-1][0] >= reach - 1:
                        done = True
            finally:
                meta.pause(self._tp)
        return out

    async def _scan_range(self, start: int, stop: int) -> list[tuple[int, int]]:
        """(offset, ts) of the records in [start, stop), which the broker acknowledged: keeps reading
        through slow fetches (a broker just back from a stall) for up to ``read_timeout`` seconds."""
        out: list[tuple[int, int]] = []
        deadline = time.monotonic() + self.read_timeout
        pos = start
        while pos < stop:
            got = await self._scan_from(pos, stop)
            out.extend(got)
            if got:
                pos = got[-1][0] + 1
            elif time.monotonic() > deadline:
                break
            else:
                await asyncio.sleep(0.05)
        return out

    async def _topic_exists(self) -> bool:
        assert self._meta is not None
        return self.topic in await self._meta.topics()

    def _lost(self, why: str) -> str:
        role = ("this node refuses to write a new history over it" if self._producer is not None
                else "this reader stops here rather than mix two histories")
        return (f"{self._where()}: {why}. The broker lost committed records (a broker with memory "
                f"storage that restarted, or a deleted topic); {role}. Restore the topic (or start a "
                "new deployment) and restart.")

    async def _check_topic(self) -> None:
        """Fence the log if the topic vanished or ends below what this process wrote."""
        known_base = self._last_base
        if not await self._topic_exists():
            self._fence(self._lost("the topic no longer exists"))
        hw = await self._high_watermark()
        if known_base >= 0 and hw < known_base + 1:
            self._fence(self._lost(f"the topic ends at offset {hw} but already held records up to "
                                   f"offset {max(self._next - 1, known_base)}"))

    def _fence(self, why: str) -> None:
        if self._fatal is None:
            self._fatal = why
            logger.error("%s", why)
        raise LogWriteError(self._fatal)

    async def _settle(self, deadline: float) -> None:
        """Settle an append in doubt: re-send its frames (same ts), so it is in the topic exactly once.

        Without frames in doubt (nothing was handed to the producer) only the
        end of the topic is checked. Records there that this writer never
        produced fence the log.
        """
        await self._check_topic()
        pending = self._pending
        if pending is None:
            extra = await self._scan_from(self._next)
            if extra:
                await self._check_copies(self._next, extra[-1][0] + 1, set())
                self._next = extra[-1][0] + 1
        else:
            await self._produce(pending, deadline)
            logger.warning("%s: settled an append in doubt: records at offsets %d..%d", self._where(),
                           pending.records[0].offset, pending.records[-1].offset)
        self._pending = None
        self._doubt = False

    @property
    def in_doubt(self) -> bool:
        """True while an append's outcome is unknown (see `settle`)."""
        return self._doubt

    async def settle(self) -> bool:
        """Make an append whose outcome was unknown certain; False when nothing was in doubt.

        Re-sends the records of the unacknowledged append and waits for the
        broker's acknowledgement: afterwards they are committed, exactly once
        as every reader sees them, and `next_offset()` is past them. Raises
        LogWriteError while the broker still does not answer (the doubt stays;
        call again later), or when the log is fenced.
        """
        self._check_open()
        if self._fatal is not None:
            raise LogWriteError(self._fatal)
        if not self._doubt:
            return False
        async with self._append_lock:
            self._check_open()
            if self._fatal is not None:
                raise LogWriteError(self._fatal)
            if not self._doubt:
                return False
            loop = asyncio.get_running_loop()
            try:
                if self._producer is None:
                    await self._start_producer()
                await asyncio.wait_for(self._settle(loop.time() + self.append_timeout), self.append_timeout + 1.0)
            except LogWriteError:
                raise
            except (asyncio.TimeoutError, KafkaError, OSError) as exc:
                raise LogWriteError(f"{self._where()}: the broker still does not answer ({self._reason(exc)}); "
                                    "the earlier append stays in doubt") from exc
        return True

    async def end_offset(self, timeout: float = 1.0) -> int:
        """The end of the topic as the broker reports it now (at least what this log knows); LogError if unreachable."""
        self._check_open()
        try:
            hw = await asyncio.wait_for(self._high_watermark(), timeout)
        except (asyncio.TimeoutError, KafkaError, OSError) as exc:
            raise LogError(f"{self._where()}: the broker did not report the end of the topic within "
                           f"{timeout:g}s ({self._reason(exc)})") from None
        return max(hw, self._next)

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, asyncio.TimeoutError):
            return f"no acknowledgement within {self.append_timeout:g}s"
        if isinstance(exc, (RequestTimedOutError, KafkaTimeoutError)):
            return f"no acknowledgement within {self.append_timeout:g}s: {type(exc).__name__}"
        return f"{type(exc).__name__}: {exc}"

    async def _watch(self) -> None:
        """Writer side: check the topic every `watch_interval` seconds."""
        while not self._closed and self._fatal is None:
            await asyncio.sleep(self.watch_interval)
            if self._append_lock.locked():
                continue
            try:
                await asyncio.wait_for(self._check_topic(), max(self.append_timeout, 1.0))
            except LogWriteError:
                return
            except _TRANSIENT:
                continue  # broker unreachable: appends will fail (and check) on their own
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s: topic check failed", self._where())

    # ------------------------------------------------------------ appending

    async def append(self, records: list[Record]) -> None:
        """Produce `records` as one group commit; see the module docstring."""
        self._check_open()
        if self._fatal is not None:
            raise LogWriteError(self._fatal)
        if not records:
            return
        payloads = [encode_payload(r) for r in records]
        async with self._append_lock:
            self._check_open()
            if self._fatal is not None:
                raise LogWriteError(self._fatal)
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(self._append(records, payloads, loop.time() + self.append_timeout),
                                       self.append_timeout + 1.0)
            except LogWriteError:
                if self._pending is not None and self._pending.records is records and not self._doubt:
                    self._pending = None  # refused before anything was sent (a record too large)
                raise
            except (asyncio.TimeoutError, KafkaError, OSError) as exc:
                self._doubt = True
                reason = self._reason(exc)
                if self._pending is not None and self._pending.records is records:
                    raise LogOutcomeUnknown(
                        f"append to {self._where()} failed ({reason}); the broker may be down or overloaded. "
                        "The outcome is unknown: the records may or may not have reached the topic. The log "
                        "re-sends them once the broker answers, so they are then committed exactly once.") from exc
                raise LogWriteError(f"append to {self._where()} failed ({reason}); the broker may be down "
                                    "or overloaded. The records were not written (an earlier append is still "
                                    "in doubt).") from exc

    async def _start_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.servers,
            client_id=f"tape-log-writer-{self.topic}",
            acks="all",
            enable_idempotence=False,
            linger_ms=0,
            max_batch_size=self.max_batch_bytes,
            max_request_size=max(self.max_batch_bytes * 2, 1 << 20),
            # The producer gives a batch up (and never retries it again) before `append`
            # reports a failure: a batch reported as failed must not land later.
            request_timeout_ms=max(int(self.append_timeout * 800), 100),
            retry_backoff_ms=50,
        )
        try:
            await producer.start()
        except BaseException:
            await self._stop_quietly(producer)
            raise
        self._producer = producer
        if self._watch_task is None and self.watch_interval > 0:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch(), name=f"kafka-log-watch:{self.topic}")
        return producer

    async def _append(self, records: list[Record], payloads: list[bytes], deadline: float) -> None:
        if self._producer is None:
            await self._start_producer()
        if self._doubt:
            await self._settle(deadline)
        expected = self._next
        now = self._clock()
        last = max(self._last_ts, self._tried_ts)
        stamps: list[int] = []
        frames: list[bytes] = []
        for i, (rec, payload) in enumerate(zip(records, payloads)):
            ts = rec.ts  # a caller-chosen commit ts is kept if it keeps ts increasing
            if ts <= last:
                ts = now if now > last else last + 1
            last = ts
            stamps.append(ts)
            frames.append(frame_from_payload(payload, expected + i, ts))
        self._tried_ts = max(self._tried_ts, last)
        self._pending = _InDoubt(records, frames, stamps)
        await self._produce(self._pending, deadline)
        self._pending = None

    async def _produce(self, job: _InDoubt, deadline: float) -> None:
        """Send `job`'s frames (several Kafka batches past ``max_batch_bytes``) and account for the answer."""
        producer = self._producer
        assert producer is not None
        batches: list[tuple[Any, int, int]] = []  # (builder, first index, count)
        builder = producer.create_batch()
        first = 0
        for i, (frame, ts) in enumerate(zip(job.frames, job.stamps)):
            if builder.append(key=None, value=frame, timestamp=ts // 1_000_000) is None:
                batches.append((builder, first, i - first))
                builder, first = producer.create_batch(), i
                if builder.append(key=None, value=frame, timestamp=ts // 1_000_000) is None:
                    raise LogWriteError(f"a record of {len(frame)} bytes does not fit a Kafka batch "
                                        f"({self.max_batch_bytes} bytes)")
        batches.append((builder, first, len(job.frames) - first))
        futures = []
        for b, _, _ in batches:
            b.close()
            futures.append(await producer.send_batch(b, self.topic, partition=0))
        _, pending = await asyncio.wait(futures, timeout=max(deadline - asyncio.get_running_loop().time(), 0.0))
        if pending:
            raise asyncio.TimeoutError()
        outcomes = [f.exception() or f.result() for f in futures]
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:  # (part of) the append may be in the topic: it stays in doubt, `settle` re-sends it all
            raise failed[0]
        bases = [int(md.offset) for md in outcomes]  # type: ignore[union-attr]
        expected = self._next
        if bases[0] < expected:
            self._fence(self._lost(f"the broker assigned offset {bases[0]} to a record that should have got "
                                   f"offset {expected}"))
        mine = set(job.stamps)
        first_at: dict[int, int] = {}  # ts -> offset of an earlier copy of one of these records
        pos = expected
        for base, (_, _, count) in zip(bases, batches):
            if base > pos:
                for off, ts in await self._check_copies(pos, base, mine):
                    first_at.setdefault(ts, off)
            elif base < pos:
                self._fence(f"{self._where()}: the broker acknowledged overlapping batches (offset {base}, "
                            f"expected {pos}); refusing to continue")
            pos = base + count
        for (_, first_i, count), base in zip(batches, bases):
            for j in range(count):
                rec = job.records[first_i + j]
                rec.ts = job.stamps[first_i + j]
                rec.offset = first_at.get(rec.ts, base + j)  # readers apply the first copy
        self._next = pos
        self._last_ts = max(self._last_ts, max(job.stamps))
        self._last_base = bases[-1]

    async def _check_copies(self, start: int, stop: int, mine: set[int]) -> list[tuple[int, int]]:
        """Records in [start, stop) appeared before our acknowledged batch: allow only copies of ours.

        They are earlier sends of these records (a produce retried, or an
        append in doubt that landed) or copies of records already in the
        topic. Returns their (offset, ts).
        """
        extra = await self._scan_range(start, stop)
        bad = [(off, ts) for off, ts in extra if ts > self._last_ts and ts not in mine]
        if bad or len(extra) < stop - start:
            self._fence(
                f"{self._where()}: offsets {start}..{stop - 1} hold records this node did not write "
                "(another writer on the topic?). They are committed; restart this node so it applies them "
                "before accepting more writes, and make sure only one committer writes to the topic.")
        self.duplicates_skipped += len(extra)  # these, or the copies acknowledged after them
        if extra:
            logger.warning("%s: %d record(s) of an earlier send at offsets %d..%d (readers skip the copies)",
                           self._where(), len(extra), start, stop - 1)
        return extra

    # ------------------------------------------------------------ reading

    def _decode(self, msg: Any) -> tuple[Record, int]:
        """The record of a Kafka message (offset = Kafka offset) and the offset its frame names.

        The frame offset is the one the writer expected; a copy left by a
        retried produce sits above it.
        """
        try:
            rec = decode(msg.value)
        except (LogError, TypeError) as exc:
            raise self._bad_record(msg.offset, exc) from exc
        framed, rec.offset = rec.offset, msg.offset
        return rec, framed

    def _bad_record(self, offset: int, exc: Exception) -> LogError:
        """The error for a Kafka message at `offset` that holds no valid record frame."""
        if not isinstance(exc, LogError):
            return LogCorruptError(f"{self._where()}: offset {offset} holds no record frame")
        kind = LogCorruptError if isinstance(exc, LogCorruptError) else (
            LogFormatError if isinstance(exc, LogFormatError) else LogError)
        return kind(f"{self._where()}: offset {offset}: {exc}")

    async def _records(self, consumer: AIOKafkaConsumer, start: int, stop: int | None,
                       batch: int) -> AsyncIterator[list[Record]]:
        """Yield records from `start` (up to `stop`, or forever when None), skipping duplicates.

        Reading starts one record early to learn the highest ts before
        `start`, which a record must exceed to count. When that record is
        itself a copy (its frame names a lower offset than it has), the
        records from the offset its frame names up to it are scanned too:
        they include the original of the batch it copies.
        """
        tp = self._tp
        seed = start > 0
        consumer.seek(tp, start - 1 if seed else start)
        high = -1
        pos = start
        quiet_since = time.monotonic()
        while stop is None or pos < stop:
            self._check_open()
            try:
                got = await consumer.getmany(tp, timeout_ms=500 if stop is None else 200, max_records=batch)
            except OffsetOutOfRangeError as exc:
                raise LogError(f"{self._where()}: offset {pos} is beyond the end of the topic; the broker "
                               "lost records this reader had already seen") from exc
            except KafkaError as exc:
                raise LogError(f"{self._where()}: read failed at offset {pos} ({exc!r})") from exc
            msgs = got.get(tp)
            if not msgs:
                idle = time.monotonic() - quiet_since
                if stop is None:
                    if idle >= _TAIL_CHECK_SECONDS:
                        await self._tail_check(consumer, pos)
                        quiet_since = time.monotonic()
                elif idle >= self.read_timeout:
                    raise LogError(f"{self._where()}: no progress reading offsets {pos}..{stop - 1} "
                                   f"for {self.read_timeout:g}s (is the broker up?)")
                continue
            quiet_since = time.monotonic()
            if seed:  # the record before `start`: only its ts counts
                seed = False
                m = msgs[0]
                if m.offset < start:
                    msgs = msgs[1:]
                    rec, framed = self._decode(m)
                    high = rec.ts
                    if framed < m.offset:
                        high = max([high] + [t for _, t in await self._scan_from(framed, m.offset)])
            out: list[Record] = []
            limit = stop if stop is not None else _NO_STOP
            for m in msgs:  # the hot loop of every reader: keep it lean
                off = m.offset
                if off >= limit:
                    pos = limit
                    break
                try:
                    rec = decode(m.value)
                except (LogError, TypeError) as exc:
                    raise self._bad_record(off, exc) from exc
                rec.offset = off
                pos = off + 1
                if rec.ts <= high:
                    self.duplicates_skipped += 1
                    continue
                high = rec.ts
                out.append(rec)
            if self._producer is None:  # a reader learns the end as it reads; a writer knows it
                if pos > self._next:
                    self._next = pos
                if high > self._last_ts:
                    self._last_ts = high
            if out:
                yield out

    async def _tail_check(self, consumer: AIOKafkaConsumer, pos: int) -> None:
        """An idle tail: make sure the topic still exists and still reaches `pos`."""
        try:
            if self.topic not in await consumer.topics():
                raise LogError(self._lost("the topic no longer exists"))
            hw = int((await consumer.end_offsets([self._tp]))[self._tp])
            if hw >= pos or pos == 0:
                return
            # Some brokers (Tansu) report the base offset of the last batch + 1: read to the real end.
            records = await self._scan_from(max(hw - 1, 0))
        except _TRANSIENT:
            return  # broker unreachable: keep waiting, readers serve what they have
        end = max(hw, records[-1][0] + 1 if records else 0)
        if end < pos:
            raise LogError(self._lost(f"the topic ends at offset {end} but this reader already read up to "
                                      f"offset {pos - 1}"))

    async def _true_end(self) -> int:
        """The current end of the topic (this writer's own count when nothing is in doubt)."""
        if self._producer is not None and not self._doubt:
            return self._next
        if self._meta is None:
            raise LogClosedError(f"{self._where()}: log is closed")
        try:
            hw = await self._high_watermark()
            records = await self._scan_from(max(hw - 1, 0))
        except _TRANSIENT as exc:
            raise LogError(f"{self._where()}: cannot find the end of the topic ({exc!r})") from exc
        end = max(hw, records[-1][0] + 1 if records else 0)
        if end > self._next:
            self._next = end
        if records:
            self._last_ts = max(self._last_ts, max(ts for _, ts in records))
        return end

    async def read(self, start: int, end: int | None = None, batch: int = 4096) -> AsyncIterator[list[Record]]:
        """Yield records with start <= offset < end (None: the current end), duplicates skipped."""
        self._check_open()
        if start < 0 or batch < 1:
            raise ValueError("read needs start >= 0 and batch >= 1")
        stop = await self._true_end() if end is None else end
        if start >= stop:
            return
        consumer = await self._consumer()
        try:
            async for recs in self._records(consumer, start, stop, batch):
                yield recs
        finally:
            await self._release(consumer)

    async def tail(self, start: int, batch: int = 4096) -> AsyncIterator[list[Record]]:
        """Yield records from `start` on, forever; raises LogError if the topic is lost."""
        self._check_open()
        if start < 0 or batch < 1:
            raise ValueError("tail needs start >= 0 and batch >= 1")
        consumer = await self._consumer()
        try:
            async for recs in self._records(consumer, start, None, batch):
                yield recs
        finally:
            await self._release(consumer)

    async def _ts_at(self, consumer: AIOKafkaConsumer, offset: int) -> tuple[int, int]:
        """(offset, ts) of the first record at or after `offset`."""
        consumer.seek(self._tp, offset)
        deadline = time.monotonic() + self.read_timeout
        while True:
            got = await consumer.getmany(self._tp, timeout_ms=200, max_records=1)
            msgs = got.get(self._tp)
            if msgs:
                return msgs[0].offset, self._decode(msgs[0])[0].ts
            if time.monotonic() > deadline:
                raise LogError(f"{self._where()}: cannot read offset {offset} (is the broker up?)")

    async def offset_for_timestamp(self, ts: int) -> int:
        """The first offset whose ts >= `ts` (`next_offset()` if none): a binary search."""
        self._check_open()
        end = await self._true_end()
        if end == 0 or ts > self._last_ts:
            return end
        consumer = await self._consumer()
        try:
            lo, hi = 0, end  # invariant: every offset < lo has ts < target; the answer is <= hi
            while lo < hi:
                mid = (lo + hi) // 2
                off, found = await self._ts_at(consumer, mid)
                if found >= ts:
                    hi = off if off < hi else mid
                else:
                    lo = off + 1
            return lo
        finally:
            await self._release(consumer)

    # ------------------------------------------------------------ truncation

    async def truncate(self, next_offset: int) -> None:
        """Kafka topics cannot lose their tail: only a no-op truncate is allowed."""
        self._check_open()
        if next_offset < 0:
            raise ValueError("next_offset must be >= 0")
        if next_offset >= self._next:
            return
        raise LogError(f"{self._where()}: a Kafka log cannot be truncated (asked to drop offsets "
                       f"{next_offset}..{self._next - 1}); restore into a new topic instead")


__all__ = ["KafkaLog", "parse_kafka_url", "DEFAULT_APPEND_TIMEOUT"]
