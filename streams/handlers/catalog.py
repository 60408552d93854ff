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

PRODUCTS = Mirror.declare(
    "products",
    "product",
    events=("product.created", "product.updated"),
    deletes=("product.deleted",),
    name=text("name"),
    active=boolean("active"),
    default_price=reference("default_price"),
    created=timestamp("created"),
    updated=timestamp("updated"),
)

PRICES = Mirror.declare(
    "prices",
    "price",
    events=("price.created", "price.updated"),
    deletes=("price.deleted",),
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
    events=("plan.created", "plan.updated"),
    deletes=("plan.deleted",),
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
    events=("coupon.created", "coupon.updated"),
    deletes=("coupon.deleted",),
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
    events=("promotion_code.created", "promotion_code.updated"),
    code=text("code"),
    coupon=first(reference("promotion", "coupon"), reference("coupon")),
    customer=reference("customer"),
    active=boolean("active"),
    times_redeemed=integer("times_redeemed"),
    max_redemptions=integer("max_redemptions"),
    expires_at=timestamp("expires_at"),
    created=timestamp("created"),
)
