"""Disputes: every ``charge.dispute.*`` event carries the dispute itself."""

from __future__ import annotations

from streams.handlers.mirror import Mirror, boolean, integer, reference, text, timestamp
from streams.handlers.registry import REGISTRY, Event, Projection

DISPUTES = Mirror.declare(
    "disputes",
    "dispute",
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


@REGISTRY.handles(
    "disputes",
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
)
def dispute_changed(event: Event) -> Projection:
    """Mirror the dispute."""
    return DISPUTES.project(event)
