"""Pure handlers: what each Stripe event writes into the mirror tables."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.devtools.samples import EventFactory, stripe_objects
from streams.errors import HandlerError
from streams.handlers.registry import ChildSet, MirrorRow, Projection, load_handlers
from streams.log.routing import route_event

REGISTRY = load_handlers()
HANDLED_TYPES = sorted(REGISTRY.event_types)


def _fixture(resource: str, **fields: Any) -> dict[str, Any]:
    obj: dict[str, Any] = copy.deepcopy(dict(stripe_objects()[resource]))
    obj.update(fields)
    return obj


def _event(event_type: str, obj: Mapping[str, Any], event_id: str = "evt_1Test") -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "created": 1_767_225_600,
        "data": {"object": obj},
        "livemode": False,
    }


def _project(event_type: str, obj: Mapping[str, Any]) -> Projection:
    handler = REGISTRY.lookup(event_type)
    assert handler is not None, f"{event_type} has no handler"
    return handler.handle(_event(event_type, obj))


def _only_row(event_type: str, obj: Mapping[str, Any]) -> MirrorRow:
    projection = _project(event_type, obj)
    assert projection.child_sets == ()
    (row,) = projection.rows
    return row


def _at(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def test_every_handled_type_routes_to_the_family_of_its_handler() -> None:
    assert len(HANDLED_TYPES) > 80
    for event_type, handler in REGISTRY.event_types.items():
        assert route_event(event_type) == handler.family, event_type


def test_every_handler_writes_only_tables_of_its_own_family() -> None:
    """Rebuilding one family swaps exactly its tables, so no other family may write them."""
    written = 0
    for event_type, handler in REGISTRY.event_types.items():
        object_type = event_type.rsplit(".", 1)[0]
        if object_type not in stripe_objects():
            continue
        for row in _project(event_type, _fixture(object_type)).rows:
            written += 1
            assert row.table in REGISTRY.tables_of(handler.family), (event_type, row.table)
    assert written > 60


def test_every_table_stripe_lists_is_repaired_by_its_reconciled_event() -> None:
    """reconcile appends <prefix>.reconciled with the object as listed: its table's handler
    must project it, in the table's family."""
    listed = {n: t for n, t in REGISTRY.tables.items() if t.api_path is not None}
    assert set(REGISTRY.tables) - set(listed) == {"subscription_items"}
    for name, table in listed.items():
        assert table.reconciled_type is not None, name
        assert route_event(table.reconciled_type) == table.family, name
        handler = REGISTRY.lookup(table.reconciled_type)
        assert handler is not None, name
        object_type = table.reconciled_type.rsplit(".", 2)[-2]
        resource = {"session": "checkout.session", "dispute": "dispute"}.get(
            object_type, object_type
        )
        if resource in stripe_objects():
            rows = handler.handle(_event(table.reconciled_type, _fixture(resource))).rows
            assert rows[0].table == name, name


def test_customer_columns_come_from_the_customer() -> None:
    row = _only_row("customer.updated", _fixture("customer", email="ada@example.com"))
    assert (row.table, row.id, row.deleted) == ("customers", "cus_QXg1o8vcGmoR32", False)
    assert row.columns == {
        "email": "ada@example.com",
        "name": None,
        "phone": None,
        "currency": "usd",
        "balance": 0,
        "delinquent": False,
        "created": datetime(2009, 2, 13, 23, 31, 30, tzinfo=UTC),
    }
    assert row.data["invoice_prefix"] == "7FE1103"


def test_customer_deleted_marks_the_customer_deleted() -> None:
    assert _only_row("customer.deleted", _fixture("customer")).deleted
    stub = {"id": "cus_QXg1o8vcGmoR32", "object": "customer", "deleted": True}
    row = _only_row("customer.deleted", stub)
    assert row.deleted
    assert row.columns["email"] is None


def test_subscription_projects_its_items_and_their_complete_set() -> None:
    subscription = _fixture("subscription")
    projection = _project("customer.subscription.updated", subscription)
    sub_row, item_row = projection.rows
    assert (sub_row.table, sub_row.id) == ("subscriptions", "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw")
    assert sub_row.columns["customer"] == "cus_QXg1o8vcGmoR32"
    assert sub_row.columns["status"] == "active"
    assert sub_row.columns["cancel_at_period_end"] is True
    assert sub_row.columns["canceled_at"] == _at(1234567890)
    assert sub_row.columns["trial_end"] == _at(1234567890)
    assert (item_row.table, item_row.id) == ("subscription_items", "si_QXhVnC2h0Jczwc")
    assert item_row.columns["subscription"] == sub_row.id
    assert item_row.columns["price"] == "price_1PgafmB7WZ01zgkW6dKueIc5"
    assert item_row.columns["product"] == "prod_QXg1hqf4jFNsqG"
    assert item_row.columns["quantity"] == 1
    assert item_row.columns["created"] == _at(1721954054)
    assert projection.child_sets == (
        ChildSet("subscription_items", "subscription", sub_row.id, frozenset({item_row.id})),
    )


def test_subscription_period_is_read_from_items_in_newer_api_versions() -> None:
    factory = EventFactory(seed=11)
    subscription = factory.subscription(factory.customer(), factory.default_price())
    second = copy.deepcopy(subscription["items"]["data"][0])
    second.update(id="si_Second", current_period_start=1_000, current_period_end=9_000)
    first = subscription["items"]["data"][0]
    first.update(current_period_start=2_000, current_period_end=12_000)
    subscription["items"]["data"].append(second)
    row = _project("customer.subscription.updated", subscription).rows[0]
    assert row.columns["current_period_start"] == _at(2_000)
    assert row.columns["current_period_end"] == _at(9_000)


def test_subscription_period_of_older_api_versions_wins_over_items() -> None:
    subscription = _fixture("subscription", current_period_start=5_000, current_period_end=8_000)
    row = _project("customer.subscription.updated", subscription).rows[0]
    assert row.columns["current_period_start"] == _at(5_000)
    assert row.columns["current_period_end"] == _at(8_000)


def test_removed_item_is_left_out_of_the_child_set() -> None:
    factory = EventFactory(seed=5)
    subscription = factory.subscription(factory.customer(), factory.default_price())
    kept = subscription["items"]["data"][0]
    added = copy.deepcopy(kept) | {"id": "si_Added"}
    subscription["items"]["data"].append(added)
    before = _project("customer.subscription.updated", subscription).child_sets[0]
    subscription["items"]["data"].remove(added)
    after = _project("customer.subscription.updated", subscription).child_sets[0]
    assert before.ids == {kept["id"], "si_Added"}
    assert after.ids == {kept["id"]}


def test_incomplete_item_list_sets_no_child_set() -> None:
    subscription = _fixture("subscription")
    subscription["items"]["has_more"] = True
    projection = _project("customer.subscription.updated", subscription)
    assert len(projection.rows) == 2
    assert projection.child_sets == ()


def test_item_belongs_to_the_subscription_listing_it() -> None:
    subscription = _fixture("subscription")
    del subscription["items"]["data"][0]["subscription"]
    item_row = _project("customer.subscription.created", subscription).rows[1]
    assert item_row.columns["subscription"] == subscription["id"]


def test_subscription_schedule_columns() -> None:
    row = _only_row("subscription_schedule.created", _fixture("subscription_schedule"))
    assert row.table == "subscription_schedules"
    assert row.columns["customer"] == "cus_QXg1o8vcGmoR32"
    assert row.columns["status"] == "not_started"
    assert row.columns["current_phase_start"] == _at(1573629589)
    assert row.columns["current_phase_end"] == _at(1725067410)


def test_invoice_subscription_is_read_from_its_parent() -> None:
    row = _only_row("invoice.finalized", _fixture("invoice"))
    assert (row.table, row.id) == ("invoices", "in_1Pgc6tB7WZ01zgkWu9fdqL6I")
    assert row.columns["subscription"] == "subscription"
    assert row.columns["customer"] == "cus_QXg1o8vcGmoR32"
    assert row.columns["status"] == "draft"
    assert (row.columns["amount_due"], row.columns["amount_paid"]) == (1000, 0)
    assert (row.columns["amount_remaining"], row.columns["total"]) == (1000, 1000)
    assert row.columns["period_end"] == _at(1234567890)
    assert row.columns["paid_at"] is None


def test_invoice_subscription_of_older_api_versions() -> None:
    row = _only_row("invoice.paid", _fixture("invoice", subscription="sub_Old", parent=None))
    assert row.columns["subscription"] == "sub_Old"


def test_invoice_deleted_and_upcoming() -> None:
    assert _only_row("invoice.deleted", _fixture("invoice")).deleted
    assert REGISTRY.lookup("invoice.upcoming") is None


def test_invoice_item_and_credit_note_columns() -> None:
    item = _only_row("invoiceitem.created", _fixture("invoiceitem"))
    assert item.table == "invoice_items"
    assert (item.columns["amount"], item.columns["subscription"]) == (1000, "subscription")
    assert item.columns["date"] == _at(1234567890)
    assert _only_row("invoiceitem.deleted", _fixture("invoiceitem")).deleted
    note = _only_row("credit_note.voided", _fixture("credit_note"))
    assert note.table == "credit_notes"
    assert note.columns["invoice"] == "in_1Pgc75B7WZ01zgkWYv4iMwt7"
    assert (note.columns["amount"], note.columns["status"]) == (1690, "issued")


def test_payment_intent_and_charge_columns() -> None:
    intent = _only_row("payment_intent.created", _fixture("payment_intent"))
    assert intent.table == "payment_intents"
    assert intent.columns["status"] == "requires_payment_method"
    assert (intent.columns["amount"], intent.columns["amount_received"]) == (1099, 0)
    charge = _only_row("charge.succeeded", _fixture("charge", payment_intent="pi_123"))
    assert charge.table == "charges"
    assert charge.columns["payment_intent"] == "pi_123"
    assert (charge.columns["amount"], charge.columns["amount_refunded"]) == (100, 0)
    assert (charge.columns["paid"], charge.columns["refunded"]) == (True, False)
    assert charge.columns["payment_method"] == "card_1PgaftB7WZ01zgkWm3waTcFp"


@pytest.mark.parametrize("event_type", ["refund.updated", "charge.refund.updated"])
def test_refund_events_update_the_refund(event_type: str) -> None:
    row = _only_row(event_type, _fixture("refund"))
    assert (row.table, row.id) == ("refunds", "re_1Pgc72B7WZ01zgkWqPvrRrPE")
    assert row.columns["charge"] == "ch_1PgafuB7WZ01zgkWXYmPNZs8"
    assert (row.columns["amount"], row.columns["status"]) == (100, "succeeded")


def test_payment_method_and_setup_intent_columns() -> None:
    card = _only_row("payment_method.attached", _fixture("payment_method", customer="cus_1"))
    assert card.columns["customer"] == "cus_1"
    assert (card.columns["card_brand"], card.columns["card_last4"]) == ("visa", "4242")
    assert (card.columns["card_exp_month"], card.columns["card_exp_year"]) == (8, 2030)
    detached = _only_row("payment_method.detached", _fixture("payment_method"))
    assert detached.columns["customer"] is None
    assert not detached.deleted
    intent = _only_row("setup_intent.created", _fixture("setup_intent"))
    assert (intent.table, intent.columns["usage"]) == ("setup_intents", "off_session")


def test_checkout_session_columns() -> None:
    row = _only_row("checkout.session.completed", _fixture("checkout.session"))
    assert row.table == "checkout_sessions"
    assert row.columns["customer_email"] == "example@example.com"
    assert row.columns["payment_intent"] == "pi_1PgafyB7WZ01zgkWSjxsAJo3"
    assert (row.columns["status"], row.columns["mode"]) == ("open", "payment")


def test_catalog_columns() -> None:
    product = _only_row("product.updated", _fixture("product"))
    assert (product.columns["name"], product.columns["active"]) == ("T-shirt", True)
    assert product.columns["default_price"] == "price_1PgafmB7WZ01zgkW02Hf9z6c"
    assert _only_row("product.deleted", _fixture("product")).deleted
    price = _only_row("price.created", _fixture("price"))
    assert (price.columns["unit_amount"], price.columns["recurring_interval"]) == (2000, "month")
    assert price.columns["product"] == "prod_QXg1hqf4jFNsqG"
    coupon = _only_row("coupon.created", _fixture("coupon"))
    assert coupon.columns["percent_off"] == Decimal("25.5")


def test_plans_have_their_own_table_beside_prices() -> None:
    plan_event = copy.deepcopy(dict(stripe_objects()["event"]))
    assert plan_event["type"] == "plan.created"
    handler = REGISTRY.lookup("plan.created")
    assert handler is not None
    (row,) = handler.handle(plan_event).rows
    assert (row.table, row.id) == ("plans", "price_1PgafmB7WZ01zgkW6dKueIc5")
    assert (row.columns["amount"], row.columns["interval"]) == (2000, "month")


def test_promotion_code_coupon_in_both_api_shapes() -> None:
    newer = _fixture("promotion_code", promotion={"type": "coupon", "coupon": "Z4OV52SU"})
    assert _only_row("promotion_code.created", newer).columns["coupon"] == "Z4OV52SU"
    older = _fixture("promotion_code", coupon=_fixture("coupon"))
    del older["promotion"]
    row = _only_row("promotion_code.updated", older)
    assert (row.columns["coupon"], row.columns["code"]) == ("Z4OV52SU", "FALL20")


def test_dispute_columns() -> None:
    row = _only_row("charge.dispute.created", _fixture("dispute"))
    assert (row.table, row.id) == ("disputes", "dp_1Pgc71B7WZ01zgkWMevJiAUx")
    assert row.columns["charge"] == "ch_1PgafuB7WZ01zgkWXYmPNZs8"
    assert (row.columns["status"], row.columns["reason"]) == ("warning_needs_response", "general")
    assert row.columns["evidence_due_by"] == _at(1723679999)


@pytest.mark.parametrize("event_type", HANDLED_TYPES)
def test_event_without_an_object_is_refused_for_good(event_type: str) -> None:
    handler = REGISTRY.lookup(event_type)
    assert handler is not None
    event = _event(event_type, {}, event_id="evt_1Broken")
    event["data"] = {"object": "not an object"}
    with pytest.raises(HandlerError, match="evt_1Broken") as raised:
        handler.handle(event)
    assert not raised.value.retriable
    assert "data.object" in str(raised.value)


@pytest.mark.parametrize("event_type", HANDLED_TYPES)
def test_object_of_another_type_is_refused(event_type: str) -> None:
    with pytest.raises(HandlerError, match=r"data\.object\.object is 'payout'"):
        _project(event_type, {"id": "po_123", "object": "payout"})


@pytest.mark.parametrize(
    ("event_type", "resource", "field", "value"),
    [
        ("charge.succeeded", "charge", "amount", "100"),
        ("customer.updated", "customer", "delinquent", "no"),
        ("invoice.paid", "invoice", "created", 1.5),
        ("payment_intent.succeeded", "payment_intent", "customer", 42),
        ("customer.subscription.updated", "subscription", "items", "everything"),
        ("charge.succeeded", "charge", "amount", 2**63),
        ("customer.updated", "customer", "balance", -(2**63) - 1),
        ("invoice.paid", "invoice", "created", 1_000_000_000_000),
        ("customer.updated", "customer", "created", -1_000_000_000_000),
    ],
)
def test_field_of_the_wrong_type_names_event_and_field(
    event_type: str, resource: str, field: str, value: object
) -> None:
    with pytest.raises(HandlerError, match=rf"evt_1Test .*data\.object\.{field} ") as raised:
        _project(event_type, _fixture(resource, **{field: value}))
    assert not raised.value.retriable


def test_object_without_an_id_is_refused() -> None:
    with pytest.raises(HandlerError, match=r"data\.object\.id is missing"):
        _project("customer.created", {"object": "customer", "email": "a@example.com"})


def test_malformed_subscription_item_names_its_position() -> None:
    subscription = _fixture("subscription")
    subscription["items"]["data"].append("si_NotExpanded")
    with pytest.raises(HandlerError, match=r"data\.object\.items\.data\.1 is not an object"):
        _project("customer.subscription.updated", subscription)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(HANDLED_TYPES), st.integers(min_value=0, max_value=2**32))
def test_rows_carry_exactly_the_declared_columns(event_type: str, seed: int) -> None:
    event = EventFactory(seed=seed).sample_event(event_type)
    handler = REGISTRY.lookup(event_type)
    assert handler is not None
    projection = handler.handle(event)
    assert projection.rows[0].id == event["data"]["object"]["id"]
    for row in projection.rows:
        assert set(row.columns) == set(REGISTRY.tables[row.table].columns)
        for value in row.columns.values():
            if isinstance(value, datetime):
                assert value.tzinfo is UTC
