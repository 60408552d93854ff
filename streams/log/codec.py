"""Avro single-object encoding of the log's messages.

Each message is ``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer
schema's parsing canonical form, then the Avro binary body. The fingerprint lets a reader refuse
a message written with a schema it does not know instead of decoding garbage.

The schemas evolve in generations: ``schemas/`` holds the current one, ``schemas/history/`` the
earlier ones (``<file>.<generation>.avsc``). A reader decodes a message of any generation it
knows. A writer uses the oldest generation that can hold the record, so readers that know only
that generation keep reading everything they could before: only an envelope whose ``source``
an older generation lacks (``reconcile``) needs the newer readers.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
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

from streams.errors import CodecError
from streams.log.envelope import DeadLetter, EventEnvelope, EventSource

MARKER = b"\xc3\x01"
HEADER_SIZE = len(MARKER) + 8
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


@dataclass(frozen=True)
class AvroSchema:
    """A parsed writer schema and its single-object fingerprint."""

    name: str
    parsed: Any
    fingerprint: bytes


_FILES = ("stripe_event", "dead_letter")


@cache
def generations() -> list[dict[str, AvroSchema]]:
    """Every generation of the schemas, oldest first, each keyed by short record name."""
    history = SCHEMA_DIR / "history"
    numbers = sorted({int(path.name.split(".")[1]) for path in history.glob("*.avsc")})
    return [
        *(_load([history / f"{file}.{number}.avsc" for file in _FILES]) for number in numbers),
        _load([SCHEMA_DIR / f"{file}.avsc" for file in _FILES]),
    ]


def schemas() -> dict[str, AvroSchema]:
    """The current generation of the schemas, keyed by short record name."""
    return generations()[-1]


def _load(files: list[Path]) -> dict[str, AvroSchema]:
    named: dict[str, Any] = {}
    loaded: dict[str, AvroSchema] = {}
    for file in files:
        declared = json.loads(file.read_text())
        # Expanding inlines referenced records so the canonical form is self-contained.
        parsed = parse_schema(expand_schema(parse_schema(declared, named)))
        canonical = to_parsing_canonical_form(parsed)
        digest = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        loaded[declared["name"]] = AvroSchema(declared["name"], parsed, digest)
    return loaded


def _writer(name: str, source: EventSource) -> AvroSchema:
    """The oldest generation's schema ``name`` whose envelope can say ``source``."""
    for generation in generations():
        if source.value in _sources(generation["StripeEvent"]):
            return generation[name]
    raise CodecError(f"no schema of {name} holds the source {source.value!r}")


def _sources(schema: AvroSchema) -> list[str]:
    [field] = [f for f in schema.parsed["fields"] if f["name"] == "source"]
    return list(field["type"]["symbols"])


def _known(name: str) -> dict[bytes, AvroSchema]:
    return {generation[name].fingerprint: generation[name] for generation in generations()}


def _encode(schema: AvroSchema, record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    buffer.write(MARKER)
    buffer.write(schema.fingerprint)
    fastavro.schemaless_writer(buffer, schema.parsed, record)
    return buffer.getvalue()


def _decode(name: str, message: bytes) -> dict[str, Any]:
    if len(message) < HEADER_SIZE or message[:2] != MARKER:
        raise CodecError(
            f"not an Avro single-object message: expected marker C3 01 and a "
            f"{HEADER_SIZE}-byte header, got {len(message)} bytes starting {message[:2].hex()}"
        )
    found = message[2:HEADER_SIZE]
    known = _known(name)
    schema = known.get(found)
    if schema is None:
        raise CodecError(
            f"unknown schema fingerprint {found.hex()}; this reader knows {name} as "
            f"{', '.join(digest.hex() for digest in known)}"
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
    return _encode(_writer("StripeEvent", envelope.source), record)


def _envelope_of(record: dict[str, Any]) -> EventEnvelope:
    try:
        record["source"] = EventSource(record["source"])
    except ValueError:
        raise CodecError(f"StripeEvent has an unknown source {record['source']!r}") from None
    return EventEnvelope(**record)


def decode_event(message: bytes) -> EventEnvelope:
    """Decode an envelope; raise CodecError for a foreign, truncated or corrupt message."""
    return _envelope_of(_decode("StripeEvent", message))


def encode_dead_letter(letter: DeadLetter) -> bytes:
    """Encode a dead letter as an Avro single-object message."""
    record = {name: getattr(letter, name) for name in letter.__slots__}
    event = letter.event.as_record()
    event["source"] = letter.event.source.value
    record["event"] = event
    return _encode(_writer("DeadLetter", letter.event.source), record)


def decode_dead_letter(message: bytes) -> DeadLetter:
    """Decode a dead letter; raise CodecError for a foreign, truncated or corrupt message."""
    record = _decode("DeadLetter", message)
    record["event"] = _envelope_of(record["event"])
    return DeadLetter(**record)


def event_type_of(message: bytes) -> str:
    """Read the event type of an encoded envelope without decoding the rest of it.

    The router only needs the type, and a full decode (the raw event JSON included) is most of
    its cost; a message whose header or first fields are wrong raises CodecError like a full
    decode would, and the family agent decodes the rest.
    """
    if message[:2] != MARKER or message[2:HEADER_SIZE] not in _known("StripeEvent"):
        return decode_event(message).type
    position = HEADER_SIZE
    try:
        for field in ("id", "type"):
            length, position = _varint(message, position)
            if length < 0 or position + length > len(message):
                raise CodecError(f"StripeEvent {field} runs past the end of the message")
            if field == "type":
                return message[position : position + length].decode("utf-8")
            position += length
    except (IndexError, UnicodeDecodeError) as exc:
        raise CodecError(f"truncated or corrupt StripeEvent message: {exc!r}") from None
    raise CodecError("StripeEvent message has no type")


def _varint(message: bytes, position: int) -> tuple[int, int]:
    """Decode an Avro long (zig-zag varint) at ``position``; return it and the next position."""
    shift = result = 0
    while True:
        byte = message[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), position
        shift += 7
