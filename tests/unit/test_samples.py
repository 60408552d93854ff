"""Sample Stripe events: realistic, coherent, accepted by the pipeline and deterministic."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.devtools.samples import EventFactory, stripe_objects
from streams.handlers.registry import MirrorRow, load_handlers
from streams.log.envelope import EventEnvelope, EventSource
from streams.log.routing import route_event

REGISTRY = load_handlers()
LIFECYCLE = [
    "customer.created",
    "payment_method.attached",
    "customer.updated",
    "customer.subscription.created",
    "invoice.created",
    "invoice.finalized",
    "charge.succeeded",
    "payment_intent.succeeded",
    "invoice.paid",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.updated",
]


def _envelope(event: dict[str, Any]) -> EventEnvelope:
    return EventEnvelope.from_stripe_event(
        json.dumps(event), endpoint="default", source=EventSource.WEBHOOK
    )


def _mirror(events: list[dict[str, Any]]) -> dict[tuple[str, str], MirrorRow]:
    """The newest row of every object after applying the events in order."""
    rows: dict[tuple[str, str], MirrorRow] = {}
    for event in events:
        handler = REGISTRY.lookup(event["type"])
        assert handler is not None, event["type"]
        for row in handler.handle(event).rows:
            rows[row.table, row.id] = row
    return rows


def test_shipped_objects_are_the_stripe_resources_the_factory_needs() -> None:
    objects = stripe_objects()
    assert len(objects) == 20
    for resource, obj in objects.items():
        assert obj["object"] == resource


def test_lifecycle_tells_the_story_in_order() -> None:
    events = list(EventFactory(seed=1).customer_lifecycle())
    assert [event["type"] for event in events] == LIFECYCLE


def test_lifecycle_events_are_strictly_ordered_per_object() -> None:
    created = defaultdict(list)
    for event in EventFactory(seed=2).customer_lifecycle(periods=3):
        created[_envelope(event).object_id].append(event["created"])
    assert len(created) == 1 + 1 + 1 + 3 * 3
    for times in created.values():
        assert times == sorted(set(times))


def test_lifecycle_references_agree_and_end_in_the_expected_tables() -> None:
    events = list(EventFactory(seed=3).customer_lifecycle(periods=2))
    rows = _mirror(events)
    by_table = defaultdict(list)
    for (table, _), row in rows.items():
        by_table[table].append(row)
    (customer,) = by_table["customers"]
    (card,) = by_table["payment_methods"]
    (subscription,) = by_table["subscriptions"]
    (item,) = by_table["subscription_items"]
    assert len(by_table["invoices"]) == len(by_table["charges"]) == 2
    assert card.columns["customer"] == customer.id
    assert subscription.columns["customer"] == customer.id
    assert subscription.columns["status"] == "canceled" and not subscription.deleted
    assert item.columns["subscription"] == subscription.id and not item.deleted
    assert subscription.columns["current_period_end"] == item.columns["current_period_end"]
    for invoice in by_table["invoices"]:
        assert invoice.columns["subscription"] == subscription.id
        assert invoice.columns["status"] == "paid"
        assert invoice.columns["amount_paid"] == invoice.columns["amount_due"] > 0
    intents = {row.id: row for row in by_table["payment_intents"]}
    for charge in by_table["charges"]:
        intent = intents[charge.columns["payment_intent"]]
        assert intent.columns["latest_charge"] == charge.id
        assert intent.columns["status"] == "succeeded"
        assert charge.columns["customer"] == customer.id
        assert charge.columns["payment_method"] == card.id
    first_email = events[0]["data"]["object"]["email"]
    assert customer.columns["email"] != first_email
    assert not customer.deleted


def test_renewals_move_the_billing_period_a_month_on() -> None:
    events = list(EventFactory(seed=4).customer_lifecycle(periods=3))
    invoices = [event for event in events if event["type"] == "invoice.created"]
    starts = [event["data"]["object"]["lines"]["data"][0]["period"]["start"] for event in invoices]
    assert [later - earlier for earlier, later in pairwise(starts)] == [30 * 86_400] * 2


def test_bodies_are_as_large_as_real_webhooks() -> None:
    sizes = [len(json.dumps(event)) for event in EventFactory(seed=5).customer_lifecycle()]
    assert 2_500 <= sum(sizes) / len(sizes) <= 4_500
    assert max(sizes) < 8_000


def test_same_seed_same_events_and_other_seed_other_ids() -> None:
    first = list(EventFactory(seed=6).customer_lifecycle(periods=2))
    again = list(EventFactory(seed=6).customer_lifecycle(periods=2))
    other = list(EventFactory(seed=7).customer_lifecycle(periods=2))
    assert first == again
    assert {event["id"] for event in first}.isdisjoint(event["id"] for event in other)


def test_lifecycles_of_one_factory_share_nothing_but_the_price() -> None:
    factory = EventFactory(seed=8)
    first = list(factory.customer_lifecycle())
    second = list(factory.customer_lifecycle())
    assert {_envelope(event).object_id for event in first}.isdisjoint(
        _envelope(event).object_id for event in second
    )
    assert second[0]["created"] > first[-1]["created"]


def test_explicit_created_is_kept_and_the_clock_follows() -> None:
    factory = EventFactory(seed=9)
    customer = factory.customer()
    stamped = factory.event("customer.updated", customer, created=1_900_000_000)
    later = factory.event("customer.updated", customer)
    assert stamped["created"] == 1_900_000_000
    assert later["created"] > stamped["created"]


def test_event_keeps_a_snapshot_of_the_object() -> None:
    factory = EventFactory(seed=10)
    customer = factory.customer()
    event = factory.event("customer.created", customer)
    customer["email"] = "changed@example.com"
    assert event["data"]["object"]["email"] != "changed@example.com"


def test_connect_events_carry_the_account() -> None:
    factory = EventFactory(seed=12, account="acct_1Connected", livemode=True)
    envelope = _envelope(factory.sample_event("charge.succeeded"))
    assert (envelope.account, envelope.livemode) == ("acct_1Connected", True)


def test_thin_event_is_accepted_and_routed_to_other() -> None:
    factory = EventFactory(seed=13, start=1_767_225_600)
    event = factory.thin_event(related_id="mtr_123", created=1_767_225_700)
    assert event["created"] == "2026-01-01T00:01:40.000Z"
    envelope = _envelope(event)
    assert (envelope.object_id, envelope.object_type) == ("mtr_123", "billing.meter")
    assert envelope.created == 1_767_225_700
    assert route_event(envelope.type) == "other"


def test_unseeded_factory_starts_now() -> None:
    before = int(datetime.now(UTC).timestamp())
    assert EventFactory().sample_event("customer.created")["created"] >= before


def test_type_without_a_sample_object_is_refused() -> None:
    with pytest.raises(ValueError, match=r"payout\.paid"):
        EventFactory(seed=14).sample_event("payout.paid")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(REGISTRY.event_types)), st.integers(0, 2**32))
def test_every_sample_event_is_accepted_routed_and_projected(event_type: str, seed: int) -> None:
    event = EventFactory(seed=seed).sample_event(event_type)
    envelope = _envelope(event)
    handler = REGISTRY.lookup(envelope.type)
    assert handler is not None
    assert route_event(envelope.type) == handler.family
    assert handler.handle(event).rows[0].id == envelope.object_id
