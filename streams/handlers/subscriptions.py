"""Subscriptions, their items and subscription schedules.

A subscription event carries the subscription with its items (``items.data``): it projects the
subscription, one ``subscription_items`` row per item and, when the list is complete, a
:class:`ChildSet` so items removed from the subscription are marked deleted. Newer API versions
moved ``current_period_start``/``current_period_end`` onto the items; for such subscriptions the
subscription's period runs from its items' latest period start to their earliest period end
(identical bounds unless items renew on different cycles).

``customer.subscription.deleted`` ends a subscription, which Stripe keeps with status
``canceled`` (Stripe never deletes a subscription), so it is projected like any update and
neither the subscription nor its items are marked deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime

from streams.handlers.mirror import (
    Field,
    Mirror,
    StripeObject,
    boolean,
    first,
    integer,
    reference,
    text,
    timestamp,
)
from streams.handlers.registry import REGISTRY, ChildSet, Event, Projection

ITEMS = ("items",)


def _item_period(bound: str, pick: Callable[[Iterable[datetime]], datetime]) -> Field:
    of_item = timestamp(bound)

    def read(subscription: StripeObject) -> datetime | None:
        items = subscription.children(ITEMS, "subscription_item")
        bounds = [value for value in map(of_item.read, items) if value is not None]
        return pick(bounds) if bounds else None

    return Field(of_item.sql_type, read)


SUBSCRIPTIONS = Mirror.declare(
    "subscriptions",
    "subscription",
    family="subscriptions",
    reconciled="customer.subscription.reconciled",
    customer=reference("customer"),
    status=text("status"),
    currency=text("currency"),
    collection_method=text("collection_method"),
    current_period_start=first(
        timestamp("current_period_start"), _item_period("current_period_start", max)
    ),
    current_period_end=first(
        timestamp("current_period_end"), _item_period("current_period_end", min)
    ),
    cancel_at_period_end=boolean("cancel_at_period_end"),
    cancel_at=timestamp("cancel_at"),
    canceled_at=timestamp("canceled_at"),
    ended_at=timestamp("ended_at"),
    trial_start=timestamp("trial_start"),
    trial_end=timestamp("trial_end"),
    start_date=timestamp("start_date"),
    latest_invoice=reference("latest_invoice"),
    default_payment_method=reference("default_payment_method"),
    schedule=reference("schedule"),
    created=timestamp("created"),
)

SUBSCRIPTION_ITEMS = Mirror.declare(
    "subscription_items",
    "subscription_item",
    api_path=None,
    family="subscriptions",
    subscription=reference("subscription"),
    price=first(reference("price"), reference("plan")),
    product=first(reference("price", "product"), reference("plan", "product")),
    quantity=integer("quantity"),
    current_period_start=timestamp("current_period_start"),
    current_period_end=timestamp("current_period_end"),
    created=timestamp("created"),
)

SUBSCRIPTION_SCHEDULES = Mirror.declare(
    "subscription_schedules",
    "subscription_schedule",
    events=(
        "subscription_schedule.created",
        "subscription_schedule.updated",
        "subscription_schedule.expiring",
        "subscription_schedule.released",
        "subscription_schedule.completed",
        "subscription_schedule.canceled",
        "subscription_schedule.aborted",
    ),
    customer=reference("customer"),
    subscription=reference("subscription"),
    status=text("status"),
    end_behavior=text("end_behavior"),
    current_phase_start=timestamp("current_phase", "start_date"),
    current_phase_end=timestamp("current_phase", "end_date"),
    canceled_at=timestamp("canceled_at"),
    completed_at=timestamp("completed_at"),
    released_at=timestamp("released_at"),
    released_subscription=reference("released_subscription"),
    created=timestamp("created"),
)


@REGISTRY.handles(
    "customer.subscription.created",
    "customer.subscription.updated",
    # Ends the subscription, which Stripe keeps as canceled: not in ``deletes``.
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
    "customer.subscription.pending_update_applied",
    "customer.subscription.pending_update_expired",
    "customer.subscription.reconciled",
)
def subscription_changed(event: Event) -> Projection:
    """Mirror the subscription and its items."""
    subscription = StripeObject.of(event, "subscription")
    row = SUBSCRIPTIONS.row(subscription)
    item_rows = tuple(
        # An item listed by a subscription belongs to it, whatever the item's own field says.
        replace(item, columns={**item.columns, "subscription": row.id})
        for item in map(SUBSCRIPTION_ITEMS.row, subscription.children(ITEMS, "subscription_item"))
    )
    complete = (
        subscription.value(ITEMS) is not None
        and subscription.value((*ITEMS, "has_more")) is not True
    )
    child_sets = (
        (
            ChildSet(
                SUBSCRIPTION_ITEMS.table.name,
                "subscription",
                row.id,
                frozenset(item.id for item in item_rows),
            ),
        )
        if complete
        else ()
    )
    return Projection(rows=(row, *item_rows), child_sets=child_sets)
