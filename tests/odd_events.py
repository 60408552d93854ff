"""A corpus of odd but authentic Stripe events: each is signed and shaped like a real one.

Every case is a customer event with one oddity, followed in the log by a newer, ordinary event
of the same customer. The gateway either refuses the odd one (400) or accepts it; the worker
either applies it or dead-letters it, always applies the newer event behind it, and keeps going.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streams.devtools.samples import EventFactory
from streams.log.envelope import EventEnvelope, EventSource


@dataclass(frozen=True)
class OddEvent:
    """One odd event of a customer, the newer ordinary event behind it, and what must happen."""

    name: str
    body: bytes
    newer: dict[str, Any]
    customer_id: str
    gateway_status: int
    """What the gateway answers: 400 when the event cannot be stored, else 200."""
    outcome: str
    """The odd event's status in ``ops.event_log`` when it reaches a worker anyway."""


def _customer_events(seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    factory = EventFactory(seed=seed)
    customer = factory.customer(created=factory.advance())
    odd = factory.event("customer.updated", customer)
    customer["name"] = "Name after the odd event"
    newer = factory.event("customer.updated", customer)
    return odd, newer


def _case(
    name: str, seed: int, change: Any, status: int, outcome: str, *, raw: bytes | None = None
) -> OddEvent:
    odd, newer = _customer_events(seed)
    customer_id = newer["data"]["object"]["id"]
    change(odd)
    body = raw if raw is not None else json.dumps(odd).encode()
    return OddEvent(name, body, newer, customer_id, status, outcome)


def _set_object(field: str, value: Any) -> Any:
    def change(event: dict[str, Any]) -> None:
        event["data"]["object"][field] = value

    return change


def _set_event(field: str, value: Any) -> Any:
    def change(event: dict[str, Any]) -> None:
        event[field] = value

    return change


def _drop_object_type(event: dict[str, Any]) -> None:
    del event["data"]["object"]["object"]


def _duplicate_keys(seed: int) -> bytes:
    odd, _ = _customer_events(seed)
    odd["data"]["object"]["email"] = "first@example.com"
    text = json.dumps(odd)
    # The object's last "email" wins, in every JSON reader this project and PostgreSQL use.
    return text.replace(
        '"email": "first@example.com"',
        '"email": "first@example.com", "email": "last@example.com"',
        1,
    ).encode()


def corpus() -> list[OddEvent]:
    """Every odd event, each of its own customer."""
    return [
        _case("created far in the past", 101, _set_event("created", -1_000_000_000_000),
              400, "dead_lettered"),
        _case("created far in the future", 102, _set_event("created", 1_000_000_000_000),
              400, "dead_lettered"),
        _case("a 100 KB event id", 103, _set_event("id", "evt_" + "x" * 100_000),
              400, "dead_lettered"),
        _case("data.object.id null", 104, _set_object("id", None), 200, "dead_lettered"),
        _case("an object without its object field", 105, _drop_object_type,
              200, "dead_lettered"),
        _case("an integer beyond bigint in a typed column", 106,
              _set_object("balance", 2**63), 200, "dead_lettered"),
        _case("a NUL character in a string", 107, _set_object("name", "Jane\u0000Doe"),
              200, "dead_lettered"),
        _case("an unpaired surrogate in a string", 109, _set_object("name", "Jane\ud800Doe"),
              400, "dead_lettered"),
        _case("duplicate JSON keys", 108, lambda event: None, 200, "processed",
              raw=_duplicate_keys(108)),
    ]


def logged_envelope(body: bytes, received_at: datetime | None = None) -> EventEnvelope:
    """The envelope of a body as it reached the log before the gateway checked every field."""
    event = json.loads(body)
    data_object = event["data"]["object"]
    object_id = data_object.get("id") if isinstance(data_object.get("id"), str) else event["id"]
    return EventEnvelope(
        id=event["id"],
        type=event["type"],
        object_id=object_id,
        object_type=str(data_object.get("object") or "event"),
        created=event["created"],
        api_version=event.get("api_version"),
        livemode=bool(event.get("livemode")),
        account=None,
        endpoint="default",
        source=EventSource.WEBHOOK,
        received_at=received_at or datetime.now(UTC),
        payload=body.decode(),
    )
