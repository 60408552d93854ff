"""An event as a consumer reads it from the log, and what applying it did.

Shared by whoever applies events (the worker's agents, and the writer that projects them): an
event's coordinates, its outcome, and the two ways applying a batch can fail because of its data.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from streams.errors import CodecError, InvalidEvent, StreamsError
from streams.log.codec import decode_event
from streams.log.envelope import EventEnvelope


class Outcome(StrEnum):
    """What applying a batch did with one consumed event."""

    PROCESSED = "processed"
    """Its rows were written: it is the newest event of its object."""
    STALE = "stale"
    """A newer event of its object was already applied; its object's row was left alone."""
    UNHANDLED = "unhandled"
    """No handler projects its type; it is recorded and acknowledged."""
    DEAD_LETTERED = "dead_lettered"
    """Retries could not apply it; it went to the dead-letter topic."""
    DUPLICATE = "duplicate"
    """Its event id was recorded before; only ``deliveries`` was counted."""
    SKIPPED = "skipped"
    """Its offset is at or below the stored position: an earlier run already applied it."""


LOG_POSITION_HEADER = "stripe-streams-log-position"
"""Kafka header of a forwarded event: its partition and offset in ``<prefix>.events``."""
_POSITION = struct.Struct(">iq")


def encode_log_position(partition: int, offset: int) -> bytes:
    """The value of :data:`LOG_POSITION_HEADER` for an event at ``partition``/``offset``."""
    return _POSITION.pack(partition, offset)


def log_position_in(headers: Iterable[tuple[str, bytes]] | None) -> tuple[int, int] | None:
    """The log partition and offset a forwarded message's headers carry, or None."""
    for name, value in headers or ():
        if name == LOG_POSITION_HEADER and len(value) == _POSITION.size:
            partition, offset = _POSITION.unpack(value)
            return int(partition), int(offset)
    return None


@dataclass(frozen=True, slots=True)
class ConsumedEvent:
    """An envelope, the coordinates it was consumed at, and its position in the log.

    ``log_partition`` and ``log_offset`` are the event's position in ``<prefix>.events``: for
    an event read from a family's topic, the one its router header carries (None for a message
    forwarded before routers added it, which then falls back to its own offset).
    """

    envelope: EventEnvelope
    topic: str
    partition: int
    offset: int
    log_offset: int | None = None
    log_partition: int | None = None

    @property
    def version(self) -> tuple[int, int]:
        """Order of the events of one object: ``created``, then position in the log.

        Every event of an object lies in one partition of the log, so its offset there
        orders them wherever they are read from.
        """
        return self.envelope.created, self.offset if self.log_offset is None else self.log_offset

    @property
    def coordinates(self) -> tuple[str, int, int]:
        """Topic, partition and offset: what identifies this message in the log."""
        return self.topic, self.partition, self.offset


@dataclass(frozen=True, slots=True)
class AppliedEvent:
    """A consumed event and what its batch did with it."""

    event: ConsumedEvent
    outcome: Outcome


class EventRejected(StreamsError):
    """One event cannot be projected: its handler raised or broke the handler contract."""

    def __init__(self, event: ConsumedEvent, handler: str, cause: BaseException) -> None:
        super().__init__(
            f"event {event.envelope.id} ({event.envelope.type}) failed in {handler}: "
            f"{type(cause).__name__}: {cause}"
        )
        self.event = event
        self.handler = handler
        self.cause = cause
        self.retriable = bool(getattr(cause, "retriable", False))


class BatchRejected(StreamsError):
    """PostgreSQL refused the data of a batch without saying which event; split it to find out."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


Decoded = ConsumedEvent | CodecError | tuple[ConsumedEvent, InvalidEvent]
"""An event ready to apply, a message that does not decode, or an envelope nothing can store."""


def decode_consumed(
    topic: str, partition: int, offset: int, value: bytes | None,
    headers: Iterable[tuple[str, bytes]] | None, *, in_log: bool,
) -> Decoded:
    """A consumed message as an event to apply, or why it is none.

    ``in_log`` says the message was read from ``<prefix>.events`` itself, whose offsets are
    the log offsets; a family topic's message carries its log offset in a header.
    """
    try:
        envelope = decode_event(value or b"")
    except CodecError as exc:
        return exc
    position = (partition, offset) if in_log else log_position_in(headers)
    consumed = ConsumedEvent(
        envelope, topic, partition, offset,
        position[1] if position else None, position[0] if position else None,
    )
    try:
        # The log may hold envelopes appended before the gateway refused them.
        envelope.check()
    except InvalidEvent as exc:
        return consumed, exc
    return consumed
