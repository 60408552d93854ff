"""Forwarding consumed messages, unchanged, to other topics: how the router produces.

A message goes to the partition of the same number as the one it was consumed from when the
destination has as many partitions as the source. That is the partition its key hashes to
(both are chosen by the default partitioner from the same key and count), so every event of
an object still lands in one partition in log order, and the messages are appended to batches
built here: about 4 us of CPU per message against 15 us for one ``send`` each. A destination
with another partition count leaves the choice to the producer's partitioner.

Each forwarded message carries its position in the log (:data:`LOG_POSITION_HEADER`), which
orders the events of an object the same way whether they are read from a family's topic or
from the log itself, as replay and rebuild do.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from faust.types import Message

from streams.log.consumed import LOG_POSITION_HEADER, encode_log_position


async def forward(
    producer: AIOKafkaProducer, source: str, routed: Sequence[tuple[str, Message]]
) -> None:
    """Produce each ``(topic, message)`` consumed from ``source``; wait for every acknowledgement.

    Messages of one destination partition keep their order.
    """
    counts: dict[str, int] = {}

    async def partition_count(topic: str) -> int:
        if topic not in counts:
            counts[topic] = len(await producer.partitions_for(topic))
        return counts[topic]

    source_count = await partition_count(source)
    same_partition: dict[tuple[str, int], list[Message]] = defaultdict(list)
    sent: list[asyncio.Future[Any]] = []
    for topic, message in routed:
        if await partition_count(topic) == source_count:
            same_partition[(topic, message.partition)].append(message)
        else:
            sent.append(await producer.send(
                topic, message.value, key=message.key, headers=_position_of(message)
            ))
    for (topic, partition), messages in same_partition.items():
        for batch in _batches(producer, messages):
            sent.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*sent)


def _batches(producer: AIOKafkaProducer, messages: Sequence[Message]) -> Iterator[Any]:
    """The messages in order, in as few of the producer's batches as its batch size allows."""
    batch = producer.create_batch()
    for message in messages:
        headers = _position_of(message)
        if batch.append(
            key=message.key, value=message.value, timestamp=None, headers=headers
        ) is None:
            yield batch
            # A batch always takes its first message, however large.
            batch = producer.create_batch()
            batch.append(key=message.key, value=message.value, timestamp=None, headers=headers)
    yield batch


def _position_of(message: Message) -> list[tuple[str, bytes]]:
    return [(LOG_POSITION_HEADER, encode_log_position(message.partition, message.offset))]
