"""Apply batches of consumed events to the mirror tables and the ops tables, one transaction each.

The Kafka log is the source of truth and PostgreSQL holds the projection's position in it: each
batch writes its rows, its ``ops.event_log`` records and the new positions in
``ops.projection_offsets`` in one transaction, so after a crash, a restart or a rebalance the
database says exactly which events it already holds, whatever Kafka's committed offsets say.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from functools import cache
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection, AsyncCursor, sql
from psycopg.errors import ProgramLimitExceeded
from psycopg.types.json import Json, Jsonb

from projections.database import queries
from streams.codec import DeadLetter
from streams.envelope import (
    EARLIEST_CREATED,
    LATEST_CREATED,
    MAX_ID_LENGTH,
    EventEnvelope,
)
from streams.errors import InvalidEvent, StreamsError
from streams.handlers.registry import HandlerRegistry, MirrorRow, Projection

MIRROR_SCHEMA = "stripe"
COMMON_COLUMNS = (
    "id", "data", "deleted", "livemode", "account",
    "last_event_id", "last_event_created", "last_event_offset",
)
# Written columns per mirror table, checked once against the catalog (the schema only changes
# by migration, and a worker is restarted after one).
_written_columns_cache: dict[str, tuple[str, ...]] = {}


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

    def __init__(self, cause: psycopg.Error) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


@dataclass
class _Candidate:
    """A fresh event to project, its rows staged as JSON, and which rows it moved forward."""

    event: ConsumedEvent
    projection: Projection | None
    deliveries: int
    staged: tuple[tuple[str, bytes], ...] = ()
    advanced: set[tuple[str, str]] = field(default_factory=set)

    def outcome(self) -> Outcome:
        """Processed when, taken in log order, it moved its own object's row forward.

        An event a later one of the same batch overwrites is still processed (applying the
        batch one event at a time would have written it); it is stale only when its object's
        row already held a newer event when its turn came.
        """
        if self.projection is None:
            return Outcome.UNHANDLED
        if not self.projection.rows:
            return Outcome.PROCESSED
        own = [r for r in self.projection.rows if r.id == self.event.envelope.object_id]
        primary = (own or list(self.projection.rows))[0]
        advanced = (primary.table, primary.id) in self.advanced
        return Outcome.PROCESSED if advanced else Outcome.STALE


EventRecord = tuple[ConsumedEvent, Outcome, int]


async def apply_batch(
    conn: AsyncConnection[Any],
    family: str,
    events: Sequence[ConsumedEvent],
    registry: HandlerRegistry,
    *,
    projection: str | None = None,
    attempts: int = 1,
) -> list[AppliedEvent]:
    """Apply consumed events to the mirror tables in one transaction and return each outcome.

    Order of side effects, which is what makes the projection crash-safe:

    1. Lock the stored positions of the batch's partitions (``ops.projection_offsets`` rows of
       ``projection``, the family by default) and skip every event at or below them: an
       earlier run, perhaps another worker before a rebalance, applied those already. The lock
       makes a second worker that briefly holds the same partition wait, then skip.
    2. Write the rows: per object the newest event of the batch is upserted with a guard on
       ``(last_event_created, last_event_offset)``, so a row only ever moves to a newer event;
       then children left out of complete lists are marked deleted.
    3. Write ``ops.event_log`` (one row per event id: a known id only counts a delivery),
       ``ops.event_stats`` and the new positions.
    4. Commit the transaction.
    5. Only then may the caller let Kafka commit these offsets (ack the events).

    A crash before 4 leaves nothing behind; a crash between 4 and 5 makes Kafka redeliver events
    that step 1 skips. The skip relies on one rule the agents keep: an offset is acknowledged
    to Kafka only after it is committed here, so a consumer (re)starts at or below the stored
    position plus one and never beyond an event that is not applied yet.

    Raises :class:`EventRejected` naming the event whose handler or rows failed and
    :class:`BatchRejected` when PostgreSQL refuses data it cannot attribute (a value out of a
    column's range, a NUL character, an entry too large for an index); other database errors
    pass through for the caller to classify. Nothing is committed when it raises.
    ``conn`` must be idle (not inside a transaction).
    """
    if not events:
        return []
    columns = {
        name: await _written_columns(conn, name, table.columns)
        for name, table in registry.tables.items()
    }
    try:
        # Pipeline mode sends statements without waiting for each answer: a batch costs three
        # round trips (positions and log, upserts, the rest with the commit).
        async with conn.pipeline(), conn.transaction():
            return await _apply(
                conn, family, projection or family, events, registry, columns, attempts
            )
    except (psycopg.DataError, psycopg.IntegrityError, ProgramLimitExceeded) as exc:
        raise BatchRejected(exc) from exc


async def record_dead_letter(
    conn: AsyncConnection[Any],
    family: str,
    event: ConsumedEvent,
    letter: DeadLetter,
    *,
    projection: str | None,
) -> bool:
    """Record an event already produced to the dead-letter topic; return False if known.

    In one transaction: the ``ops.dead_letters`` row (one per source coordinates, so recording
    the same message twice adds nothing), its ``ops.event_log`` record with status
    ``dead_lettered``, the stats and, for a ``projection``, the position past it. Writes nothing
    when the message is recorded already or that position covers it (another worker recorded
    it first). The router, which projects nothing, passes ``projection=None``. An envelope
    field the ops tables cannot hold (see :meth:`EventEnvelope.check`) is recorded as a
    placeholder; the dead-letter topic and the payload keep the event as it was.
    """
    event = _loggable(event)
    async with conn.transaction():
        if projection is not None:
            locking = await _lock_positions(conn, projection, [event])
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
            },
        )
        if await cursor.fetchone() is None:
            return False
        records: list[EventRecord] = [(event, Outcome.DEAD_LETTERED, 1)]
        await _record_events(conn, family, records, attempts=letter.attempts)
        await _count_stats(conn, family, records)
        if projection is not None:
            await _advance_positions(conn, projection, [event])
    return True


async def count_open_dead_letters(conn: AsyncConnection[Any]) -> int:
    """Return how many dead letters wait for review (status ``open``)."""
    async with conn.transaction():
        cursor = await conn.execute(queries("writer")["count_open_dead_letters"])
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def _apply(
    conn: AsyncConnection[Any],
    family: str,
    projection: str,
    events: Sequence[ConsumedEvent],
    registry: HandlerRegistry,
    columns: Mapping[str, tuple[str, ...]],
    attempts: int,
) -> list[AppliedEvent]:
    locking = await _lock_positions(conn, projection, events)
    looking_up = await conn.execute(
        queries("writer")["logged_events"], {"event_ids": [e.envelope.id for e in events]}
    )
    positions = {(str(t), int(p)): int(o) for t, p, o in await locking.fetchall()}
    logged = {str(event_id): str(status) for event_id, status in await looking_up.fetchall()}
    fresh = [e for e in events if e.offset > positions[(e.topic, e.partition)]]
    plan = BatchPlan(fresh, logged, registry)
    upserts = [
        await _upsert_rows(conn, table, columns[table], rows)
        for table, rows in plan.staged_rows().items()
    ]
    prior = {
        (table, str(row_id)): (int(created), int(offset))
        for table, upserting in upserts
        for row_id, created, offset in await upserting.fetchall()
    }
    records = plan.settle(prior)
    await _mark_removed_children(conn, plan.candidates)
    await _record_events(conn, family, [*records, *plan.duplicates], attempts=attempts)
    await _count_stats(conn, family, records)
    await _advance_positions(conn, projection, fresh)
    return [AppliedEvent(e, plan.outcomes.get(e.coordinates, Outcome.SKIPPED)) for e in events]


class BatchPlan:
    """The part of applying a batch that needs no database: triage, newest rows, outcomes.

    Built from the batch's fresh events (those above the stored positions), in log order, and
    the statuses ``ops.event_log`` already holds for their ids. The first sighting of an id is
    projected by its handler (a dead-lettered id seen again is another attempt, e.g. a DLQ
    retry); any later sighting only counts a delivery.
    """

    def __init__(
        self,
        fresh: Sequence[ConsumedEvent],
        logged: Mapping[str, str],
        registry: HandlerRegistry,
    ) -> None:
        deliveries = Counter(e.envelope.id for e in fresh)
        self.candidates: list[_Candidate] = []
        self.outcomes: dict[tuple[str, int, int], Outcome] = {}
        known: dict[str, EventRecord] = {}
        seen: set[str] = set()
        for event in fresh:
            event_id = event.envelope.id
            status = logged.get(event_id)
            if status is not None and status != Outcome.DEAD_LETTERED:
                self.outcomes[event.coordinates] = Outcome.DUPLICATE
                known.setdefault(event_id, (event, Outcome(status), deliveries[event_id]))
            elif event_id in seen:
                self.outcomes[event.coordinates] = Outcome.DUPLICATE
            else:
                self.candidates.append(_project(event, registry, deliveries[event_id]))
            seen.add(event_id)
        self.duplicates: list[EventRecord] = list(known.values())
        """Event-log records of ids logged before: each counts its deliveries, nothing else."""

    def staged_rows(self) -> dict[str, list[bytes]]:
        """Per table, the staged rows of every candidate, each a JSON object.

        All of them go to PostgreSQL, which converts each to the table's row type (so it
        refuses a bad row even when a newer event of the same object follows in the batch) and
        upserts only the newest row per id.
        """
        tables: dict[str, list[bytes]] = defaultdict(list)
        for candidate in self.candidates:
            for table, staged in candidate.staged:
                tables[table].append(staged)
        return tables

    def settle(self, prior: Mapping[tuple[str, str], tuple[int, int]]) -> list[EventRecord]:
        """Decide each candidate's outcome from the rows' versions before the batch.

        Replays the batch in log order: an event whose own object's row held an older version
        (or none) when its turn came is processed, otherwise stale. Returns the event-log
        records of the candidates.
        """
        versions = dict(prior)
        records: list[EventRecord] = []
        for candidate in self.candidates:
            for row in candidate.projection.rows if candidate.projection else ():
                key = (row.table, row.id)
                current = versions.get(key)
                if current is None or current < candidate.event.version:
                    versions[key] = candidate.event.version
                    candidate.advanced.add(key)
            outcome = candidate.outcome()
            self.outcomes[candidate.event.coordinates] = outcome
            records.append((candidate.event, outcome, candidate.deliveries))
        return records


def _project(event: ConsumedEvent, registry: HandlerRegistry, deliveries: int) -> _Candidate:
    registered = registry.lookup(event.envelope.type)
    if registered is None:
        return _Candidate(event, None, deliveries)
    # Whatever fails between the payload and the JSON sent to PostgreSQL (parsing, the
    # handler, converting a value) is this event's failure, never the batch's.
    try:
        projection = registered.handle(orjson.loads(event.envelope.payload))
        _check_child_sets(projection)
        staged = tuple((row.table, _dumps(_staged_row(row, event))) for row in projection.rows)
    except Exception as exc:
        raise EventRejected(event, registered.name, exc) from exc
    return _Candidate(event, projection, deliveries, staged)


def _check_child_sets(projection: Projection) -> None:
    row_ids = {row.id for row in projection.rows}
    for child_set in projection.child_sets:
        if child_set.parent_id not in row_ids:
            raise ValueError(
                f"the list of {child_set.table} names parent {child_set.parent_id}, "
                "which is not among the event's rows"
            )


async def _upsert_rows(
    conn: AsyncConnection[Any], table: str, columns: tuple[str, ...], rows: Sequence[bytes]
) -> tuple[str, AsyncCursor[Any]]:
    """Send the upsert of the staged rows; its result is the prior versions of the rows."""
    document = b"[" + b",".join(rows) + b"]"
    return table, await conn.execute(
        _upsert_statement(table, columns), {"rows": Json(document, dumps=_as_is)}
    )


def _as_is(document: bytes) -> bytes:
    return document


@cache
def _upsert_statement(table: str, columns: tuple[str, ...]) -> bytes:
    """The upsert of one mirror table, rendered once: composing it costs more than running it."""
    return sql.SQL(queries("writer")["upsert_mirror"]).format(
        table=sql.Identifier(MIRROR_SCHEMA, table),
        columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
        assignments=sql.SQL(", ").join(
            sql.SQL("{name} = excluded.{name}").format(name=sql.Identifier(name))
            for name in columns
            if name != "id"
        ),
    ).as_bytes()


def _staged_row(row: MirrorRow, event: ConsumedEvent) -> dict[str, Any]:
    envelope = event.envelope
    return {
        **row.columns,
        "id": row.id,
        "data": row.data,
        "deleted": row.deleted,
        "livemode": envelope.livemode,
        "account": envelope.account,
        "last_event_id": envelope.id,
        "last_event_created": datetime.fromtimestamp(envelope.created, UTC),
        "last_event_offset": event.offset,
    }


def _json(value: Any) -> Json:
    """One JSON parameter for a whole batch: PostgreSQL unpacks it into typed rows.

    Dumping one document in C costs a fraction of binding one array per column element by
    element, which was the largest part of the writer's CPU.
    """
    return Json(value, dumps=_dumps)


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_plain)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Decimal):
        # A JSON string keeps every digit; PostgreSQL reads it into numeric exactly.
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


async def _mark_removed_children(
    conn: AsyncConnection[Any], candidates: Sequence[_Candidate]
) -> None:
    newest: dict[tuple[str, str, str], dict[str, tuple[int, int]]] = defaultdict(dict)
    for candidate in candidates:
        if candidate.projection is None:
            continue
        tables = {row.id: row.table for row in candidate.projection.rows}
        for child_set in candidate.projection.child_sets:
            group = (child_set.table, child_set.parent_column, tables[child_set.parent_id])
            known = newest[group].get(child_set.parent_id)
            if known is None or known < candidate.event.version:
                newest[group][child_set.parent_id] = candidate.event.version
    if not newest:
        return
    event_ids = [c.event.envelope.id for c in candidates]
    for (child, parent_column, parent), versions in newest.items():
        statement = _removal_statement(child, parent_column, parent)
        parents = sorted(versions)
        await conn.execute(
            statement,
            {
                "parents": parents,
                "created": [versions[p][0] for p in parents],
                "offsets": [versions[p][1] for p in parents],
                "event_ids": event_ids,
            },
        )


@cache
def _removal_statement(child: str, parent_column: str, parent: str) -> bytes:
    return sql.SQL(queries("writer")["mark_removed_children"]).format(
        child=sql.Identifier(MIRROR_SCHEMA, child),
        parent=sql.Identifier(MIRROR_SCHEMA, parent),
        parent_column=sql.Identifier(parent_column),
    ).as_bytes()


async def _lock_positions(
    conn: AsyncConnection[Any], projection: str, events: Iterable[ConsumedEvent]
) -> AsyncCursor[Any]:
    """Send the locking of the positions; its result is (topic, partition, offset) rows."""
    partitions = sorted({(e.topic, e.partition) for e in events})
    return await conn.execute(
        queries("writer")["lock_positions"],
        {
            "projection": projection,
            "topics": [topic for topic, _ in partitions],
            "partitions": [partition for _, partition in partitions],
        },
    )


async def _advance_positions(
    conn: AsyncConnection[Any], projection: str, events: Iterable[ConsumedEvent]
) -> None:
    newest: dict[tuple[str, int], int] = {}
    for event in events:
        key = (event.topic, event.partition)
        newest[key] = max(newest.get(key, -1), event.offset)
    if not newest:
        return
    await conn.execute(
        queries("writer")["advance_positions"],
        {
            "projection": projection,
            "topics": [topic for topic, _ in newest],
            "partitions": [partition for _, partition in newest],
            "offsets": list(newest.values()),
        },
    )


async def _record_events(
    conn: AsyncConnection[Any], family: str, records: Sequence[EventRecord], *, attempts: int
) -> None:
    if not records:
        return
    events = [
        {
            "event_id": event.envelope.id,
            "type": event.envelope.type,
            "object_id": event.envelope.object_id,
            "account": event.envelope.account,
            "livemode": event.envelope.livemode,
            "created": event.envelope.created,
            "received_at": event.envelope.received_at,
            "status": outcome.value,
            "deliveries": count,
            "source": event.envelope.source.value,
            "topic": event.topic,
            "partition": event.partition,
            "offset": event.offset,
        }
        for event, outcome, count in records
    ]
    await conn.execute(
        queries("writer")["record_events"],
        {"family": family, "attempts": attempts, "events": _json(events)},
    )


async def _count_stats(
    conn: AsyncConnection[Any], family: str, records: Sequence[EventRecord]
) -> None:
    if not records:
        return
    events = [
        {
            "type": event.envelope.type,
            "status": outcome.value,
            "received_at": event.envelope.received_at,
        }
        for event, outcome, _ in records
    ]
    await conn.execute(
        queries("writer")["count_stats"], {"family": family, "events": _json(events)}
    )


async def _written_columns(
    conn: AsyncConnection[Any], table: str, typed: Sequence[str]
) -> tuple[str, ...]:
    """Return the columns the writer fills in a mirror table, after checking the table has them."""
    known = _written_columns_cache.get(table)
    if known is None:
        async with conn.transaction():
            cursor = await conn.execute(
                queries("writer")["column_names"], {"table": f"{MIRROR_SCHEMA}.{table}"}
            )
            catalog = {str(name) for (name,) in await cursor.fetchall()}
        known = (*COMMON_COLUMNS, *typed)
        missing = [name for name in known if name not in catalog]
        if missing:
            raise StreamsError(
                f"{MIRROR_SCHEMA}.{table} lacks columns {', '.join(missing)}: "
                "run 'stripe-streams migrate'"
            )
        _written_columns_cache[table] = known
    return known


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
    envelope = event.envelope
    try:
        envelope.check()
    except InvalidEvent:
        placeholder = "invalid:{}:{}:{}".format(*event.coordinates)

        def storable(value: str) -> str:
            return placeholder if len(value) > MAX_ID_LENGTH or "\x00" in value else value

        created = envelope.created
        if not EARLIEST_CREATED <= created <= LATEST_CREATED:
            created = int(envelope.received_at.timestamp())
        account = envelope.account
        envelope = replace(
            envelope,
            id=storable(envelope.id),
            type=storable(envelope.type),
            object_id=storable(envelope.object_id),
            account=storable(account) if account is not None else None,
            created=created,
        )
        return replace(event, envelope=envelope)
    return event
