"""Avro single-object encoding of the log's messages.

Each message is ``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer
schema's parsing canonical form, then the Avro binary body. The fingerprint lets a reader refuse
a message written with a schema it does not know instead of decoding garbage.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import (
    expand_schema,
    fingerprint,
    parse_schema,
    to_parsing_canonical_form,
)

from streams.envelope import EventEnvelope, EventSource
from streams.errors import CodecError

MARKER = b"\xc3\x01"
HEADER_SIZE = len(MARKER) + 8
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event that retries could not apply, with the error and where it was consumed."""

    event: EventEnvelope
    error_type: str
    error_message: str
    retriable: bool
    handler: str
    attempts: int
    source_topic: str
    source_partition: int
    source_offset: int
    first_failed_at: datetime
    last_failed_at: datetime


@dataclass(frozen=True)
class AvroSchema:
    """A parsed writer schema and its single-object fingerprint."""

    name: str
    parsed: Any
    fingerprint: bytes


@cache
def schemas() -> dict[str, AvroSchema]:
    """Load every schema of ``schemas/``, keyed by short record name."""
    named: dict[str, Any] = {}
    loaded: dict[str, AvroSchema] = {}
    for file in ("stripe_event.avsc", "dead_letter.avsc"):
        declared = json.loads((SCHEMA_DIR / file).read_text())
        # Expanding inlines referenced records so the canonical form is self-contained.
        parsed = parse_schema(expand_schema(parse_schema(declared, named)))
        canonical = to_parsing_canonical_form(parsed)
        digest = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        loaded[declared["name"]] = AvroSchema(declared["name"], parsed, digest)
    return loaded


def _encode(schema: AvroSchema, record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    buffer.write(MARKER)
    buffer.write(schema.fingerprint)
    fastavro.schemaless_writer(buffer, schema.parsed, record)
    return buffer.getvalue()


def _decode(schema: AvroSchema, message: bytes) -> dict[str, Any]:
    if len(message) < HEADER_SIZE or message[:2] != MARKER:
        raise CodecError(
            f"not an Avro single-object message: expected marker C3 01 and a "
            f"{HEADER_SIZE}-byte header, got {len(message)} bytes starting {message[:2].hex()}"
        )
    found = message[2:HEADER_SIZE]
    if found != schema.fingerprint:
        raise CodecError(
            f"unknown schema fingerprint {found.hex()}; this reader knows {schema.name} "
            f"as {schema.fingerprint.hex()}"
        )
    body = io.BytesIO(message[HEADER_SIZE:])
    try:
        record = fastavro.schemaless_reader(body, schema.parsed, None)
    except Exception as exc:
        # Whatever fastavro trips over in foreign bytes (a short read, a date out of range, a
        # bad varint) is this message's fault, never the reader's.
        raise CodecError(f"truncated or corrupt {schema.name} message: {exc!r}") from None
    if body.read(1) or not isinstance(record, dict):
        raise CodecError(f"{schema.name} message has trailing bytes after the record")
    return record


def encode_event(envelope: EventEnvelope) -> bytes:
    """Encode an envelope as an Avro single-object message."""
    record = envelope.as_record()
    record["source"] = envelope.source.value
    return _encode(schemas()["StripeEvent"], record)


def _envelope_of(record: dict[str, Any]) -> EventEnvelope:
    try:
        record["source"] = EventSource(record["source"])
    except ValueError:
        raise CodecError(f"StripeEvent has an unknown source {record['source']!r}") from None
    return EventEnvelope(**record)


def decode_event(message: bytes) -> EventEnvelope:
    """Decode an envelope; raise CodecError for a foreign, truncated or corrupt message."""
    return _envelope_of(_decode(schemas()["StripeEvent"], message))


def encode_dead_letter(letter: DeadLetter) -> bytes:
    """Encode a dead letter as an Avro single-object message."""
    record = {name: getattr(letter, name) for name in letter.__slots__}
    event = letter.event.as_record()
    event["source"] = letter.event.source.value
    record["event"] = event
    return _encode(schemas()["DeadLetter"], record)


def decode_dead_letter(message: bytes) -> DeadLetter:
    """Decode a dead letter; raise CodecError for a foreign, truncated or corrupt message."""
    record = _decode(schemas()["DeadLetter"], message)
    record["event"] = _envelope_of(record["event"])
    return DeadLetter(**record)
