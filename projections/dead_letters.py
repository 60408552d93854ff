"""The dead-letter store: dead letters recorded with their event-log records and positions."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from projections.database import queries
from projections.plan import EventRecord
from projections.writer import advance_positions, count_stats, lock_positions, record_events
from streams.log.consumed import ConsumedEvent, Outcome
from streams.log.envelope import DeadLetter, EventEnvelope


async def record_dead_letter(
    conn: AsyncConnection[Any],
    family: str,
    event: ConsumedEvent,
    letter: DeadLetter,
    *,
    projection: str | None,
) -> bool:
    """Record an event already produced to the dead-letter topic; return False if known.

    In one transaction: the ``ops.dead_letters`` row (one per failing event: an event failing
    again updates its row; recording the same message twice adds nothing), its
    ``ops.event_log`` record with status
    ``dead_lettered``, the stats and, for a ``projection``, the position past it. Writes nothing
    when the message is recorded already or that position covers it (another worker recorded
    it first). The router, which projects nothing, passes ``projection=None``. An envelope
    field the ops tables cannot hold (see :meth:`EventEnvelope.check`) is recorded as a
    placeholder; the dead-letter topic and the payload keep the event as it was.
    """
    event = _loggable(event)
    async with conn.transaction():
        if projection is not None:
            locking = await lock_positions(conn, projection, [event])
            [(_, _, stored)] = await locking.fetchall()
            if event.offset <= stored:
                return False
        cursor = await conn.execute(
            queries("writer")["record_dead_letter"],
            {
                "event_id": event.envelope.id,
                "type": event.envelope.type,
                "family": family,
                "handler": letter.handler,
                "error_type": letter.error_type,
                "error_message": letter.error_message,
                "attempts": letter.attempts,
                "first_failed_at": letter.first_failed_at,
                "last_failed_at": letter.last_failed_at,
                "source_topic": event.topic,
                "source_partition": event.partition,
                "source_offset": event.offset,
                "payload": Jsonb(_payload(event.envelope)),
                "endpoint": event.envelope.endpoint,
                "received_at": event.envelope.received_at,
            },
        )
        if await cursor.fetchone() is None:
            return False
        records: list[EventRecord] = [(event, Outcome.DEAD_LETTERED, 1)]
        await record_events(conn, family, records, attempts=letter.attempts)
        await count_stats(conn, family, records)
        if projection is not None:
            await advance_positions(conn, projection, [event])
    return True


async def count_open_dead_letters(conn: AsyncConnection[Any]) -> int:
    """Return how many dead letters wait for review (status ``open``)."""
    async with conn.transaction():
        cursor = await conn.execute(queries("writer")["count_open_dead_letters"])
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


def _payload(envelope: EventEnvelope) -> Any:
    # jsonb cannot hold a NUL character, while the JSON text escapes it harmlessly.
    if "\\u0000" in envelope.payload:
        return {"unparsed_payload": envelope.payload}
    try:
        return json.loads(envelope.payload)
    except ValueError:
        return {"unparsed_payload": envelope.payload}


def _loggable(event: ConsumedEvent) -> ConsumedEvent:
    """The event with every envelope field the ops tables cannot hold replaced."""
    placeholder = "invalid:{}:{}:{}".format(*event.coordinates)
    envelope = event.envelope.stored_as(placeholder)
    return event if envelope is event.envelope else replace(event, envelope=envelope)
