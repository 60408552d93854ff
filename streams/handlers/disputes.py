"""Disputes: every ``charge.dispute.*`` event carries the dispute itself."""

from __future__ import annotations

from streams.handlers.mirror import Mirror, boolean, integer, reference, text, timestamp

DISPUTES = Mirror.declare(
    "disputes",
    "dispute",
    events=(
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.closed",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.funds_reinstated",
    ),
    charge=reference("charge"),
    payment_intent=reference("payment_intent"),
    status=text("status"),
    amount=integer("amount"),
    currency=text("currency"),
    reason=text("reason"),
    is_charge_refundable=boolean("is_charge_refundable"),
    evidence_due_by=timestamp("evidence_details", "due_by"),
    created=timestamp("created"),
)
