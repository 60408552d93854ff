"""Checkout Sessions: completed, expired and asynchronous payment outcomes."""

from __future__ import annotations

from streams.handlers.mirror import Mirror, first, integer, reference, text, timestamp

CHECKOUT_SESSIONS = Mirror.declare(
    "checkout_sessions",
    "checkout.session",
    api_path="/v1/checkout/sessions",
    events=(
        "checkout.session.completed",
        "checkout.session.expired",
        "checkout.session.async_payment_succeeded",
        "checkout.session.async_payment_failed",
    ),
    customer=reference("customer"),
    customer_email=first(text("customer_details", "email"), text("customer_email")),
    status=text("status"),
    payment_status=text("payment_status"),
    mode=text("mode"),
    currency=text("currency"),
    amount_subtotal=integer("amount_subtotal"),
    amount_total=integer("amount_total"),
    payment_intent=reference("payment_intent"),
    setup_intent=reference("setup_intent"),
    subscription=reference("subscription"),
    invoice=reference("invoice"),
    client_reference_id=text("client_reference_id"),
    expires_at=timestamp("expires_at"),
    created=timestamp("created"),
)
