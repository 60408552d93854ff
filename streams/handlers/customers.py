"""Customers: ``customer.created``, ``customer.updated`` and ``customer.deleted``.

``customer.deleted`` means Stripe deleted the customer for good, so its row is marked deleted.
``customer.discount.*``, ``customer.source.*`` and ``customer.tax_id.*`` travel on the customers
topic too but carry other objects; they are recorded as unhandled (the ``*.deleted`` ones
explicitly, below).
"""

from __future__ import annotations

from streams.handlers.mirror import Mirror, boolean, integer, text, timestamp
from streams.handlers.registry import REGISTRY

CUSTOMERS = Mirror.declare(
    "customers",
    "customer",
    events=("customer.created", "customer.updated"),
    deletes=("customer.deleted",),
    email=text("email"),
    name=text("name"),
    phone=text("phone"),
    currency=text("currency"),
    balance=integer("balance"),
    delinquent=boolean("delinquent"),
    created=timestamp("created"),
)


REGISTRY.leaves_unhandled(
    "customer.discount.deleted",
    reason="carries the discount removed from a customer, who lives on",
)
REGISTRY.leaves_unhandled(
    "customer.source.deleted",
    reason="carries a card, bank account or source removed from a customer, who lives on",
)
REGISTRY.leaves_unhandled(
    "customer.tax_id.deleted",
    reason="carries a tax ID deleted from a customer, who lives on; tax IDs are not mirrored",
)
