"""Avro single-object encoding: round trips, and clear errors for foreign or damaged messages."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.errors import CodecError
from streams.log.codec import (
    DeadLetter,
    decode_dead_letter,
    decode_event,
    encode_dead_letter,
    encode_event,
    generations,
)
from streams.log.envelope import EventEnvelope, EventSource

texts = st.text(max_size=40)
instants = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
envelopes = st.builds(
    EventEnvelope,
    id=texts,
    type=texts,
    object_id=texts,
    object_type=texts,
    created=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    api_version=st.none() | texts,
    livemode=st.booleans(),
    account=st.none() | texts,
    endpoint=texts,
    source=st.sampled_from(EventSource),
    received_at=instants,
    payload=st.text(max_size=2000),
)
dead_letters = st.builds(
    DeadLetter,
    event=envelopes,
    error_type=texts,
    error_message=st.text(max_size=500),
    retriable=st.booleans(),
    handler=texts,
    attempts=st.integers(min_value=1, max_value=2**31 - 1),
    source_topic=texts,
    source_partition=st.integers(min_value=0, max_value=2**31 - 1),
    source_offset=st.integers(min_value=0, max_value=2**63 - 1),
    first_failed_at=instants,
    last_failed_at=instants,
)


@given(envelopes)
def test_envelopes_round_trip(envelope: EventEnvelope) -> None:
    assert decode_event(encode_event(envelope)) == envelope


@given(dead_letters)
def test_dead_letters_round_trip(letter: DeadLetter) -> None:
    assert decode_dead_letter(encode_dead_letter(letter)) == letter


@given(envelopes)
def test_message_starts_with_marker_and_the_oldest_fingerprint_that_holds_it(
    envelope: EventEnvelope,
) -> None:
    message = encode_event(envelope)
    first, *_, current = generations()
    assert message[:2] == b"\xc3\x01"
    expected = current if envelope.source is EventSource.RECONCILE else first
    assert message[2:10] == expected["StripeEvent"].fingerprint


ENVELOPE = EventEnvelope(
    id="evt_1", type="customer.updated", object_id="cus_1", object_type="customer",
    created=1_767_225_600, api_version=None, livemode=False, account=None, endpoint="default",
    source=EventSource.WEBHOOK, received_at=datetime(2026, 1, 1, tzinfo=UTC), payload="{}",
)
LETTER = DeadLetter(
    event=ENVELOPE, error_type="E", error_message="m", retriable=False, handler="h",
    attempts=1, source_topic="t", source_partition=0, source_offset=0,
    first_failed_at=datetime(2026, 1, 1, tzinfo=UTC),
    last_failed_at=datetime(2026, 1, 1, tzinfo=UTC),
)


def test_readers_of_the_first_generation_read_every_envelope_but_reconciled_ones() -> None:
    """A worker not upgraded yet keeps reading what gateways, backfills and retries write."""
    first = generations()[0]["StripeEvent"]
    symbols = ["webhook", "backfill", "replay", "dlq_retry"]
    assert next(f for f in first.parsed["fields"] if f["name"] == "source")["type"][
        "symbols"] == symbols
    for source in EventSource:
        envelope = replace(ENVELOPE, source=source)
        message = encode_event(envelope)
        assert (message[2:10] == first.fingerprint) is (source.value in symbols)
        assert decode_event(message) == envelope
        letter = replace(LETTER, event=envelope)
        assert decode_dead_letter(encode_dead_letter(letter)) == letter


def test_fingerprint_is_crc64_avro_of_the_canonical_form_little_endian() -> None:
    # The Avro specification's reference value for the schema "int" pins the byte order.
    from fastavro.schema import fingerprint

    assert bytes.fromhex(fingerprint('"int"', "CRC-64-AVRO")) == (0x7275D51A3F395C8F).to_bytes(
        8, "little"
    )


@given(envelopes, st.data())
def test_truncated_messages_are_refused(envelope: EventEnvelope, data: st.DataObject) -> None:
    message = encode_event(envelope)
    cut = data.draw(st.integers(min_value=0, max_value=len(message) - 1))
    with pytest.raises(CodecError):
        decode_event(message[:cut])


def test_a_message_of_another_schema_is_refused_by_fingerprint() -> None:
    envelope = EventEnvelope(
        id="evt_1", type="customer.created", object_id="cus_1", object_type="customer",
        created=1, api_version=None, livemode=False, account=None, endpoint="default",
        source=EventSource.WEBHOOK, received_at=datetime(2026, 1, 1, tzinfo=UTC), payload="{}",
    )
    with pytest.raises(CodecError, match="unknown schema fingerprint"):
        decode_dead_letter(encode_event(envelope))
    with pytest.raises(CodecError, match="marker"):
        decode_event(b'{"id": "evt_1"}')
