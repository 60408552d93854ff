"""Invoices, invoice items and credit notes.

Newer API versions moved ``invoice.subscription`` and ``invoiceitem.subscription`` under
``parent.subscription_details``; both shapes are read. ``invoice.upcoming`` previews an invoice
that does not exist yet (it has no id), and ``invoice_payment.paid`` carries another object: both
are recorded as unhandled. Stripe deletes only draft invoices (finalized ones are voided) and
invoice items not yet on a finalized invoice: ``invoice.deleted`` and ``invoiceitem.deleted``
mark the row deleted.
"""

from __future__ import annotations

from streams.handlers.mirror import (
    Mirror,
    boolean,
    first,
    integer,
    reference,
    text,
    timestamp,
)

INVOICES = Mirror.declare(
    "invoices",
    "invoice",
    events=(
        "invoice.created",
        "invoice.updated",
        "invoice.finalized",
        "invoice.finalization_failed",
        "invoice.sent",
        "invoice.will_be_due",
        "invoice.overdue",
        "invoice.payment_action_required",
        "invoice.payment_attempt_required",
        "invoice.payment_failed",
        "invoice.payment_succeeded",
        "invoice.paid",
        "invoice.overpaid",
        "invoice.marked_uncollectible",
        "invoice.voided",
    ),
    deletes=("invoice.deleted",),
    customer=reference("customer"),
    subscription=first(
        reference("parent", "subscription_details", "subscription"), reference("subscription")
    ),
    status=text("status"),
    number=text("number"),
    billing_reason=text("billing_reason"),
    collection_method=text("collection_method"),
    currency=text("currency"),
    amount_due=integer("amount_due"),
    amount_paid=integer("amount_paid"),
    amount_remaining=integer("amount_remaining"),
    subtotal=integer("subtotal"),
    total=integer("total"),
    attempt_count=integer("attempt_count"),
    due_date=timestamp("due_date"),
    period_start=timestamp("period_start"),
    period_end=timestamp("period_end"),
    finalized_at=timestamp("status_transitions", "finalized_at"),
    paid_at=timestamp("status_transitions", "paid_at"),
    created=timestamp("created"),
)

INVOICE_ITEMS = Mirror.declare(
    "invoice_items",
    "invoiceitem",
    api_path="/v1/invoiceitems",
    events=("invoiceitem.created",),
    deletes=("invoiceitem.deleted",),
    customer=reference("customer"),
    invoice=reference("invoice"),
    subscription=first(
        reference("parent", "subscription_details", "subscription"), reference("subscription")
    ),
    price=first(reference("pricing", "price_details", "price"), reference("price")),
    amount=integer("amount"),
    currency=text("currency"),
    quantity=integer("quantity"),
    proration=boolean("proration"),
    description=text("description"),
    period_start=timestamp("period", "start"),
    period_end=timestamp("period", "end"),
    date=timestamp("date"),
)

CREDIT_NOTES = Mirror.declare(
    "credit_notes",
    "credit_note",
    events=("credit_note.created", "credit_note.updated", "credit_note.voided"),
    customer=reference("customer"),
    invoice=reference("invoice"),
    status=text("status"),
    type=text("type"),
    reason=text("reason"),
    number=text("number"),
    currency=text("currency"),
    amount=integer("amount"),
    total=integer("total"),
    effective_at=timestamp("effective_at"),
    voided_at=timestamp("voided_at"),
    created=timestamp("created"),
)
