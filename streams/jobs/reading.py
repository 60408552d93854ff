"""Reading a range of a topic back, with a consumer of the job's own.

The consumer belongs to no group and commits nothing, so a job never moves the workers'
positions; it is assigned the partitions it reads, starts each at an offset (given, found by
time through the broker's offsets-for-times lookup, or where an interrupted job stopped), and
stops each before an end offset fixed when the range is resolved.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from streams.errors import DependencyUnavailable, StreamsError
from streams.log.topics import MAX_MESSAGE_BYTES

FETCH_MAX_BYTES = 16 * 1024 * 1024
"""Most bytes one fetch returns: a job's batch, and what it holds in memory, stays bounded."""


@dataclass
class Range:
    """Per partition, the next offset to read and the offset to stop before."""

    next: dict[int, int]
    end: dict[int, int]

    @property
    def remaining(self) -> int:
        """Messages left to read."""
        return sum(max(0, self.end[p] - self.next[p]) for p in self.next)

    def done(self, partition: int) -> bool:
        return self.next[partition] >= self.end[partition]


class LogReader:
    """Reads ranges of one topic's partitions; use as ``async with``."""

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        self.topic = topic
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_bytes=FETCH_MAX_BYTES,
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
        )

    async def __aenter__(self) -> LogReader:
        try:
            await self._consumer.start()
        except KafkaError as exc:
            raise DependencyUnavailable(f"Kafka is unreachable: {exc}") from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def partitions(self) -> list[int]:
        """The topic's partitions; a one-line error when the topic does not exist."""
        # A consumer without subscriptions holds no topic's metadata until it asks for it.
        await self._consumer._client.force_metadata_update()
        found = self._consumer.partitions_for_topic(self.topic)
        if not found:
            raise StreamsError(f"topic {self.topic} does not exist")
        return sorted(found)

    async def resolve(
        self,
        partitions: Sequence[int],
        *,
        from_offset: int | None = None,
        from_time: datetime | None = None,
        to_offset: int | None = None,
        to_time: datetime | None = None,
    ) -> Range:
        """The range to read: from the offset or time given (else the start), up to and
        including ``to_offset``, or before the first message at or after ``to_time``, else up
        to the end as it is now. Offsets outside what the partition holds are clamped to it.
        """
        tps = [TopicPartition(self.topic, p) for p in partitions]
        first = await self._consumer.beginning_offsets(tps)
        last = await self._consumer.end_offsets(tps)
        start = {tp.partition: first[tp] for tp in tps}
        end = {tp.partition: last[tp] for tp in tps}
        if from_offset is not None:
            start = {p: min(max(from_offset, start[p]), end[p]) for p in start}
        if from_time is not None:
            start = await self._at_time(tps, from_time, end)
        if to_offset is not None:
            end = {p: min(to_offset + 1, end[p]) for p in end}
        if to_time is not None:
            end = {p: min(o, end[p]) for p, o in (await self._at_time(tps, to_time, end)).items()}
        return Range(start, {p: max(end[p], start[p]) for p in start})

    async def ends(self, partitions: Sequence[int]) -> dict[int, int]:
        """Each partition's end offset now (the offset its next message will get)."""
        tps = [TopicPartition(self.topic, p) for p in partitions]
        return {tp.partition: o for tp, o in (await self._consumer.end_offsets(tps)).items()}

    async def _at_time(
        self, tps: Sequence[TopicPartition], moment: datetime, end: dict[int, int]
    ) -> dict[int, int]:
        found = await self._consumer.offsets_for_times({tp: _millis(moment) for tp in tps})
        return {
            tp.partition: (found[tp].offset if found.get(tp) is not None else end[tp.partition])
            for tp in tps
        }

    async def read(
        self, span: Range, max_records: int
    ) -> AsyncIterator[list[ConsumerRecord[Any, Any]]]:
        """Yield the range's messages in batches of at most ``max_records``, each partition in
        offset order; ``span.next`` advances past each batch before the next is read.
        """
        reading = [p for p in span.next if not span.done(p)]
        if not reading:
            return
        tps = [TopicPartition(self.topic, p) for p in reading]
        self._consumer.assign(tps)
        for tp in tps:
            self._consumer.seek(tp, span.next[tp.partition])
        active = set(tps)
        while active:
            fetched = await self._consumer.getmany(*active, timeout_ms=1000,
                                                   max_records=max_records)
            batch: list[ConsumerRecord[Any, Any]] = []
            for tp, records in fetched.items():
                end = span.end[tp.partition]
                kept = [r for r in records if r.offset < end]
                batch.extend(kept)
                if kept:
                    span.next[tp.partition] = kept[-1].offset + 1
            for tp in list(active):
                # The position also passes offsets that hold no record (transaction markers).
                position = await self._consumer.position(tp)
                span.next[tp.partition] = max(
                    span.next[tp.partition], min(position, span.end[tp.partition])
                )
                if span.done(tp.partition):
                    active.discard(tp)
                    self._consumer.pause(tp)
            if batch:
                yield batch


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
