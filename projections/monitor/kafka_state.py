"""What the monitor knows of Kafka: lag per partition, the oldest unprocessed event, health.

Sampled every few seconds by one background task, whatever the request rate: a request answers
from the latest sample (and says when it was taken), so a burst of dashboards never turns into
a burst of Kafka requests, and a broker outage costs a request nothing but a stale sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.errors import CodecError
from streams.log.codec import decode_event
from streams.log.routing import FAMILIES
from streams.settings import Settings

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 5.0
_FETCH_SECONDS = 2.0
_HISTORY = 180
"""Samples kept to tell whether the lag grows: fifteen minutes at one per five seconds."""

Positions = Callable[[], Awaitable[Mapping[tuple[str, int], int]]]
"""The next offset to process of each family partition, as PostgreSQL stores it."""


@dataclass(frozen=True)
class Lag:
    topic: str
    partition: int
    lag: int
    oldest_unprocessed_at: datetime | None


@dataclass
class KafkaState:
    """The latest sample: None fields until the first one succeeds."""

    sampled_at: datetime | None = None
    ok: bool = False
    error: str | None = "not sampled yet"
    lags: list[Lag] = field(default_factory=list)
    history: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=_HISTORY))
    """(monotonic time, total lag) of the recent samples, oldest first."""

    @property
    def total_lag(self) -> int:
        return sum(lag.lag for lag in self.lags)

    @property
    def oldest_unprocessed_at(self) -> datetime | None:
        times = [lag.oldest_unprocessed_at for lag in self.lags if lag.oldest_unprocessed_at]
        return min(times) if times else None

    def lag_growth(self, seconds: float) -> int | None:
        """How much the total lag grew over the last ``seconds``, or None without that history."""
        if not self.history:
            return None
        newest_at, newest = self.history[-1]
        past = [total for at, total in self.history if at <= newest_at - seconds]
        return newest - past[-1] if past else None


class KafkaSampler:
    """Samples the log's and the family topics' lag in the background."""

    def __init__(self, settings: Settings, positions: Positions) -> None:
        self._settings = settings
        self._positions = positions
        self.state = KafkaState()
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kafka-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._sample(), timeout=SAMPLE_SECONDS * 2)
            except Exception as exc:  # Any failure is the answer: Kafka is not healthy now.
                self.state.ok = False
                self.state.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(
                    exc
                ).__name__
                log.debug("kafka not sampled: %r", exc)
                await self._close()
            await asyncio.sleep(SAMPLE_SECONDS)

    async def _clients(self) -> tuple[AIOKafkaConsumer, AIOKafkaAdminClient]:
        if self._consumer is None or self._admin is None:
            servers = self._settings.kafka_bootstrap_servers
            consumer = AIOKafkaConsumer(
                bootstrap_servers=servers, group_id=None, enable_auto_commit=False,
                request_timeout_ms=int(SAMPLE_SECONDS * 1000),
            )
            admin = AIOKafkaAdminClient(
                bootstrap_servers=servers, request_timeout_ms=int(SAMPLE_SECONDS * 1000)
            )
            await consumer.start()
            await admin.start()
            self._consumer, self._admin = consumer, admin
        return self._consumer, self._admin

    async def _close(self) -> None:
        consumer, admin = self._consumer, self._admin
        self._consumer = self._admin = None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()

    async def _sample(self) -> None:
        consumer, admin = await self._clients()
        settings = self._settings
        topics = [settings.topic(), *(settings.topic(f) for f in FAMILIES)]
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(await _partitions(consumer, topic))
        ]
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        beginnings: dict[TopicPartition, int] = await consumer.beginning_offsets(partitions)
        committed = await admin.list_consumer_group_offsets(settings.group_id)
        stored = await self._positions()
        following: dict[TopicPartition, int] = {}
        for tp in partitions:
            if tp.topic == settings.topic():
                meta = committed.get(tp)
                done = meta.offset if meta is not None and meta.offset >= 0 else beginnings[tp]
            else:
                done = stored.get((tp.topic, tp.partition), beginnings[tp])
            following[tp] = max(done, beginnings[tp])
        behind = {tp: nxt for tp, nxt in following.items() if nxt < ends[tp]}
        oldest = await self._first_times(consumer, behind)
        lags = [
            Lag(tp.topic, tp.partition, max(ends[tp] - following[tp], 0), oldest.get(tp))
            for tp in partitions
        ]
        state = self.state
        state.lags = lags
        state.sampled_at = datetime.now(UTC)
        state.ok, state.error = True, None
        state.history.append((time.monotonic(), state.total_lag))

    async def _first_times(
        self, consumer: AIOKafkaConsumer, behind: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, datetime]:
        """When the gateway received the first unprocessed event of each partition behind."""
        if not behind:
            return {}
        consumer.assign(list(behind))
        for tp, offset in behind.items():
            consumer.seek(tp, offset)
        found: dict[TopicPartition, datetime] = {}
        deadline = time.monotonic() + _FETCH_SECONDS
        while len(found) < len(behind) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=len(behind) * 4)
            for tp, records in batch.items():
                if tp in found or not records:
                    continue
                found[tp] = _received_at(records[0].value, records[0].timestamp)
                consumer.pause(tp)
        consumer.assign([])
        return found


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    known = consumer.partitions_for_topic(topic)
    if known is None:
        await consumer._client.force_metadata_update()
        known = consumer.partitions_for_topic(topic)
    return set(known or ())


def _received_at(value: bytes | None, timestamp_ms: int) -> datetime:
    """The envelope's receipt time; the message's own timestamp if it does not decode."""
    try:
        return decode_event(value or b"").received_at
    except CodecError:
        return datetime.fromtimestamp(timestamp_ms / 1000, UTC)
