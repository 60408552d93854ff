"""The dead-letter store: dead letters recorded with their event-log records and positions,
then produced to the dead-letter topic once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from projections.database import queries
from projections.plan import EventRecord
from projections.writer import (
    Stage,
    advance_positions,
    count_stats,
    lock_positions,
    record_events,
    record_trail,
    trail_row,
)
from streams.log.codec import decode_dead_letter, encode_dead_letter
from streams.log.consumed import ConsumedEvent, Outcome
from streams.log.envelope import DeadLetter, EventEnvelope

_LOCK_NAMESPACE = 0x444C51
"""First key of the advisory lock on a dead letter's id (the second key)."""


async def record_dead_letter(
    conn: AsyncConnection[Any],
    family: str,
    event: ConsumedEvent,
    letter: DeadLetter,
    *,
    projection: str | None,
) -> int | None:
    """Record a dead letter still to produce; return its id, or None if known already.

    In one transaction: the ``ops.dead_letters`` row (one per failing event: an event failing
    again updates its row; recording the same message twice adds nothing) holding the encoded
    dead letter to produce (see :func:`publish_dead_letter`), its ``ops.event_log`` record with
    status ``dead_lettered``, the stats and, for a ``projection``, the position past it. Writes
    nothing when the message is recorded already or that position covers it (another worker
    recorded it first). The router, which projects nothing, passes ``projection=None``. An
    envelope field the ops tables cannot hold (see :meth:`EventEnvelope.check`) is recorded as
    a placeholder; the dead-letter message and the payload keep the event as it was.
    """
    message = encode_dead_letter(letter)
    event = _loggable(event)
    async with conn.transaction():
        if projection is not None:
            locking = await lock_positions(conn, projection, [event])
            [(_, _, stored)] = await locking.fetchall()
            if event.offset <= stored:
                return None
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
                "message": message,
            },
        )
        row = await cursor.fetchone()
        if row is None:
            return None
        records: list[EventRecord] = [(event, Outcome.DEAD_LETTERED, 1)]
        await record_events(conn, family, records, attempts=letter.attempts)
        await record_trail(conn, [trail_row(
            event, Stage.DEAD_LETTERED, 1,
            f"{letter.error_type}: {letter.error_message} (in {letter.handler}, after "
            f"{letter.attempts} attempt{'' if letter.attempts == 1 else 's'})",
        )])
        await count_stats(conn, family, records)
        if projection is not None:
            await advance_positions(conn, projection, [event])
    return int(row[0])


async def publish_dead_letter(
    conn: AsyncConnection[Any],
    dead_letter: int,
    publish: Callable[[DeadLetter], Awaitable[None]],
    produced: Callable[[DeadLetter], Awaitable[bool]],
    *,
    wait: bool = True,
) -> bool:
    """Produce a recorded dead letter to its topic exactly once; False when another holds it.

    Whoever produces it holds an advisory lock on its id (waiting for it, or with ``wait``
    False giving up at once) and marks the produce as under way before it starts: finding that
    mark, a later attempt (after a crash, a lost connection) asks ``produced`` whether the topic
    holds it already before producing again. ``conn`` must be in autocommit mode.
    """
    names = queries("writer")
    key = {"namespace": _LOCK_NAMESPACE, "id": dead_letter}
    if wait:
        await conn.execute(names["lock_dead_letter"], key)
    else:
        row = await (await conn.execute(names["try_lock_dead_letter"], key)).fetchone()
        if not (row and row[0]):
            return False
    try:
        row = await (await conn.execute(names["dead_letter_to_publish"], key)).fetchone()
        if row is None:
            return True
        letter = decode_dead_letter(bytes(row[0]))
        if not (row[1] and await produced(letter)):
            await conn.execute(names["publishing_dead_letter"], key)
            await publish(letter)
        await conn.execute(names["published_dead_letter"], key)
        return True
    finally:
        await conn.execute(names["unlock_dead_letter"], key)


async def unpublished_dead_letters(conn: AsyncConnection[Any], age: float) -> list[int]:
    """Ids of recorded dead letters not produced for ``age`` seconds: their worker died."""
    cursor = await conn.execute(queries("writer")["unpublished_dead_letters"], {"age": age})
    return [int(row[0]) for row in await cursor.fetchall()]


async def count_open_dead_letters(conn: AsyncConnection[Any]) -> int:
    """Return how many dead letters wait for review (status ``open``)."""
    async with conn.transaction():
        cursor = await conn.execute(queries("writer")["count_open_dead_letters"])
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


def _payload(envelope: EventEnvelope) -> Any:
    """The payload as jsonb can hold it, else its text under ``unparsed_payload``.

    jsonb refuses what a lenient JSON parser accepts (an unpaired surrogate, NaN) and the NUL
    character; orjson refuses all of those but NUL, so what it parses jsonb stores.
    """
    if "\\u0000" in envelope.payload:
        return {"unparsed_payload": envelope.payload}
    try:
        return orjson.loads(envelope.payload)
    except orjson.JSONDecodeError:
        return {"unparsed_payload": envelope.payload}


def _loggable(event: ConsumedEvent) -> ConsumedEvent:
    """The event with every envelope field the ops tables cannot hold replaced."""
    placeholder = "invalid:{}:{}:{}".format(*event.coordinates)
    envelope = event.envelope.stored_as(placeholder)
    return event if envelope is event.envelope else replace(event, envelope=envelope)
