"""A poison event lands in the dead-letter topic exactly once and never blocks its partition."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaProducer

from streams.settings import Settings
from tests.integration.test_projection_ordering import envelope_of
from tests.integration.test_projection_writer import customer_events
from tests.integration.worker_support import (
    WorkerProcess,
    logged_events,
    prepare_topics,
    produce,
    read_dead_letters,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_a_poison_event_is_dead_lettered_once_and_later_events_of_its_object_applied(
    settings: Settings, tmp_path: Path
) -> None:
    events, customer = customer_events(4)
    # The customer handler refuses a balance that is not an integer: no retry can help.
    events[1]["data"]["object"]["balance"] = "a lot"
    envelopes = [envelope_of(event) for event in events]
    poison = envelopes[1]
    prepare_topics(settings)
    asyncio.run(produce(settings, envelopes))

    with WorkerProcess(settings, tmp_path) as worker:
        wait_until(lambda: logged_events(settings.database_url) >= {e.id for e in envelopes},
                   90, "all four events logged", [worker])
        wait_until(lambda: "stripe_streams_dead_letters_open 1.0" in worker.metrics(), 30,
                   "dead_letters_open to count it", [worker])
        metrics = worker.metrics()

    letters = asyncio.run(read_dead_letters(settings))
    assert [letter.event for letter in letters] == [poison]
    [letter] = letters
    assert letter.attempts == 2
    assert letter.handler == "customers.customer_changed"
    assert letter.error_type and letter.error_message
    assert letter.source_topic == settings.topic("customers")
    assert not letter.retriable
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT event_id, family, attempts, source_topic, source_partition, source_offset, "
            "status FROM ops.dead_letters"
        ).fetchall()
        status = conn.execute(
            "SELECT status FROM ops.event_log WHERE event_id = %s", (poison.id,)
        ).fetchone()
        mirrored = conn.execute(
            "SELECT last_event_id FROM stripe.customers WHERE id = %s", (customer["id"],)
        ).fetchone()
    assert rows == [(poison.id, "customers", 2, letter.source_topic, letter.source_partition,
                     letter.source_offset, "open")]
    assert status == ("dead_lettered",)
    assert mirrored == (envelopes[-1].id,)
    assert (
        'stripe_streams_dead_letters_total{family="customers",type="customer.updated"} 1.0'
        in metrics
    )


def test_a_message_that_is_not_an_envelope_is_dead_lettered_with_its_bytes(
    settings: Settings, tmp_path: Path
) -> None:
    events, _ = customer_events(2)
    prepare_topics(settings)

    async def append_garbage_between() -> None:
        await produce(settings, [envelope_of(events[0])])
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(settings.topic(), b"not avro", key=b"cus_garbage")
        finally:
            await producer.stop()
        await produce(settings, [envelope_of(events[1])])

    asyncio.run(append_garbage_between())

    with WorkerProcess(settings, tmp_path) as worker:
        wait_until(lambda: logged_events(settings.database_url) >= {e["id"] for e in events},
                   90, "the valid events around the garbage", [worker])

    [letter] = asyncio.run(read_dead_letters(settings))
    assert letter.error_type == "CodecError"
    assert letter.source_topic == settings.topic()
    assert base64.b64encode(b"not avro").decode() in letter.event.payload
