"""Reading the recent messages of a topic, to learn whether a produce cut short reached it.

A producer that dies after sending and before recording the acknowledgement leaves a message
that may or may not be in the topic; its successor reads each partition from shortly before
the send to the end, which is seconds of messages, before it sends again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from aiokafka import AIOKafkaConsumer, TopicPartition

MARGIN = timedelta(minutes=1)
"""How far before the send a message may have been stamped (clocks of hosts differ)."""


async def scan_since(
    bootstrap_servers: str, topic: str, since: datetime, visit: Callable[[bytes], bool]
) -> None:
    """Hand every message value of ``topic`` appended from ``since`` on to ``visit``, until it
    returns True or the partitions' ends as they were when the scan began."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        # A consumer without subscriptions holds no topic's metadata until it asks for it.
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not tps:
            return
        ends = await consumer.end_offsets(tps)
        starts = await consumer.offsets_for_times(
            {tp: int((since - MARGIN).timestamp() * 1000) for tp in tps}
        )
        reading = {tp: found.offset for tp, found in starts.items()
                   if found is not None and found.offset < ends[tp]}
        if not reading:
            return
        consumer.assign(list(reading))
        for tp, offset in reading.items():
            consumer.seek(tp, offset)
        while reading:
            for records in (await consumer.getmany(*reading, timeout_ms=1000)).values():
                for record in records:
                    if record.value is not None and visit(record.value):
                        return
            for tp in list(reading):
                if await consumer.position(tp) >= ends[tp]:
                    del reading[tp]
    finally:
        await consumer.stop()
