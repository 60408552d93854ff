"""An event as a consumer reads it from the log, and what applying it did.

Shared by whoever applies events (the worker's agents, and the writer that projects them): an
event's coordinates, its outcome, and the two ways applying a batch can fail because of its data.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from streams.errors import StreamsError
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


@dataclass(frozen=True, slots=True)
class ConsumedEvent:
    """An envelope and the log coordinates it was consumed at."""

    envelope: EventEnvelope
    topic: str
    partition: int
    offset: int

    @property
    def version(self) -> tuple[int, int]:
        """Order of the events of one object: ``created``, then position in the log."""
        return self.envelope.created, self.offset

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
