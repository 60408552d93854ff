"""Routing every Stripe event type to the family topic that carries it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from streams.log.routing import FAMILIES, OTHER, ROUTES, route_event

EVENT_TYPES = Path(__file__).resolve().parents[1] / "data" / "stripe_event_types.txt"


def _stripe_event_types() -> list[str]:
    return EVENT_TYPES.read_text().split()


def test_every_stripe_event_type_routes_to_a_known_family() -> None:
    types = _stripe_event_types()
    assert len(types) == 275
    routed = Counter(route_event(event_type) for event_type in types)
    assert set(routed) == set(FAMILIES)
    assert sum(routed.values()) == 275


@pytest.mark.parametrize(
    ("event_type", "family"),
    [
        ("customer.created", "customers"),
        ("customer.deleted", "customers"),
        ("customer.tax_id.created", "customers"),
        ("customer.subscription.updated", "subscriptions"),
        ("subscription_schedule.aborted", "subscriptions"),
        ("invoice.paid", "invoices"),
        ("invoice.upcoming", "invoices"),
        ("invoiceitem.created", "invoices"),
        ("credit_note.voided", "invoices"),
        ("payment_intent.succeeded", "payments"),
        ("charge.succeeded", "payments"),
        ("charge.refund.updated", "payments"),
        ("refund.created", "payments"),
        ("payment_method.attached", "payments"),
        ("setup_intent.succeeded", "payments"),
        ("checkout.session.completed", "checkout"),
        ("product.updated", "catalog"),
        ("price.deleted", "catalog"),
        ("plan.created", "catalog"),
        ("coupon.created", "catalog"),
        ("promotion_code.updated", "catalog"),
        ("charge.dispute.created", "disputes"),
        ("charge.dispute.funds_withdrawn", "disputes"),
        ("customer_cash_balance_transaction.created", OTHER),
        ("payout.paid", OTHER),
        ("issuing_dispute.created", OTHER),
        ("v1.billing.meter.error_report_triggered", OTHER),
        ("", OTHER),
    ],
)
def test_key_event_types_route_to_their_family(event_type: str, family: str) -> None:
    assert route_event(event_type) == family


def test_routes_only_name_declared_families() -> None:
    assert set(ROUTES.values()) | {OTHER} == set(FAMILIES)


@given(st.sampled_from(sorted(ROUTES)), st.from_regex(r"[a-z_]{1,20}", fullmatch=True))
def test_future_event_types_of_a_known_resource_follow_its_family(prefix: str, action: str) -> None:
    event_type = f"{prefix}.{action}"
    assume(event_type not in ROUTES)
    assert route_event(event_type) == ROUTES[prefix]


@given(st.text(max_size=60))
def test_any_type_routes_somewhere_and_never_raises(event_type: str) -> None:
    assert route_event(event_type) in FAMILIES
