"""Shuffled, duplicated and re-batched deliveries give the same mirror tables as in-order delivery.

Runs the writer directly against a real PostgreSQL: hypothesis draws the delivery order, the
copies and the batch boundaries; the tables must come out as when every event arrived once and
in order.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from projections.writer import apply_batch
from streams.devtools.samples import EventFactory
from streams.handlers.registry import load_handlers
from streams.log.consumed import ConsumedEvent, Outcome
from streams.log.envelope import EventEnvelope, EventSource
from streams.log.routing import route_event

pytestmark = pytest.mark.integration
PARTITIONS = 3
# Columns that say when or where a row was written rather than what it holds.
UNSTABLE_COLUMNS = {"updated_at", "last_event_offset"}


def item_churn(factory: EventFactory) -> Iterator[dict[str, Any]]:
    """A subscription whose items are added and removed: A, then A+B, then B, then B+C."""
    customer = factory.customer(created=factory.advance())
    yield factory.event("customer.created", customer, created=customer["created"])
    subscription = factory.subscription(customer, factory.default_price(), status="active")
    yield factory.event("customer.subscription.created", subscription)
    first = subscription["items"]["data"][0]

    def item() -> dict[str, Any]:
        fresh = copy.deepcopy(first)
        fresh["id"] = factory.new_id("subscription_item")
        return fresh

    second, third = item(), item()
    for items in ([first, second], [second], [second, third]):
        subscription["items"]["data"] = items
        subscription["items"]["total_count"] = len(items)
        yield factory.event("customer.subscription.updated", subscription)


def stories(seed: int, customers: int = 3) -> list[dict[str, Any]]:
    """Events of a few customers' lives, each customer's in the order Stripe sends them."""
    factory = EventFactory(seed=seed)
    events: list[dict[str, Any]] = []
    for _ in range(customers):
        events.extend(factory.customer_lifecycle(periods=2))
        events.extend(item_churn(factory))
    warning = {"id": "issfr_1", "object": "radar.early_fraud_warning", "actionable": True}
    events.append(factory.event("radar.early_fraud_warning.created", warning))
    return events


def envelope_of(event: dict[str, Any]) -> EventEnvelope:
    return EventEnvelope.from_event_dict(
        event, payload=json.dumps(event), endpoint="default", source=EventSource.WEBHOOK
    )


def deliver(envelopes: Iterable[EventEnvelope], prefix: str = "t") -> list[ConsumedEvent]:
    """Give each delivery the coordinates the router would: family topic, key's partition."""
    offsets: dict[tuple[str, int], int] = {}
    delivered = []
    for envelope in envelopes:
        topic = f"{prefix}.events.{route_event(envelope.type)}"
        partition = zlib.crc32(envelope.key) % PARTITIONS
        offset = offsets.get((topic, partition), 0)
        offsets[(topic, partition)] = offset + 1
        delivered.append(ConsumedEvent(envelope, topic, partition, offset))
    return delivered


async def apply_in_batches(
    url: str, deliveries: Sequence[ConsumedEvent], cuts: Sequence[int] = ()
) -> list[Outcome]:
    """Apply the deliveries per family, cutting each family's stream at the given sizes."""
    registry = load_handlers()
    outcomes = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        by_family: dict[str, list[ConsumedEvent]] = {}
        for delivery in deliveries:
            by_family.setdefault(delivery.topic.rsplit(".", 1)[1], []).append(delivery)
        for family, stream in by_family.items():
            sizes = itertools.cycle(cuts or [len(stream)])
            start = 0
            while start < len(stream):
                batch = stream[start : start + next(sizes)]
                applied = await apply_batch(conn, family, batch, registry)
                outcomes.extend(a.outcome for a in applied)
                start += len(batch)
    return outcomes


def mirror_snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every mirror table's rows, without the columns saying when and where they were written."""
    snapshot = {}
    with psycopg.connect(url) as conn:
        for table in sorted(load_handlers().tables):
            columns = [
                name for (name,) in conn.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = 'stripe' AND table_name = %s ORDER BY column_name",
                    (table,),
                )
                if name not in UNSTABLE_COLUMNS
            ]
            query = sql.SQL("SELECT {} FROM {} ORDER BY id").format(
                sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.Identifier("stripe", table),
            )
            snapshot[table] = [tuple(row) for row in conn.execute(query)]
    return snapshot


def event_log(url: str) -> dict[str, tuple[str, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT event_id, status, deliveries FROM ops.event_log")
        return {event_id: (status, deliveries) for event_id, status, deliveries in rows}


def empty_tables(url: str) -> None:
    tables = [sql.Identifier("stripe", table) for table in load_handlers().tables]
    tables += [sql.Identifier("ops", t) for t in ("event_log", "projection_offsets",
                                                   "event_stats", "dead_letters", "event_trail")]
    with psycopg.connect(url) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(tables)))


STORY = [envelope_of(event) for event in stories(seed=11)]


@pytest.fixture
def in_order(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """The tables after every event arrived once, in order, one batch per family."""
    outcomes = asyncio.run(apply_in_batches(database_url, deliver(STORY)))
    assert Outcome.STALE not in outcomes and Outcome.DUPLICATE not in outcomes
    snapshot = mirror_snapshot(database_url)
    empty_tables(database_url)
    return snapshot


def test_in_order_delivery_fills_the_mirrors_and_marks_removed_items(
    database_url: str,
) -> None:
    asyncio.run(apply_in_batches(database_url, deliver(STORY), cuts=[1]))

    with psycopg.connect(database_url) as conn:
        items = conn.execute(
            "SELECT count(*) FILTER (WHERE i.deleted), count(*) FILTER (WHERE NOT i.deleted) "
            "FROM stripe.subscription_items i JOIN stripe.subscriptions s "
            "ON s.id = i.subscription WHERE s.status = 'active'"
        ).fetchone()
        customers = conn.execute("SELECT count(*) FROM stripe.customers").fetchone()
    # Each churned subscription ends with B and C live and A removed.
    assert items == (3, 6)
    assert customers == (6,)
    statuses = event_log(database_url)
    assert len(statuses) == len(STORY)
    assert {status for status, _ in statuses.values()} == {"processed", "unhandled"}


@settings(
    max_examples=25, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_shuffled_and_duplicated_delivery_gives_the_same_tables(
    database_url: str, in_order: dict[str, list[tuple[Any, ...]]], data: st.DataObject
) -> None:
    order = data.draw(st.permutations(range(len(STORY))), label="order")
    copies = data.draw(
        st.lists(st.sampled_from(range(len(STORY))), max_size=20), label="redelivered"
    )
    envelopes = [STORY[i] for i in order]
    for i in copies:
        at = data.draw(st.integers(0, len(envelopes)), label="at")
        envelopes.insert(at, STORY[i])
    cuts = data.draw(st.lists(st.integers(1, 12), min_size=1, max_size=4), label="batches")
    empty_tables(database_url)

    asyncio.run(apply_in_batches(database_url, deliver(envelopes), cuts))

    assert mirror_snapshot(database_url) == in_order
    logged = event_log(database_url)
    assert set(logged) == {e.id for e in STORY}
    expected_deliveries = {e.id: 1 for e in STORY}
    for i in copies:
        expected_deliveries[STORY[i].id] += 1
    assert {event_id: n for event_id, (_, n) in logged.items()} == expected_deliveries
