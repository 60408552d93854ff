"""The envelope every Stripe event travels in through the log, and the dead letter around it."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from streams.errors import InvalidEvent

THIN_EVENT_OBJECT = "v2.core.event"
MAX_ID_LENGTH = 255
"""Longest event id, event type, object id or account the log accepts (Stripe's ids are shorter).

PostgreSQL indexes these columns, and an index entry cannot exceed about 2.7 KB."""
EARLIEST_CREATED = int(datetime(1, 1, 1, tzinfo=UTC).timestamp())
LATEST_CREATED = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())
"""``created`` must lie in years 1 to 9999: what both Python and PostgreSQL can hold."""


class EventSource(StrEnum):
    """How an event entered the log."""

    WEBHOOK = "webhook"
    BACKFILL = "backfill"
    REPLAY = "replay"
    DLQ_RETRY = "dlq_retry"
    RECONCILE = "reconcile"


@dataclass(frozen=True, slots=True)
class EventEnvelope:
    """One Stripe event with the fields the pipeline routes, orders and audits by.

    ``payload`` is the raw event JSON exactly as received, so any projection can be rebuilt
    from the log without loss.
    """

    id: str
    type: str
    object_id: str
    object_type: str
    created: int
    api_version: str | None
    livemode: bool
    account: str | None
    endpoint: str
    source: EventSource
    received_at: datetime
    payload: str

    @classmethod
    def from_stripe_event(
        cls,
        raw: bytes | str,
        *,
        endpoint: str,
        source: EventSource,
        received_at: datetime | None = None,
    ) -> EventEnvelope:
        """Wrap a raw Stripe event body (snapshot or thin); raise InvalidEvent if it is none."""
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            event = json.loads(text)
        except ValueError:
            raise InvalidEvent("body is not JSON") from None
        return cls.from_event_dict(
            event, payload=text, endpoint=endpoint, source=source, received_at=received_at
        )

    @classmethod
    def from_event_dict(
        cls,
        event: Any,
        *,
        payload: str,
        endpoint: str,
        source: EventSource,
        received_at: datetime | None = None,
    ) -> EventEnvelope:
        """Wrap an already-parsed Stripe event whose raw JSON text is ``payload``."""
        if not isinstance(event, dict):
            raise InvalidEvent("body is not a JSON object")
        event_id, event_type = event.get("id"), event.get("type")
        if not isinstance(event_id, str) or not event_id:
            raise InvalidEvent("event has no 'id'")
        if not isinstance(event_type, str) or not event_type:
            raise InvalidEvent("event has no 'type'")
        if event.get("object") == THIN_EVENT_OBJECT:
            object_id, object_type = _thin_event_object(event)
            created = _created_of_thin_event(event.get("created"))
        elif event.get("object") == "event":
            object_id, object_type = _snapshot_event_object(event)
            created = _created_of_snapshot_event(event.get("created"))
        else:
            raise InvalidEvent("'object' is neither 'event' nor 'v2.core.event'")
        account = event.get("account") or event.get("context")
        api_version = event.get("api_version")
        envelope = cls(
            id=event_id,
            type=event_type,
            object_id=object_id,
            object_type=object_type,
            created=created,
            api_version=api_version if isinstance(api_version, str) else None,
            livemode=bool(event.get("livemode", False)),
            account=account if isinstance(account, str) else None,
            endpoint=endpoint,
            source=source,
            received_at=received_at or datetime.now(UTC),
            payload=payload,
        )
        envelope.check()
        return envelope

    def check(self) -> None:
        """Raise InvalidEvent unless every field can be stored, indexed and converted.

        The gateway, and everything else that appends to the log, refuses such an event; a
        worker dead-letters one that reached the log before this check existed.
        """
        for name in _INDEXED_FIELDS:
            value = getattr(self, name)
            problem = _unindexable(value) if value is not None else None
            if problem is not None:
                raise InvalidEvent(f"event {name} {problem}")
        if not _storable_time(self.created):
            raise InvalidEvent(
                f"event 'created' {self.created} is not a time between years 1 and 9999"
            )

    def stored_as(self, placeholder: str) -> EventEnvelope:
        """This envelope with each field :meth:`check` refuses replaced, for the ops tables.

        An id, type, object id or account becomes ``placeholder``; ``created`` becomes the
        time the event was received.
        """
        fields: dict[str, Any] = {
            name: placeholder
            for name in _INDEXED_FIELDS
            if getattr(self, name) is not None and _unindexable(getattr(self, name)) is not None
        }
        if not _storable_time(self.created):
            fields["created"] = int(self.received_at.timestamp())
        return replace(self, **fields) if fields else self

    @property
    def key(self) -> bytes:
        """Kafka key: the object id, so every event of one object stays in one partition."""
        return self.object_id.encode("utf-8")

    def with_source(self, source: EventSource) -> EventEnvelope:
        """Return this envelope re-entering the log by another path (replay, DLQ retry)."""
        return EventEnvelope(**{**self.as_record(), "source": source})

    def as_record(self) -> dict[str, Any]:
        """Return the envelope as an Avro record (field name to value)."""
        return {name: getattr(self, name) for name in self.__slots__}


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


_INDEXED_FIELDS = ("id", "type", "object_id", "account")


def _unindexable(value: str) -> str | None:
    """Why PostgreSQL cannot index ``value`` as an id column, or None when it can."""
    if len(value) > MAX_ID_LENGTH:
        return f"is {len(value)} characters long; at most {MAX_ID_LENGTH} are accepted"
    if "\x00" in value:
        return "contains a NUL character"
    return None


def _storable_time(created: int) -> bool:
    return EARLIEST_CREATED <= created <= LATEST_CREATED


def _snapshot_event_object(event: dict[str, Any]) -> tuple[str, str]:
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise InvalidEvent("event has no 'data.object'")
    object_id = obj.get("id")
    object_type = obj.get("object")
    return (
        object_id if isinstance(object_id, str) and object_id else event["id"],
        object_type if isinstance(object_type, str) and object_type else "event",
    )


def _thin_event_object(event: dict[str, Any]) -> tuple[str, str]:
    related = event.get("related_object")
    if isinstance(related, dict) and isinstance(related.get("id"), str):
        return related["id"], str(related.get("type") or "event")
    return event["id"], "event"


def _created_of_snapshot_event(created: Any) -> int:
    if isinstance(created, int) and not isinstance(created, bool):
        return created
    raise InvalidEvent("event has no integer 'created'")


def _created_of_thin_event(created: Any) -> int:
    if isinstance(created, int) and not isinstance(created, bool):
        return created
    if isinstance(created, str):
        try:
            return int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
        except ValueError:
            pass
    raise InvalidEvent("thin event has no valid 'created'")
