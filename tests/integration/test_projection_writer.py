"""The writer against a real PostgreSQL: positions, redelivery, duplicates, poison, dead letters."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from projections.dead_letters import count_open_dead_letters, record_dead_letter
from projections.writer import apply_batch
from streams.devtools.samples import EventFactory
from streams.handlers.registry import load_handlers
from streams.log.consumed import BatchRejected, ConsumedEvent, EventRejected, Outcome
from streams.log.envelope import DeadLetter, EventSource
from tests.integration.test_projection_ordering import envelope_of, event_log, mirror_snapshot

pytestmark = pytest.mark.integration
TOPIC = "t.events.customers"


def customer_events(count: int = 3, seed: int = 5) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``count`` events of one customer (created, then updated), and the customer."""
    factory = EventFactory(seed=seed)
    customer = factory.customer(created=factory.advance())
    events = [factory.event("customer.created", customer, created=customer["created"])]
    for n in range(count - 1):
        customer["name"] = f"Name {n}"
        events.append(factory.event("customer.updated", customer))
    return events, customer


def at(offsets: list[int], events: list[dict[str, Any]], partition: int = 0) -> list[ConsumedEvent]:
    return [
        ConsumedEvent(envelope_of(event), TOPIC, partition, offset)
        for offset, event in zip(offsets, events, strict=True)
    ]


async def apply(url: str, batch: list[ConsumedEvent]) -> list[Outcome]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        applied = await apply_batch(conn, "customers", batch, load_handlers())
    return [a.outcome for a in applied]


def position(url: str) -> int | None:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT \"offset\" FROM ops.projection_offsets WHERE projection = 'customers' "
            "AND topic = %s AND \"partition\" = 0", (TOPIC,),
        ).fetchone()
    return None if row is None else int(row[0])


def customer_row(url: str, customer_id: str) -> tuple[Any, ...] | None:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT name, last_event_id, deleted FROM stripe.customers WHERE id = %s",
            (customer_id,),
        ).fetchone()


def test_a_redelivered_batch_at_or_below_the_stored_position_changes_nothing(
    database_url: str,
) -> None:
    events, customer = customer_events(3)
    batch = at([10, 11, 12], events)

    first = asyncio.run(apply(database_url, batch))
    before = (mirror_snapshot(database_url), event_log(database_url))
    again = asyncio.run(apply(database_url, batch[1:]))

    assert first == [Outcome.PROCESSED] * 3
    assert again == [Outcome.SKIPPED] * 2
    assert (mirror_snapshot(database_url), event_log(database_url)) == before
    assert position(database_url) == 12
    assert customer_row(database_url, customer["id"]) == ("Name 1", events[2]["id"], False)


def test_the_same_event_id_at_a_new_offset_only_counts_a_delivery(database_url: str) -> None:
    events, customer = customer_events(2)
    asyncio.run(apply(database_url, at([0, 1], events)))

    outcomes = asyncio.run(apply(database_url, at([2], events[:1])))

    assert outcomes == [Outcome.DUPLICATE]
    assert event_log(database_url)[events[0]["id"]] == ("processed", 2)
    assert customer_row(database_url, customer["id"]) == ("Name 0", events[1]["id"], False)
    assert position(database_url) == 2


def test_an_event_older_than_the_row_is_recorded_stale_and_not_applied(
    database_url: str,
) -> None:
    events, customer = customer_events(3)
    asyncio.run(apply(database_url, at([0, 1], [events[0], events[2]])))

    outcomes = asyncio.run(apply(database_url, at([2], [events[1]])))

    assert outcomes == [Outcome.STALE]
    assert customer_row(database_url, customer["id"]) == ("Name 1", events[2]["id"], False)
    assert event_log(database_url)[events[1]["id"]] == ("stale", 1)


def test_two_workers_briefly_holding_one_partition_apply_each_event_once(
    database_url: str,
) -> None:
    # During a rebalance the old owner may still apply what it fetched while the new owner
    # starts from the last committed offset, so both hold the same events.
    events, _ = customer_events(40)
    batch = at(list(range(40)), events)

    async def both() -> list[Outcome]:
        old, new = await asyncio.gather(
            apply(database_url, batch[:30]), apply(database_url, batch)
        )
        return old + new

    outcomes = asyncio.run(both())

    assert outcomes.count(Outcome.PROCESSED) == 40
    assert outcomes.count(Outcome.SKIPPED) == 30
    assert {n for _, n in event_log(database_url).values()} == {1}
    assert position(database_url) == 39


def test_a_value_postgresql_cannot_store_rejects_the_batch_and_commits_nothing(
    database_url: str,
) -> None:
    events, _ = customer_events(2)
    events[1]["data"]["object"]["metadata"] = {"note": "nul \u0000 byte"}

    with pytest.raises((BatchRejected, EventRejected)):
        asyncio.run(apply(database_url, at([0, 1], events)))

    assert position(database_url) is None
    assert event_log(database_url) == {}
    assert all(rows == [] for rows in mirror_snapshot(database_url).values())


def test_a_failing_handler_is_named_and_commits_nothing(database_url: str) -> None:
    events, _ = customer_events(2)
    events[1]["data"]["object"]["balance"] = "not a number"

    with pytest.raises(EventRejected) as rejected:
        asyncio.run(apply(database_url, at([0, 1], events)))

    assert rejected.value.event.envelope.id == events[1]["id"]
    assert rejected.value.handler.startswith("customers.")
    assert position(database_url) is None


def dead_letter_of(event: ConsumedEvent) -> DeadLetter:
    now = datetime.now(UTC)
    return DeadLetter(
        event=event.envelope, error_type="HandlerError", error_message="balance is not a number",
        retriable=False, handler="customers.customer_changed", attempts=3,
        source_topic=event.topic, source_partition=event.partition, source_offset=event.offset,
        first_failed_at=now, last_failed_at=now,
    )


async def record(url: str, event: ConsumedEvent, projection: str | None) -> bool:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await record_dead_letter(
            conn, "customers", event, dead_letter_of(event), projection=projection
        )


async def open_dead_letters(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await count_open_dead_letters(conn)


@pytest.mark.parametrize("projection", ["customers", None])
def test_a_dead_letter_is_recorded_once_per_consumed_message(
    database_url: str, projection: str | None
) -> None:
    events, _ = customer_events(1)
    [poison] = at([7], events)

    recorded = [asyncio.run(record(database_url, poison, projection)) for _ in range(2)]

    assert recorded[0] is not None and recorded[1] is None
    assert asyncio.run(open_dead_letters(database_url)) == 1
    assert event_log(database_url)[poison.envelope.id] == ("dead_lettered", 1)
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT event_id, error_type, attempts, source_topic, source_partition, "
            "source_offset, payload->>'id', status FROM ops.dead_letters"
        ).fetchone()
    assert row == (poison.envelope.id, "HandlerError", 3, TOPIC, 0, 7, poison.envelope.id, "open")
    assert position(database_url) == (7 if projection else None)


def test_a_dead_lettered_event_delivered_again_is_tried_again(database_url: str) -> None:
    events, customer = customer_events(1)
    [poison] = at([0], events)
    asyncio.run(record(database_url, poison, "customers"))
    retried = ConsumedEvent(poison.envelope.with_source(EventSource.DLQ_RETRY), TOPIC, 0, 1)

    outcomes = asyncio.run(apply(database_url, [retried]))

    assert outcomes == [Outcome.PROCESSED]
    assert event_log(database_url)[poison.envelope.id] == ("processed", 2)
    assert customer_row(database_url, customer["id"]) is not None


def test_every_event_outcome_is_counted_per_minute(database_url: str) -> None:
    events, _ = customer_events(3)
    asyncio.run(apply(database_url, at([0, 2], [events[0], events[2]])))
    asyncio.run(apply(database_url, at([3], [events[1]])))

    with psycopg.connect(database_url) as conn:
        stats = dict(
            ((event_type, status), events)
            for event_type, status, events in conn.execute(
                "SELECT type, status, sum(events) FROM ops.event_stats GROUP BY 1, 2"
            )
        )
    assert stats == {
        ("customer.created", "processed"): 1,
        ("customer.updated", "processed"): 1,
        ("customer.updated", "stale"): 1,
    }


def test_payload_round_trips_through_the_mirror_unchanged(database_url: str) -> None:
    events, customer = customer_events(1)
    asyncio.run(apply(database_url, at([0], events)))

    with psycopg.connect(database_url) as conn:
        (data,) = conn.execute(
            "SELECT data FROM stripe.customers WHERE id = %s", (customer["id"],)
        ).fetchone() or (None,)
    assert data == json.loads(json.dumps(events[0]["data"]["object"]))
