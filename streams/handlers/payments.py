"""Payments: payment intents, charges, refunds, payment methods and setup intents.

``charge.refund.updated`` carries a refund, so it updates ``refunds`` like ``refund.updated``.
"""

from __future__ import annotations

from streams.handlers.mirror import Mirror, boolean, integer, reference, text, timestamp

PAYMENT_INTENTS = Mirror.declare(
    "payment_intents",
    "payment_intent",
    events=(
        "payment_intent.created",
        "payment_intent.processing",
        "payment_intent.requires_action",
        "payment_intent.amount_capturable_updated",
        "payment_intent.partially_funded",
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.canceled",
    ),
    customer=reference("customer"),
    status=text("status"),
    amount=integer("amount"),
    amount_capturable=integer("amount_capturable"),
    amount_received=integer("amount_received"),
    currency=text("currency"),
    payment_method=reference("payment_method"),
    latest_charge=reference("latest_charge"),
    invoice=reference("invoice"),
    capture_method=text("capture_method"),
    canceled_at=timestamp("canceled_at"),
    created=timestamp("created"),
)

CHARGES = Mirror.declare(
    "charges",
    "charge",
    events=(
        "charge.pending",
        "charge.succeeded",
        "charge.failed",
        "charge.captured",
        "charge.expired",
        "charge.refunded",
        "charge.updated",
    ),
    customer=reference("customer"),
    payment_intent=reference("payment_intent"),
    invoice=reference("invoice"),
    status=text("status"),
    amount=integer("amount"),
    amount_captured=integer("amount_captured"),
    amount_refunded=integer("amount_refunded"),
    currency=text("currency"),
    paid=boolean("paid"),
    captured=boolean("captured"),
    refunded=boolean("refunded"),
    disputed=boolean("disputed"),
    payment_method=reference("payment_method"),
    failure_code=text("failure_code"),
    created=timestamp("created"),
)

REFUNDS = Mirror.declare(
    "refunds",
    "refund",
    events=("refund.created", "refund.updated", "refund.failed", "charge.refund.updated"),
    charge=reference("charge"),
    payment_intent=reference("payment_intent"),
    status=text("status"),
    amount=integer("amount"),
    currency=text("currency"),
    reason=text("reason"),
    created=timestamp("created"),
)

PAYMENT_METHODS = Mirror.declare(
    "payment_methods",
    "payment_method",
    events=(
        "payment_method.attached",
        "payment_method.updated",
        "payment_method.automatically_updated",
        "payment_method.detached",
    ),
    customer=reference("customer"),
    type=text("type"),
    card_brand=text("card", "brand"),
    card_last4=text("card", "last4"),
    card_exp_month=integer("card", "exp_month"),
    card_exp_year=integer("card", "exp_year"),
    created=timestamp("created"),
)

SETUP_INTENTS = Mirror.declare(
    "setup_intents",
    "setup_intent",
    events=(
        "setup_intent.created",
        "setup_intent.requires_action",
        "setup_intent.succeeded",
        "setup_intent.setup_failed",
        "setup_intent.canceled",
    ),
    customer=reference("customer"),
    status=text("status"),
    payment_method=reference("payment_method"),
    usage=text("usage"),
    created=timestamp("created"),
)
