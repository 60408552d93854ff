"""The catalog: products, prices, plans, coupons and promotion codes.

Stripe sends ``plan.*`` beside ``price.*`` for a recurring price, with the same id but the older
plan shape, so plans get their own ``plans`` table instead of overwriting the price rows.
``product.deleted``, ``price.deleted``, ``plan.deleted`` and ``coupon.deleted`` mean Stripe
deleted the object itself, so their rows are marked deleted; a deleted coupon or plan still
applies where it was already applied, but nothing new can use it.
"""

from __future__ import annotations

from streams.handlers.mirror import (
    Mirror,
    boolean,
    decimal,
    first,
    integer,
    reference,
    text,
    timestamp,
)
from streams.handlers.registry import REGISTRY, Event, Projection

PRODUCTS = Mirror.declare(
    "products",
    "product",
    name=text("name"),
    active=boolean("active"),
    default_price=reference("default_price"),
    created=timestamp("created"),
    updated=timestamp("updated"),
)

PRICES = Mirror.declare(
    "prices",
    "price",
    product=reference("product"),
    active=boolean("active"),
    currency=text("currency"),
    unit_amount=integer("unit_amount"),
    type=text("type"),
    recurring_interval=text("recurring", "interval"),
    recurring_interval_count=integer("recurring", "interval_count"),
    lookup_key=text("lookup_key"),
    nickname=text("nickname"),
    created=timestamp("created"),
)

PLANS = Mirror.declare(
    "plans",
    "plan",
    product=reference("product"),
    active=boolean("active"),
    currency=text("currency"),
    amount=integer("amount"),
    interval=text("interval"),
    interval_count=integer("interval_count"),
    nickname=text("nickname"),
    created=timestamp("created"),
)

COUPONS = Mirror.declare(
    "coupons",
    "coupon",
    name=text("name"),
    duration=text("duration"),
    duration_in_months=integer("duration_in_months"),
    percent_off=decimal("percent_off"),
    amount_off=integer("amount_off"),
    currency=text("currency"),
    valid=boolean("valid"),
    times_redeemed=integer("times_redeemed"),
    max_redemptions=integer("max_redemptions"),
    redeem_by=timestamp("redeem_by"),
    created=timestamp("created"),
)

PROMOTION_CODES = Mirror.declare(
    "promotion_codes",
    "promotion_code",
    code=text("code"),
    coupon=first(reference("promotion", "coupon"), reference("coupon")),
    customer=reference("customer"),
    active=boolean("active"),
    times_redeemed=integer("times_redeemed"),
    max_redemptions=integer("max_redemptions"),
    expires_at=timestamp("expires_at"),
    created=timestamp("created"),
)


@REGISTRY.handles("catalog", "product.created", "product.updated", deletes=("product.deleted",))
def product_changed(event: Event) -> Projection:
    """Mirror the product."""
    return PRODUCTS.project(event)


@REGISTRY.handles("catalog", "price.created", "price.updated", deletes=("price.deleted",))
def price_changed(event: Event) -> Projection:
    """Mirror the price."""
    return PRICES.project(event)


@REGISTRY.handles("catalog", "plan.created", "plan.updated", deletes=("plan.deleted",))
def plan_changed(event: Event) -> Projection:
    """Mirror the plan (the legacy view of a recurring price)."""
    return PLANS.project(event)


@REGISTRY.handles("catalog", "coupon.created", "coupon.updated", deletes=("coupon.deleted",))
def coupon_changed(event: Event) -> Projection:
    """Mirror the coupon."""
    return COUPONS.project(event)


@REGISTRY.handles("catalog", "promotion_code.created", "promotion_code.updated")
def promotion_code_changed(event: Event) -> Projection:
    """Mirror the promotion code."""
    return PROMOTION_CODES.project(event)
