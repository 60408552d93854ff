"""A dead letter reaches the dead-letter topic exactly once, whenever its worker dies.

A worker records a dead letter, marks its produce under way, produces it, and marks it
produced. These tests leave the database as a worker killed between those steps leaves it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaProducer

from projections.store import ProjectionStore
from streams.handlers.registry import load_handlers
from streams.log.codec import encode_dead_letter
from streams.log.consumed import ConsumedEvent
from streams.log.envelope import DeadLetter
from streams.settings import Settings
from tests.integration.log_support import query
from tests.integration.test_projection_ordering import envelope_of
from tests.integration.test_projection_writer import customer_events
from tests.integration.worker_support import (
    WorkerProcess,
    prepare_topics,
    read_dead_letters,
    wait_until,
)

pytestmark = pytest.mark.integration


def failure(settings: Settings) -> tuple[ConsumedEvent, DeadLetter]:
    events, _ = customer_events(1)
    event = ConsumedEvent(envelope_of(events[0]), settings.topic("customers"), 0, 7)
    now = datetime.now(UTC)
    return event, DeadLetter(
        event=event.envelope, error_type="HandlerError", error_message="bad", retriable=False,
        handler="customers.customer_changed", attempts=3, source_topic=event.topic,
        source_partition=0, source_offset=7, first_failed_at=now, last_failed_at=now,
    )


async def record(settings: Settings, *, under_way: bool, on_topic: bool) -> int:
    """Record a dead letter as a worker does, then stop where a crash would have stopped it."""
    event, letter = failure(settings)
    store = ProjectionStore(settings, load_handlers(), connections=1)
    await store.open()
    try:
        dead_letter = await store.record_dead_letter("customers", event, letter, "customers")
    finally:
        await store.close()
    assert dead_letter is not None
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("UPDATE ops.dead_letters SET updated_at = now() - interval '1 minute', "
                     "publishing_at = CASE WHEN %s THEN now() END", (under_way,))
    if on_topic:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(settings.topic("dlq"), encode_dead_letter(letter),
                                         key=letter.event.key)
        finally:
            await producer.stop()
    return dead_letter


def produced(settings: Settings) -> list[str]:
    return [letter.event.id for letter in asyncio.run(read_dead_letters(settings, quiet=2.0))]


@pytest.mark.parametrize(
    ("under_way", "on_topic"),
    [(False, False), (True, False), (True, True)],
    ids=["recorded", "produce started, lost", "produced, not marked"],
)
def test_a_worker_produces_what_a_dead_worker_left_exactly_once(
    settings: Settings, tmp_path: Path, under_way: bool, on_topic: bool
) -> None:
    prepare_topics(settings)
    asyncio.run(record(settings, under_way=under_way, on_topic=on_topic))
    [(event_id,)] = query(settings.database_url, "SELECT event_id FROM ops.dead_letters")

    with WorkerProcess(settings, tmp_path) as worker:
        wait_until(lambda: query(settings.database_url, "SELECT published, message IS NULL "
                                                        "FROM ops.dead_letters")
                   == [(True, True)], 60, "the dead letter produced", [worker])

    assert produced(settings) == [event_id]
