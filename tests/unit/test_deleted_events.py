"""What each ``*.deleted`` Stripe event type does to a mirror row, decided once per type.

Stripe names several events ``*.deleted`` that delete nothing: ``customer.subscription.deleted``
ends a subscription that Stripe keeps, and ``customer.discount.deleted`` removes a discount from
a customer who lives on. Every such type of Stripe's list has a decision pinned here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streams.devtools.samples import EventFactory
from streams.handlers.registry import HandlerRegistry, Projection, load_handlers
from streams.log.routing import route_event

REGISTRY = load_handlers()
STRIPE_EVENT_TYPES = Path(__file__).resolve().parents[1] / "data" / "stripe_event_types.txt"

DELETES = {
    "coupon.deleted": "coupons",
    "customer.deleted": "customers",
    "invoice.deleted": "invoices",
    "invoiceitem.deleted": "invoice_items",
    "plan.deleted": "plans",
    "price.deleted": "prices",
    "product.deleted": "products",
}
"""Types whose event means Stripe deleted the object it carries, and the table of its row."""

ENDS = {"customer.subscription.deleted"}
"""Types that end an object Stripe keeps: projected like an update, the row stays."""

UNHANDLED = {
    "account.external_account.deleted": "other",
    "apps.install.deleted": "other",
    "customer.discount.deleted": "customers",
    "customer.source.deleted": "customers",
    "customer.tax_id.deleted": "customers",
    "person.deleted": "other",
    "test_helpers.test_clock.deleted": "other",
}
"""Types that project nothing, and the family whose topic carries them."""


def _deleted_types() -> set[str]:
    return {
        event_type
        for event_type in STRIPE_EVENT_TYPES.read_text(encoding="utf-8").split()
        if event_type.endswith(".deleted")
    }


def _project(event: dict[str, Any]) -> Projection:
    handler = REGISTRY.lookup(event["type"])
    assert handler is not None, f"{event['type']} has no handler"
    return handler.handle(event)


def _sample(event_type: str) -> dict[str, Any]:
    """A realistic event of ``event_type``, as Stripe sends it: the full object, not a stub."""
    event = EventFactory(seed=23).sample_event(event_type)
    if event_type == "invoice.deleted":
        # Stripe deletes only one-off drafts; a subscription's invoice is voided instead.
        event["data"]["object"].update(status="draft", billing_reason="manual", parent=None)
    return event


def test_every_deleted_type_of_stripe_has_exactly_one_recorded_decision() -> None:
    listed = _deleted_types()
    assert len(listed) == 15
    assert DELETES.keys() | ENDS | UNHANDLED.keys() == listed
    for event_type in listed:
        assert (event_type in REGISTRY.unhandled_types) == (event_type in UNHANDLED), event_type
        assert (event_type in REGISTRY.event_types) == (event_type not in UNHANDLED), event_type
        assert REGISTRY.deletes(event_type) == (event_type in DELETES), event_type


@pytest.mark.parametrize("event_type", sorted(DELETES))
def test_a_type_that_deletes_marks_the_full_object_deleted(event_type: str) -> None:
    event = _sample(event_type)
    (row,) = _project(event).rows
    assert (row.table, row.id) == (DELETES[event_type], event["data"]["object"]["id"])
    assert row.deleted
    # The row keeps the object's last values, which Stripe sends with the deletion.
    assert row.data == event["data"]["object"]
    assert any(value is not None for value in row.columns.values())


def test_customer_subscription_deleted_ends_the_subscription_and_keeps_its_rows() -> None:
    events = EventFactory(seed=29).customer_lifecycle()
    ended = next(event for event in events if event["type"] == "customer.subscription.deleted")
    subscription = ended["data"]["object"]
    projection = _project(ended)
    row, *items = projection.rows
    assert (row.table, row.id, row.deleted) == ("subscriptions", subscription["id"], False)
    assert row.columns["status"] == "canceled"
    assert row.columns["ended_at"] is not None
    assert [(item.table, item.deleted) for item in items] == [("subscription_items", False)]
    assert {child_set.ids for child_set in projection.child_sets} == {
        frozenset(item["id"] for item in subscription["items"]["data"])
    }


@pytest.mark.parametrize("event_type", sorted(UNHANDLED))
def test_a_type_left_unhandled_projects_nothing_on_the_topic_that_carries_it(
    event_type: str,
) -> None:
    assert REGISTRY.lookup(event_type) is None
    recorded = REGISTRY.unhandled_types[event_type]
    assert recorded.family == UNHANDLED[event_type] == route_event(event_type)
    assert recorded.reason


@pytest.mark.parametrize("event_type", sorted(REGISTRY.event_types))
def test_a_deleted_stub_marks_the_row_deleted_whatever_the_type(event_type: str) -> None:
    event = EventFactory(seed=31).sample_event(event_type)
    obj = event["data"]["object"]
    event["data"]["object"] = {"id": obj["id"], "object": obj["object"], "deleted": True}
    (row,) = _project(event).rows
    assert (row.id, row.deleted) == (obj["id"], True)


def test_a_type_cannot_be_both_handled_and_left_unhandled() -> None:
    registry = HandlerRegistry()
    registry.leaves_unhandled("widget.deleted", reason="not mirrored")
    with pytest.raises(ValueError, match=r"'widget\.deleted' is declared twice"):
        registry.handles(deletes=("widget.deleted",))(lambda event: Projection())


def test_a_handler_belongs_to_the_family_the_routing_table_names() -> None:
    registry = HandlerRegistry()
    registry.handles("customer.created")(lambda event: Projection())

    registered = registry.lookup("customer.created")
    assert registered is not None and registered.family == route_event("customer.created")
    with pytest.raises(ValueError, match="route to families"):
        registry.handles("customer.updated", "invoice.paid")(lambda event: Projection())
