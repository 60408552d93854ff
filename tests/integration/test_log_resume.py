"""The log itself: envelopes produced to a real topic, consumed in a group, resumed after commit."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.log.codec import decode_event, encode_event
from streams.log.envelope import EventEnvelope, EventSource
from streams.log.topics import ensure_topics
from streams.settings import Settings


def _envelope(n: int) -> EventEnvelope:
    event = {
        "id": f"evt_{n:04d}",
        "object": "event",
        "type": "customer.updated",
        "created": 1_700_000_000 + n,
        "livemode": False,
        "api_version": "2026-10-28",
        "data": {"object": {"id": "cus_resume", "object": "customer", "email": f"c{n}@x.io"}},
    }
    return EventEnvelope.from_stripe_event(
        json.dumps(event), endpoint="default", source=EventSource.WEBHOOK,
        received_at=datetime.now(UTC),
    )


async def _consume(settings: Settings, topic: str, count: int) -> list[EventEnvelope]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka_bootstrap_servers, group_id=f"{topic}.group",
        enable_auto_commit=False, auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        seen: list[EventEnvelope] = []
        while len(seen) < count:
            batch = await consumer.getmany(timeout_ms=10_000, max_records=count - len(seen))
            assert batch, "no message within 10 s"
            for records in batch.values():
                seen.extend(decode_event(record.value) for record in records)
        await consumer.commit()
        return seen
    finally:
        await consumer.stop()


async def test_consumer_resumes_right_after_the_committed_offset(settings: Settings) -> None:
    topic = settings.topic()
    await ensure_topics(settings.kafka_bootstrap_servers, [topic], partitions=1)
    sent = [_envelope(n) for n in range(10)]
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for envelope in sent:
            await producer.send_and_wait(topic, encode_event(envelope), key=envelope.key)
    finally:
        await producer.stop()

    first = await _consume(settings, topic, 4)
    second = await _consume(settings, topic, 6)

    assert first == sent[:4]
    assert second == sent[4:]
    check = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=f"{topic}.group"
    )
    await check.start()
    try:
        assert await check.committed(TopicPartition(topic, 0)) == 10
    finally:
        await check.stop()
