"""Whether the dead-letter topic already holds a given failure.

Only a dead letter whose produce was under way when its worker died needs this: the scan reads
each partition from shortly before the failure to the end, which is seconds of dead letters.
"""

from __future__ import annotations

from datetime import timedelta

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.errors import CodecError
from streams.log.codec import decode_dead_letter
from streams.log.envelope import DeadLetter

_MARGIN = timedelta(minutes=1)
"""How far before the failure's time a produce of it may have been stamped (clock skew)."""


async def holds_dead_letter(bootstrap_servers: str, topic: str, letter: DeadLetter) -> bool:
    """Whether ``topic`` holds a dead letter of this failure: same source message, same time."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        # A consumer without subscriptions holds no topic's metadata until it asks for it.
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not tps:
            return False
        ends = await consumer.end_offsets(tps)
        since = int((letter.last_failed_at - _MARGIN).timestamp() * 1000)
        starts = await consumer.offsets_for_times({tp: since for tp in tps})
        reading = {tp: found.offset for tp, found in starts.items()
                   if found is not None and found.offset < ends[tp]}
        if not reading:
            return False
        consumer.assign(list(reading))
        for tp, offset in reading.items():
            consumer.seek(tp, offset)
        while reading:
            for records in (await consumer.getmany(*reading, timeout_ms=1000)).values():
                for record in records:
                    if record.value and _same_failure(record.value, letter):
                        return True
            for tp in list(reading):
                if await consumer.position(tp) >= ends[tp]:
                    del reading[tp]
        return False
    finally:
        await consumer.stop()


def _same_failure(message: bytes, letter: DeadLetter) -> bool:
    try:
        found = decode_dead_letter(message)
    except CodecError:
        return False
    return (
        found.source_topic, found.source_partition, found.source_offset, found.last_failed_at
    ) == (
        letter.source_topic, letter.source_partition, letter.source_offset,
        letter.last_failed_at,
    )
