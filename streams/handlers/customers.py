"""Customers: ``customer.created``, ``customer.updated`` and ``customer.deleted``.

``customer.discount.*``, ``customer.source.*`` and ``customer.tax_id.*`` travel on the customers
topic too but carry other objects; they are recorded as unhandled.
"""

from __future__ import annotations

from streams.handlers.mirror import Mirror, boolean, integer, text, timestamp
from streams.handlers.registry import REGISTRY, Event, Projection

CUSTOMERS = Mirror.declare(
    "customers",
    "customer",
    email=text("email"),
    name=text("name"),
    phone=text("phone"),
    currency=text("currency"),
    balance=integer("balance"),
    delinquent=boolean("delinquent"),
    created=timestamp("created"),
)


@REGISTRY.handles("customers", "customer.created", "customer.updated", "customer.deleted")
def customer_changed(event: Event) -> Projection:
    """Mirror the customer; ``customer.deleted`` marks it deleted."""
    return CUSTOMERS.project(event)
