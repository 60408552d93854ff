"""The routing table: which family topic every Stripe event type goes to.

Types are matched by their longest dot-separated prefix in :data:`ROUTES`, so
``charge.dispute.created`` goes to ``disputes`` while ``charge.succeeded`` goes to ``payments``.
A type no prefix matches (an unknown or future type, a thin ``v1.*`` event) goes to ``other``,
where it is recorded and acknowledged, never rejected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

OTHER = "other"

FAMILIES: tuple[str, ...] = (
    "customers",
    "subscriptions",
    "invoices",
    "payments",
    "checkout",
    "catalog",
    "disputes",
    OTHER,
)

ROUTES: Mapping[str, str] = {
    # customer.discount.*, customer.source.* and customer.tax_id.* stay with their customer.
    "customer": "customers",
    "customer.subscription": "subscriptions",
    "subscription_schedule": "subscriptions",
    "invoice": "invoices",
    "invoiceitem": "invoices",
    "invoice_payment": "invoices",
    "credit_note": "invoices",
    "payment_intent": "payments",
    "charge": "payments",
    "refund": "payments",
    "payment_method": "payments",
    "setup_intent": "payments",
    "checkout.session": "checkout",
    "product": "catalog",
    "price": "catalog",
    "plan": "catalog",
    "coupon": "catalog",
    "promotion_code": "catalog",
    "charge.dispute": "disputes",
}

T = TypeVar("T")


def longest_prefix(table: Mapping[str, T], event_type: str) -> T | None:
    """Return the value of the longest dot-separated prefix of ``event_type`` in ``table``."""
    segments = event_type.split(".")
    for length in range(len(segments), 0, -1):
        value = table.get(".".join(segments[:length]))
        if value is not None:
            return value
    return None


def route_event(event_type: str) -> str:
    """Return the family whose topic carries events of this type (``other`` when unknown)."""
    return longest_prefix(ROUTES, event_type) or OTHER
