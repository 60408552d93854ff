"""Realistic Stripe events for tests, the demo and the benchmarks.

Objects start from Stripe's published example objects (``data/stripe_objects.json``, copied
from Stripe's OpenAPI fixtures, MIT licence) and get fresh ids, timestamps and references that
agree with each other, so events have the full shape and size of real webhooks. A factory
given a seed builds the same events every time.

>>> factory = EventFactory(seed=7)
>>> events = list(factory.customer_lifecycle())
>>> [event["type"] for event in events][:3]
['customer.created', 'payment_method.attached', 'customer.updated']
"""

from __future__ import annotations

import copy
import json
import random
import string
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

from streams.log.envelope import THIN_EVENT_OBJECT
from streams.log.routing import longest_prefix

JSONObject = dict[str, Any]

API_VERSION = "2026-10-28.endive"
SEEDED_START = 1_767_225_600
"""Where the clock of a seeded factory starts (2026-01-01T00:00:00Z), so its events never vary."""

MONTH = 30 * 86_400
_ALPHANUMERIC = string.digits + string.ascii_letters

_ID_FORMATS: Mapping[str, tuple[str, int]] = {
    "balance_transaction": ("txn_1", 23),
    "charge": ("ch_1", 23),
    "checkout.session": ("cs_{mode}_a1", 56),
    "credit_note": ("cn_1", 23),
    "credit_note_line_item": ("cnli_1", 23),
    "customer": ("cus_", 14),
    "dispute": ("dp_1", 23),
    "event": ("evt_1", 23),
    "invoice": ("in_1", 23),
    "invoice_line_item": ("il_1", 23),
    "invoiceitem": ("ii_1", 23),
    "payment_intent": ("pi_1", 23),
    "payment_method": ("pm_1", 23),
    "plan": ("price_1", 23),
    "price": ("price_1", 23),
    "product": ("prod_", 14),
    "promotion_code": ("promo_1", 23),
    "refund": ("re_1", 23),
    "request": ("req_", 14),
    "setup_intent": ("seti_1", 23),
    "subscription": ("sub_1", 23),
    "subscription_item": ("si_", 14),
    "subscription_schedule": ("sub_sched_1", 23),
    "thin_event": ("evt_{mode}_", 40),
}

SAMPLE_RESOURCES: Mapping[str, str] = {
    "customer": "customer",
    "customer.subscription": "subscription",
    "subscription_schedule": "subscription_schedule",
    "invoice": "invoice",
    "invoiceitem": "invoiceitem",
    "credit_note": "credit_note",
    "payment_intent": "payment_intent",
    "charge": "charge",
    "charge.refund": "refund",
    "charge.dispute": "dispute",
    "refund": "refund",
    "payment_method": "payment_method",
    "setup_intent": "setup_intent",
    "checkout.session": "checkout.session",
    "product": "product",
    "price": "price",
    "plan": "plan",
    "coupon": "coupon",
    "promotion_code": "promotion_code",
}
"""Event type prefix to the resource its events carry, for :meth:`EventFactory.sample_event`."""

STATUS_AFTER: Mapping[str, str] = {
    "charge.failed": "failed",
    "charge.pending": "pending",
    "charge.dispute.closed": "won",
    "checkout.session.completed": "complete",
    "checkout.session.expired": "expired",
    "credit_note.voided": "void",
    "customer.subscription.deleted": "canceled",
    "customer.subscription.paused": "paused",
    "invoice.created": "draft",
    "invoice.finalized": "open",
    "invoice.marked_uncollectible": "uncollectible",
    "invoice.paid": "paid",
    "invoice.voided": "void",
    "payment_intent.canceled": "canceled",
    "payment_intent.processing": "processing",
    "payment_intent.requires_action": "requires_action",
    "payment_intent.succeeded": "succeeded",
    "refund.failed": "failed",
    "setup_intent.canceled": "canceled",
    "setup_intent.succeeded": "succeeded",
    "subscription_schedule.canceled": "canceled",
    "subscription_schedule.completed": "completed",
    "subscription_schedule.released": "released",
}
"""The status an object has in events of these types (other types keep the builder's status)."""

_FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia")
_LAST_NAMES = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Perlman")
_CARDS = (("visa", "4242"), ("mastercard", "4444"), ("amex", "8431"), ("visa", "1881"))
_PRODUCTS = (("Starter", 900), ("Team", 2900), ("Business", 9900), ("Enterprise", 49900))


@cache
def stripe_objects() -> Mapping[str, Any]:
    """Return Stripe's example object of each shipped resource, by resource name (read-only)."""
    data = resources.files("streams.devtools").joinpath("data/stripe_objects.json")
    text = data.read_text("utf-8")
    objects: Mapping[str, Any] = json.loads(text)["resources"]
    return objects


class EventFactory:
    """Builds realistic Stripe objects and the events that carry them.

    The factory keeps a clock: every event it stamps is created strictly after the previous
    one, so the events of one object are strictly ordered by ``created``. A seeded factory
    starts its clock at :data:`SEEDED_START`, an unseeded one at the current time.
    """

    def __init__(
        self,
        seed: int | None = None,
        *,
        start: int | None = None,
        livemode: bool = False,
        account: str | None = None,
        api_version: str = API_VERSION,
    ) -> None:
        self.random = random.Random(seed)
        if start is None:
            start = SEEDED_START if seed is not None else int(time.time())
        self.now = start
        self.livemode = livemode
        self.account = account
        self.api_version = api_version
        self._price: JSONObject | None = None

    def new_id(self, resource: str) -> str:
        """Return a fresh id shaped like Stripe's for ``resource`` (``cus_...``, ``pi_1...``)."""
        if resource == "coupon":
            return self._token(8, string.ascii_uppercase + string.digits)
        prefix, length = _ID_FORMATS[resource]
        return prefix.format(mode="live" if self.livemode else "test") + self._token(length)

    def advance(self, seconds: int | None = None) -> int:
        """Move the clock forward (by 1-5 s unless told) and return the new time."""
        self.now += seconds if seconds is not None else self.random.randint(1, 5)
        return self.now

    def event(
        self,
        event_type: str,
        obj: Mapping[str, Any],
        *,
        created: int | None = None,
        previous_attributes: Mapping[str, Any] | None = None,
    ) -> JSONObject:
        """Return a snapshot event of ``event_type`` carrying a copy of ``obj``.

        ``created`` defaults to the next tick of the clock; an explicit value moves the clock
        forward to it, so later events still come after.
        """
        if created is None:
            created = self.advance()
        else:
            self.now = max(self.now, created)
        data: JSONObject = {"object": copy.deepcopy(dict(obj))}
        if previous_attributes is not None:
            data["previous_attributes"] = copy.deepcopy(dict(previous_attributes))
        event: JSONObject = {
            "id": self.new_id("event"),
            "object": "event",
            "api_version": self.api_version,
            "created": created,
            "data": data,
            "livemode": self.livemode,
            "pending_webhooks": self.random.randint(1, 3),
            "request": {
                "id": self.new_id("request"),
                "idempotency_key": self._uuid(),
            },
            "type": event_type,
        }
        if self.account is not None:
            event["account"] = self.account
        return event

    def sample_event(self, event_type: str, *, created: int | None = None) -> JSONObject:
        """Return an event of ``event_type`` carrying a fresh, plausible object of its resource."""
        obj = self.object_for(event_type)
        status = STATUS_AFTER.get(event_type)
        if status is not None:
            obj["status"] = status
        return self.event(event_type, obj, created=created)

    def thin_event(
        self,
        event_type: str = "v1.billing.meter.error_report_triggered",
        *,
        related_type: str = "billing.meter",
        related_id: str | None = None,
        created: int | None = None,
    ) -> JSONObject:
        """Return a thin event (``v2.core.event``): a reference to the object, ISO ``created``."""
        when = datetime.fromtimestamp(created if created is not None else self.advance(), UTC)
        related_id = related_id or f"mtr_{self._token(24)}"
        event: JSONObject = {
            "id": self.new_id("thin_event"),
            "object": THIN_EVENT_OBJECT,
            "type": event_type,
            "livemode": self.livemode,
            "created": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "related_object": {
                "id": related_id,
                "type": related_type,
                "url": f"/v1/{related_type.replace('.', '/')}s/{related_id}",
            },
            "reason": {"type": "request", "request": {"id": self.new_id("request")}},
        }
        if self.account is not None:
            event["context"] = self.account
        return event

    def customer_lifecycle(
        self, *, periods: int = 1, price: Mapping[str, Any] | None = None, quantity: int = 1
    ) -> Iterator[JSONObject]:
        """Yield the events of one customer's life, in the order Stripe sends them.

        The customer signs up and attaches a card, subscribes, pays ``periods`` monthly invoices
        (invoice created, finalized and paid; charge and payment intent succeeded; subscription
        updated), cancels, and finally updates their email.
        """
        customer = self.customer(created=self.advance())
        yield self.event("customer.created", customer, created=customer["created"])
        card = self.payment_method(customer)
        yield self.event("payment_method.attached", card)
        customer["invoice_settings"]["default_payment_method"] = card["id"]
        yield self.event(
            "customer.updated",
            customer,
            previous_attributes={"invoice_settings": {"default_payment_method": None}},
        )
        subscription = self.subscription(
            customer, price or self.default_price(), payment_method=card, quantity=quantity
        )
        yield self.event("customer.subscription.created", subscription)
        for period in range(periods):
            if period:
                previous = {"items": copy.deepcopy(subscription["items"])}
                self._renew(subscription)
                yield self.event(
                    "customer.subscription.updated", subscription, previous_attributes=previous
                )
            yield from self._billing_cycle(customer, subscription, card, first=period == 0)
        previous = {"status": subscription["status"], "canceled_at": None, "ended_at": None}
        subscription.update(status="canceled", canceled_at=self.now, ended_at=self.now)
        yield self.event(
            "customer.subscription.deleted", subscription, previous_attributes=previous
        )
        old_email = customer["email"]
        customer["email"] = self._email(customer["name"], "mail.example.org")
        yield self.event("customer.updated", customer, previous_attributes={"email": old_email})

    def _billing_cycle(
        self,
        customer: JSONObject,
        subscription: JSONObject,
        card: JSONObject,
        *,
        first: bool,
    ) -> Iterator[JSONObject]:
        self.advance()
        invoice = self.invoice(
            customer,
            subscription,
            billing_reason="subscription_create" if first else "subscription_cycle",
        )
        yield self.event("invoice.created", invoice, created=invoice["created"])
        invoice["number"] = f"{customer['invoice_prefix']}-{self.random.randint(1, 9999):04d}"
        invoice.update(status="open", effective_at=self.advance())
        invoice["status_transitions"]["finalized_at"] = invoice["effective_at"]
        invoice["hosted_invoice_url"] = f"https://invoice.stripe.com/i/{self._token(40)}"
        yield self.event(
            "invoice.finalized", invoice, previous_attributes={"status": "draft", "number": None}
        )
        intent = self.payment_intent(customer, invoice["amount_due"], card, status="succeeded")
        charge = self.charge(intent, card, status="succeeded")
        intent["latest_charge"] = charge["id"]
        yield self.event("charge.succeeded", charge)
        yield self.event("payment_intent.succeeded", intent)
        invoice.update(status="paid", amount_paid=invoice["amount_due"], amount_remaining=0)
        invoice["status_transitions"]["paid_at"] = self.advance()
        yield self.event(
            "invoice.paid",
            invoice,
            previous_attributes={"status": "open", "amount_paid": 0},
        )
        previous = {"status": subscription["status"], "latest_invoice": None}
        subscription.update(status="active", latest_invoice=invoice["id"])
        yield self.event(
            "customer.subscription.updated", subscription, previous_attributes=previous
        )

    def _renew(self, subscription: JSONObject) -> None:
        items = subscription["items"]["data"]
        self.now = max(self.now, *(item["current_period_end"] for item in items))
        for item in items:
            item["current_period_start"] = item["current_period_end"]
            item["current_period_end"] = item["current_period_start"] + MONTH

    def object_for(self, event_type: str) -> JSONObject:
        """Return a fresh object of the resource ``event_type`` carries, with its references."""
        match longest_prefix(SAMPLE_RESOURCES, event_type):
            case "customer":
                return self.customer()
            case "subscription":
                return self.subscription(self.customer(), self.default_price())
            case "subscription_schedule":
                return self.subscription_schedule(self.customer(), self.default_price())
            case "invoice":
                customer = self.customer()
                return self.invoice(customer, self.subscription(customer, self.default_price()))
            case "invoiceitem":
                return self.invoice_item(self.customer(), self.default_price())
            case "credit_note":
                customer = self.customer()
                subscription = self.subscription(customer, self.default_price())
                return self.credit_note(self.invoice(customer, subscription))
            case "payment_intent":
                customer = self.customer()
                return self.payment_intent(customer, 2900, self.payment_method(customer))
            case "charge" | "refund" | "dispute" as resource:
                customer = self.customer()
                card = self.payment_method(customer)
                charge = self.charge(self.payment_intent(customer, 2900, card), card)
                if resource == "refund":
                    return self.refund(charge)
                return self.dispute(charge) if resource == "dispute" else charge
            case "payment_method":
                return self.payment_method(self.customer())
            case "setup_intent":
                return self.setup_intent(self.customer())
            case "checkout.session":
                return self.checkout_session(self.customer())
            case "product":
                return self.product()
            case "price":
                return self.price(self.product())
            case "plan":
                return self.plan(self.price(self.product()))
            case "coupon":
                return self.coupon()
            case "promotion_code":
                return self.promotion_code(self.coupon())
            case _:
                raise ValueError(f"no sample object for event type {event_type!r}")

    def default_price(self) -> JSONObject:
        """Return the monthly price this factory subscribes customers to unless told otherwise."""
        if self._price is None:
            self._price = self.price(self.product())
        return self._price

    def customer(
        self, *, name: str | None = None, email: str | None = None, created: int | None = None
    ) -> JSONObject:
        """Return a new customer, created now unless told otherwise."""
        name = name or (f"{self.random.choice(_FIRST_NAMES)} {self.random.choice(_LAST_NAMES)}")
        customer = self._fixture(
            "customer",
            name=name,
            email=email or self._email(name, "example.com"),
            phone=f"+1415555{self.random.randint(0, 9999):04d}",
            discount=None,
            invoice_prefix=self._token(8, string.ascii_uppercase + string.digits),
        )
        if created is not None:
            customer["created"] = created
        customer["address"].update(city="San Francisco", country="US", postal_code="94103")
        return customer

    def payment_method(self, customer: Mapping[str, Any]) -> JSONObject:
        """Return a card attached to ``customer``."""
        brand, last4 = self.random.choice(_CARDS)
        card = self._fixture("payment_method", customer=customer["id"], metadata={})
        card["billing_details"].update(email=customer["email"], name=customer["name"])
        card["card"].update(
            brand=brand,
            display_brand=brand,
            last4=last4,
            exp_month=self.random.randint(1, 12),
            exp_year=datetime.fromtimestamp(self.now, UTC).year + self.random.randint(1, 5),
            fingerprint=self._token(16),
            generated_from=None,
            wallet=None,
        )
        card["card"]["networks"]["available"] = [brand]
        return card

    def product(self, *, name: str | None = None) -> JSONObject:
        """Return a new product."""
        name = name or self.random.choice(_PRODUCTS)[0]
        return self._fixture(
            "product",
            name=name,
            description=f"The {name} plan",
            default_price=None,
            package_dimensions=None,
            updated=self.now,
        )

    def price(
        self,
        product: Mapping[str, Any],
        *,
        unit_amount: int | None = None,
        interval: str = "month",
    ) -> JSONObject:
        """Return a recurring price of ``product``."""
        amount = unit_amount or dict(_PRODUCTS).get(product["name"], 1900)
        price = self._fixture(
            "price",
            product=product["id"],
            unit_amount=amount,
            unit_amount_decimal=str(amount),
            transform_quantity=None,
            nickname=f"{product['name']} {interval}ly",
        )
        price["recurring"]["interval"] = interval
        return price

    def plan(self, price: Mapping[str, Any]) -> JSONObject:
        """Return the plan view of a recurring price (same id)."""
        return self._fixture(
            "plan",
            id=price["id"],
            created=price["created"],
            product=price["product"],
            currency=price["currency"],
            amount=price["unit_amount"],
            amount_decimal=price["unit_amount_decimal"],
            interval=price["recurring"]["interval"],
            interval_count=price["recurring"]["interval_count"],
            nickname=price["nickname"],
            transform_usage=None,
        )

    def subscription(
        self,
        customer: Mapping[str, Any],
        price: Mapping[str, Any],
        *,
        payment_method: Mapping[str, Any] | None = None,
        quantity: int = 1,
        status: str = "incomplete",
    ) -> JSONObject:
        """Return a new monthly subscription of ``customer`` to ``price``, with one item."""
        subscription_id = self.new_id("subscription")
        item = self._fixture(
            "subscription_item",
            subscription=subscription_id,
            price=copy.deepcopy(dict(price)),
            plan=self.plan(price),
            quantity=quantity,
            current_period_start=self.now,
            current_period_end=self.now + MONTH,
            billing_thresholds=None,
        )
        return self._fixture(
            "subscription",
            id=subscription_id,
            customer=customer["id"],
            currency=price["currency"],
            status=status,
            items={
                "object": "list",
                "data": [item],
                "has_more": False,
                "total_count": 1,
                "url": f"/v1/subscription_items?subscription={subscription_id}",
            },
            default_payment_method=payment_method["id"] if payment_method else None,
            billing_cycle_anchor=self.now,
            billing_cycle_anchor_config=None,
            start_date=self.now,
            cancel_at=None,
            cancel_at_period_end=False,
            canceled_at=None,
            ended_at=None,
            trial_start=None,
            trial_end=None,
            next_pending_invoice_item_invoice=None,
            pause_collection=None,
            pending_invoice_item_interval=None,
            pending_update=None,
            transfer_data=None,
            billing_thresholds=None,
            billing_schedules=[],
        )

    def subscription_schedule(
        self, customer: Mapping[str, Any], price: Mapping[str, Any]
    ) -> JSONObject:
        """Return a schedule that starts a subscription to ``price`` next month."""
        schedule = self._fixture(
            "subscription_schedule",
            customer=customer["id"],
            canceled_at=None,
            completed_at=None,
            released_at=None,
            current_phase=None,
        )
        phase = schedule["phases"][0]
        phase.update(
            start_date=self.now + MONTH, end_date=self.now + 13 * MONTH, transfer_data=None
        )
        phase["items"][0].update(price=price["id"], plan=price["id"], billing_thresholds=None)
        return schedule

    def invoice(
        self,
        customer: Mapping[str, Any],
        subscription: Mapping[str, Any],
        *,
        billing_reason: str = "subscription_create",
        lines: int | None = None,
    ) -> JSONObject:
        """Return a draft invoice of ``subscription``'s current period, one line per item.

        ``lines`` asks for that many line items in all: those past the subscription's items
        are one-off invoice items of the same price (metered usage, itemised services): a
        thousand lines make an event of about 900 KB, the size of Stripe's largest objects.
        """
        invoice_id = self.new_id("invoice")
        lines_data = [
            self._invoice_line(invoice_id, subscription, item)
            for item in subscription["items"]["data"]
        ]
        if lines is not None and lines > len(lines_data):
            price = subscription["items"]["data"][0]["price"]
            lines_data.extend(
                self._invoice_item_line(invoice_id, subscription, price)
                for _ in range(lines - len(lines_data))
            )
        total = sum(line["amount"] for line in lines_data)
        period = lines_data[0]["period"]["start"] if lines_data else self.now
        invoice = self._fixture(
            "invoice",
            id=invoice_id,
            customer=customer["id"],
            customer_email=customer["email"],
            customer_name=customer["name"],
            currency=subscription["currency"],
            billing_reason=billing_reason,
            auto_advance=True,
            amount_due=total,
            amount_paid=0,
            amount_remaining=total,
            amount_overpaid=0,
            subtotal=total,
            subtotal_excluding_tax=total,
            total=total,
            total_excluding_tax=total,
            period_start=period,
            period_end=period,
            due_date=None,
            effective_at=None,
            next_payment_attempt=None,
            webhooks_delivered_at=None,
            from_invoice=None,
            last_finalization_error=None,
            shipping_cost=None,
            lines={
                "object": "list",
                "data": lines_data,
                "has_more": False,
                "total_count": len(lines_data),
                "url": f"/v1/invoices/{invoice_id}/lines",
            },
            parent={
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {"metadata": {}, "subscription": subscription["id"]},
            },
        )
        invoice["customer_address"].update(customer.get("address") or {})
        return invoice

    def _invoice_line(
        self, invoice_id: str, subscription: Mapping[str, Any], item: Mapping[str, Any]
    ) -> JSONObject:
        line: JSONObject = copy.deepcopy(stripe_objects()["invoice"]["lines"]["data"][0])
        price = item["price"]
        amount = price["unit_amount"] * item["quantity"]
        line.update(
            id=self.new_id("invoice_line_item"),
            invoice=invoice_id,
            livemode=self.livemode,
            amount=amount,
            subtotal=amount,
            currency=price["currency"],
            quantity=item["quantity"],
            description=f"{item['quantity']} \N{MULTIPLICATION SIGN} {price['nickname']}",
            period={"start": item["current_period_start"], "end": item["current_period_end"]},
            parent={
                "type": "subscription_item_details",
                "invoice_item_details": None,
                "subscription_item_details": {
                    "invoice_item": None,
                    "proration": False,
                    "proration_details": {"credited_items": None},
                    "subscription": subscription["id"],
                    "subscription_item": item["id"],
                },
            },
            pricing={
                "type": "price_details",
                "price_details": {"price": price["id"], "product": price["product"]},
                "unit_amount_decimal": price["unit_amount_decimal"],
            },
        )
        return line

    def _invoice_item_line(
        self, invoice_id: str, subscription: Mapping[str, Any], price: Mapping[str, Any]
    ) -> JSONObject:
        line: JSONObject = copy.deepcopy(stripe_objects()["invoice"]["lines"]["data"][0])
        quantity = self.random.randint(1, 40)
        amount = price["unit_amount"] * quantity
        day = datetime.fromtimestamp(self.now, UTC).date().isoformat()
        line.update(
            id=self.new_id("invoice_line_item"),
            invoice=invoice_id,
            livemode=self.livemode,
            amount=amount,
            subtotal=amount,
            currency=price["currency"],
            quantity=quantity,
            description=f"{quantity} \N{MULTIPLICATION SIGN} {price['nickname']} ({day})",
            period={"start": self.now, "end": self.now},
            parent={
                "type": "invoice_item_details",
                "invoice_item_details": {
                    "invoice_item": self.new_id("invoiceitem"),
                    "proration": False,
                    "proration_details": {"credited_items": None},
                    "subscription": subscription["id"],
                },
                "subscription_item_details": None,
            },
            pricing={
                "type": "price_details",
                "price_details": {"price": price["id"], "product": price["product"]},
                "unit_amount_decimal": price["unit_amount_decimal"],
            },
        )
        return line

    def invoice_item(
        self, customer: Mapping[str, Any], price: Mapping[str, Any], *, invoice: str | None = None
    ) -> JSONObject:
        """Return a one-off invoice item of ``price`` for ``customer``, pending unless invoiced."""
        amount = price["unit_amount"]
        return self._fixture(
            "invoiceitem",
            customer=customer["id"],
            invoice=invoice,
            amount=amount,
            net_amount=amount,
            currency=price["currency"],
            description=price["nickname"],
            date=self.now,
            period={"start": self.now, "end": self.now},
            parent=None,
            pricing={
                "type": "price_details",
                "price_details": {"price": price["id"], "product": price["product"]},
                "unit_amount_decimal": price["unit_amount_decimal"],
            },
            quantity_decimal="1",
        )

    def credit_note(self, invoice: Mapping[str, Any]) -> JSONObject:
        """Return a credit note for the whole of ``invoice``."""
        credit_note_id = self.new_id("credit_note")
        amount = invoice["total"]
        line: JSONObject = copy.deepcopy(stripe_objects()["credit_note"]["lines"]["data"][1])
        line.update(
            id=self.new_id("credit_note_line_item"),
            amount=amount,
            unit_amount=amount,
            unit_amount_decimal=str(amount),
            pretax_credit_amounts=[],
        )
        return self._fixture(
            "credit_note",
            id=credit_note_id,
            customer=invoice["customer"],
            invoice=invoice["id"],
            currency=invoice["currency"],
            amount=amount,
            subtotal=amount,
            subtotal_excluding_tax=amount,
            total=amount,
            total_excluding_tax=amount,
            effective_at=self.now,
            voided_at=None,
            number=f"{invoice.get('number') or self._token(8).upper()}-CN-01",
            pdf=f"https://pay.stripe.com/credit_notes/{self._token(32)}/pdf",
            shipping_cost=None,
            pretax_credit_amounts=[],
            refunds=[],
            post_payment_amount=0,
            pre_payment_amount=amount,
            reason="order_change",
            lines={
                "object": "list",
                "data": [line],
                "has_more": False,
                "url": f"/v1/credit_notes/{credit_note_id}/lines",
            },
        )

    def payment_intent(
        self,
        customer: Mapping[str, Any],
        amount: int,
        payment_method: Mapping[str, Any],
        *,
        status: str = "requires_confirmation",
    ) -> JSONObject:
        """Return a payment intent of ``amount`` cents for ``customer``."""
        intent_id = self.new_id("payment_intent")
        return self._fixture(
            "payment_intent",
            id=intent_id,
            customer=customer["id"],
            amount=amount,
            amount_received=amount if status == "succeeded" else 0,
            payment_method=payment_method["id"],
            client_secret=f"{intent_id}_secret_{self._token(25)}",
            status=status,
            description="Subscription payment",
            canceled_at=None,
            last_payment_error=None,
            next_action=None,
            processing=None,
            payment_method_configuration_details=None,
            transfer_data=None,
            managed_payments=None,
        )

    def charge(
        self,
        payment_intent: Mapping[str, Any],
        payment_method: Mapping[str, Any],
        *,
        status: str = "succeeded",
    ) -> JSONObject:
        """Return the charge of ``payment_intent`` on ``payment_method``."""
        succeeded = status == "succeeded"
        charge_id = self.new_id("charge")
        charge = self._fixture(
            "charge",
            id=charge_id,
            customer=payment_intent["customer"],
            payment_intent=payment_intent["id"],
            payment_method=payment_method["id"],
            amount=payment_intent["amount"],
            amount_captured=payment_intent["amount"] if succeeded else 0,
            currency=payment_intent["currency"],
            captured=succeeded,
            paid=succeeded,
            status=status,
            description=payment_intent["description"],
            balance_transaction=self.new_id("balance_transaction"),
            billing_details=copy.deepcopy(payment_method["billing_details"]),
            calculated_statement_descriptor="EXAMPLE.COM",
            receipt_url=f"https://pay.stripe.com/receipts/payment/{self._token(60)}",
            source=None,
            transfer_data=None,
        )
        charge["outcome"].update(
            network_status="approved_by_network",
            risk_level="normal",
            risk_score=self.random.randint(5, 60),
            seller_message="Payment complete.",
            type="authorized",
        )
        card = payment_method["card"]
        charge["payment_method_details"]["card"].update(
            brand=card["brand"],
            last4=card["last4"],
            exp_month=card["exp_month"],
            exp_year=card["exp_year"],
            fingerprint=card["fingerprint"],
            network=card["brand"],
            wallet=None,
        )
        charge["refunds"]["url"] = f"/v1/charges/{charge_id}/refunds"
        return charge

    def refund(self, charge: Mapping[str, Any], *, amount: int | None = None) -> JSONObject:
        """Return a refund of ``charge`` (in full unless ``amount`` says otherwise)."""
        return self._fixture(
            "refund",
            charge=charge["id"],
            payment_intent=charge["payment_intent"],
            customer=charge["customer"],
            payment_method=charge["payment_method"],
            amount=amount if amount is not None else charge["amount"],
            currency=charge["currency"],
            reason="requested_by_customer",
            balance_transaction=self.new_id("balance_transaction"),
        )

    def dispute(self, charge: Mapping[str, Any]) -> JSONObject:
        """Return a dispute of ``charge`` that needs a response within a week."""
        dispute = self._fixture(
            "dispute",
            charge=charge["id"],
            payment_intent=charge["payment_intent"],
            amount=charge["amount"],
            currency=charge["currency"],
            reason="fraudulent",
            status="needs_response",
        )
        dispute["evidence_details"]["due_by"] = self.now + 7 * 86_400
        return dispute

    def setup_intent(
        self, customer: Mapping[str, Any], *, payment_method: Mapping[str, Any] | None = None
    ) -> JSONObject:
        """Return a setup intent saving a card for ``customer``."""
        intent_id = self.new_id("setup_intent")
        return self._fixture(
            "setup_intent",
            id=intent_id,
            customer=customer["id"],
            payment_method=payment_method["id"] if payment_method else None,
            client_secret=f"{intent_id}_secret_{self._token(32)}",
            last_setup_error=None,
            next_action=None,
            payment_method_configuration_details=None,
        )

    def checkout_session(self, customer: Mapping[str, Any], amount: int = 2900) -> JSONObject:
        """Return an open payment-mode Checkout Session of ``amount`` cents for ``customer``."""
        session_id = self.new_id("checkout.session")
        session = self._fixture(
            "checkout.session",
            id=session_id,
            customer=customer["id"],
            currency="usd",
            amount_subtotal=amount,
            amount_total=amount,
            expires_at=self.now + 86_400,
            url=f"https://checkout.stripe.com/c/pay/{session_id}",
            total_details={"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            after_expiration=None,
            shipping_cost=None,
            currency_conversion=None,
            payment_intent=None,
            client_reference_id=f"order-{self.random.randint(1, 999_999):06d}",
        )
        session["customer_details"].update(email=customer["email"], name=customer["name"])
        return session

    def coupon(self) -> JSONObject:
        """Return a coupon taking a percentage off for three months."""
        return self._fixture(
            "coupon",
            percent_off=self.random.choice((10, 15, 20, 25.5)),
            duration="repeating",
            duration_in_months=3,
            redeem_by=None,
            name="Welcome offer",
        )

    def promotion_code(self, coupon: Mapping[str, Any]) -> JSONObject:
        """Return an active customer-facing code for ``coupon``."""
        return self._fixture(
            "promotion_code",
            code=f"WELCOME{self.random.randint(10, 99)}",
            promotion={"type": "coupon", "coupon": coupon["id"]},
            active=True,
            expires_at=None,
        )

    def _fixture(self, resource: str, **fields: Any) -> JSONObject:
        obj: JSONObject = copy.deepcopy(stripe_objects()[resource])
        obj["id"] = self.new_id(resource)
        if "livemode" in obj:
            obj["livemode"] = self.livemode
        if "created" in obj:
            obj["created"] = self.now
        obj.update(fields)
        return obj

    def _token(self, length: int, alphabet: str = _ALPHANUMERIC) -> str:
        return "".join(self.random.choices(alphabet, k=length))

    def _uuid(self) -> str:
        digits = self._token(32, "0123456789abcdef")
        return "-".join((digits[:8], digits[8:12], digits[12:16], digits[16:20], digits[20:]))

    def _email(self, name: str, domain: str) -> str:
        local = name.lower().replace(" ", ".")
        return f"{local}.{self.random.randint(100, 999)}@{domain}"
