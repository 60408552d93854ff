"""Wrapping raw Stripe events in envelopes, and refusing bodies that are not Stripe events."""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from streams.devtools.samples import stripe_objects
from streams.errors import InvalidEvent
from streams.log.envelope import EventEnvelope, EventSource


def _fixture_event() -> dict[str, Any]:
    return copy.deepcopy(dict(stripe_objects()["event"]))


def test_snapshot_event_is_keyed_by_its_object() -> None:
    raw = json.dumps(_fixture_event())
    envelope = EventEnvelope.from_stripe_event(
        raw, endpoint="default", source=EventSource.WEBHOOK
    )
    assert envelope.id == "evt_1Pgc76B7WZ01zgkWwyRHS12y"
    assert envelope.object_id == "price_1PgafmB7WZ01zgkW6dKueIc5"
    assert envelope.object_type == "plan"
    assert envelope.key == b"price_1PgafmB7WZ01zgkW6dKueIc5"
    assert envelope.created == 1234567890
    assert envelope.payload == raw
    assert envelope.account is None


def test_connect_event_carries_its_account() -> None:
    event = {**_fixture_event(), "account": "acct_123"}
    envelope = EventEnvelope.from_stripe_event(
        json.dumps(event), endpoint="connect", source=EventSource.WEBHOOK
    )
    assert envelope.account == "acct_123"
    assert envelope.endpoint == "connect"


def test_thin_event_is_keyed_by_its_related_object() -> None:
    thin = {
        "id": "evt_test_65R9Ijk8",
        "object": "v2.core.event",
        "type": "v1.billing.meter.error_report_triggered",
        "livemode": False,
        "created": "2024-09-17T06:20:52.246Z",
        "related_object": {"id": "mtr_test_61R9", "type": "billing.meter", "url": "/v1/x"},
    }
    envelope = EventEnvelope.from_stripe_event(
        json.dumps(thin), endpoint="default", source=EventSource.WEBHOOK
    )
    assert envelope.object_id == "mtr_test_61R9"
    assert envelope.object_type == "billing.meter"
    assert envelope.created == int(datetime(2024, 9, 17, 6, 20, 52, tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"object": "event", "type": "x", "created": 1, "data": {"object": {}}}', "'id'"),
        (b'{"id": "evt_1", "object": "event", "created": 1, "data": {"object": {}}}', "'type'"),
        (b'{"id": "evt_1", "object": "charge", "type": "x", "created": 1}', "'object'"),
        (b'{"id": "evt_1", "object": "event", "type": "x", "created": "1", "data": {"object": {}}}',
         "created"),
        (b'{"id": "evt_1", "object": "event", "type": "x", "created": 1}', "data.object"),
    ],
)
def test_bodies_that_are_not_stripe_events_are_refused_with_a_reason(
    body: bytes, reason: str
) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        EventEnvelope.from_stripe_event(body, endpoint="default", source=EventSource.WEBHOOK)


def test_an_envelope_nothing_can_store_is_recorded_with_placeholders_for_its_bad_fields() -> None:
    good = EventEnvelope.from_stripe_event(
        json.dumps(_fixture_event()), endpoint="default", source=EventSource.WEBHOOK
    )
    bad = dataclasses.replace(good, id="evt_" + "x" * 300, created=-10**12)

    stored = bad.stored_as("invalid:t:0:7")

    assert (stored.id, stored.type) == ("invalid:t:0:7", good.type)
    assert stored.object_id == good.object_id
    assert stored.created == int(good.received_at.timestamp())
    stored.check()
    assert good.stored_as("invalid:t:0:8") is good
