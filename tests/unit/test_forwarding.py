"""How the router produces what it forwards: partitions, order and batches, without Kafka."""

from __future__ import annotations

import asyncio
from typing import cast

from aiokafka import AIOKafkaProducer
from faust.types import TP, Message

from streams.log.consumed import log_position_in
from streams.worker.forwarding import forward


class RecordingBatch:
    """A producer batch taking up to ``limit`` messages (its first one whatever the limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.messages: list[tuple[bytes | None, bytes | None]] = []
        self.headers: list[list[tuple[str, bytes]]] = []

    def append(
        self, *, key: bytes | None, value: bytes | None, timestamp: None,
        headers: list[tuple[str, bytes]],
    ) -> bool | None:
        if self.messages and len(self.messages) >= self.limit:
            return None
        self.messages.append((key, value))
        self.headers.append(headers)
        return True


class RecordingProducer:
    """Acknowledges every message at once and remembers where it went and how.

    ``sent`` holds (topic, partition, key, value), the partition None for messages left to
    the partitioner; ``log_offsets`` the log offset each one's headers carry; ``batches``
    counts the batches sent.
    """

    def __init__(self, partitions: dict[str, int] | None = None, batch_limit: int = 100) -> None:
        self.partitions = partitions or {}
        self.batch_limit = batch_limit
        self.sent: list[tuple[str, int | None, bytes | None, bytes | None]] = []
        self.log_offsets: list[int | None] = []
        self.batches = 0

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions.get(topic, 6)))

    async def send(
        self, topic: str, value: bytes | None, key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[None]:
        self.sent.append((topic, None, key, value))
        self.log_offsets.append(_offset(log_position_in(headers)))
        return _acknowledged()

    def create_batch(self) -> RecordingBatch:
        return RecordingBatch(self.batch_limit)

    async def send_batch(
        self, batch: RecordingBatch, topic: str, *, partition: int
    ) -> asyncio.Future[None]:
        self.batches += 1
        self.sent.extend((topic, partition, key, value) for key, value in batch.messages)
        self.log_offsets.extend(_offset(log_position_in(h)) for h in batch.headers)
        return _acknowledged()

    def producer(self) -> AIOKafkaProducer:
        return cast(AIOKafkaProducer, self)


def _offset(position: tuple[int, int] | None) -> int | None:
    return None if position is None else position[1]


def _acknowledged() -> asyncio.Future[None]:
    acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    acknowledged.set_result(None)
    return acknowledged


def consumed(partition: int, offset: int, key: bytes) -> Message:
    tp = TP("s.events", partition)
    return Message("s.events", partition, offset, 0.0, 0, [], key, key + b"-value", None, tp=tp)


async def test_each_message_keeps_its_partition_number_and_its_order() -> None:
    recording = RecordingProducer()
    routed = [
        ("s.events.customers", consumed(2, 0, b"cus_1")),
        ("s.events.invoices", consumed(5, 0, b"in_1")),
        ("s.events.customers", consumed(2, 1, b"cus_1")),
        ("s.events.customers", consumed(4, 0, b"cus_2")),
        ("s.events.customers", consumed(2, 2, b"cus_1")),
    ]

    await forward(recording.producer(), "s.events", routed)

    assert sorted(recording.sent) == sorted(
        (topic, message.partition, message.key, message.value) for topic, message in routed
    )
    in_partition_2 = [(t, k, v) for t, p, k, v in recording.sent if p == 2]
    assert in_partition_2 == [
        ("s.events.customers", m.key, m.value) for t, m in routed if m.partition == 2
    ]


async def test_a_full_batch_is_sent_and_the_rest_follows_in_order() -> None:
    recording = RecordingProducer(batch_limit=2)
    routed = [("s.events.customers", consumed(0, offset, b"cus_1")) for offset in range(5)]

    await forward(recording.producer(), "s.events", routed)

    assert recording.batches == 3
    assert [value for _, _, _, value in recording.sent] == [m.value for _, m in routed]


async def test_a_topic_with_another_partition_count_is_left_to_the_partitioner() -> None:
    recording = RecordingProducer(partitions={"s.events": 6, "s.events.invoices": 12})
    routed = [
        ("s.events.invoices", consumed(3, 0, b"in_1")),
        ("s.events.customers", consumed(3, 1, b"cus_1")),
    ]

    await forward(recording.producer(), "s.events", routed)

    assert sorted(recording.sent, key=lambda sent: sent[0]) == [
        ("s.events.customers", 3, b"cus_1", b"cus_1-value"),
        ("s.events.invoices", None, b"in_1", b"in_1-value"),
    ]


async def test_every_forwarded_message_carries_its_offset_in_the_log() -> None:
    recording = RecordingProducer(partitions={"s.events": 6, "s.events.invoices": 12})
    routed = [
        ("s.events.customers", consumed(1, 17, b"cus_1")),
        ("s.events.invoices", consumed(1, 18, b"in_1")),
        ("s.events.customers", consumed(1, 19, b"cus_2")),
    ]

    await forward(recording.producer(), "s.events", routed)

    keys = [key for _, _, key, _ in recording.sent]
    carried = dict(zip(keys, recording.log_offsets, strict=True))
    assert carried == {b"cus_1": 17, b"in_1": 18, b"cus_2": 19}
