"""Apply batches of consumed events to the mirror tables and the ops tables, one transaction each.

The Kafka log is the source of truth and PostgreSQL holds the projection's position in it: each
batch writes its rows, its ``ops.event_log`` records and the new positions in
``ops.projection_offsets`` in one transaction, so after a crash, a restart or a rebalance the
database says exactly which events it already holds, whatever Kafka's committed offsets say.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import cache
from typing import Any

import psycopg
from psycopg import AsyncConnection, AsyncCursor, sql
from psycopg.errors import ProgramLimitExceeded
from psycopg.types.json import Json

from projections.database import queries
from projections.latency import BOUNDS_MS
from projections.plan import BatchPlan, Candidate, EventRecord, Logged, dumps
from streams.errors import StreamsError
from streams.handlers.registry import HandlerRegistry
from streams.log.consumed import AppliedEvent, BatchRejected, ConsumedEvent, Outcome
from streams.log.envelope import EventSource

MIRROR_SCHEMA = "stripe"
COMMON_COLUMNS = (
    "id", "data", "deleted", "livemode", "account",
    "last_event_id", "last_event_created", "last_event_offset",
)
SWITCH_LOCK = 0x535452454D4D4952
"""Advisory lock every transaction writing the live mirror tables holds shared and a rebuild's
switch holds exclusively: a writer never resolves a table the switch is replacing."""
# Written columns per mirror table, checked once against the catalog (the schema only changes
# by migration, and a worker is restarted after one).
_written_columns_cache: dict[str, tuple[str, ...]] = {}


class Audit(StrEnum):
    """What a batch writes to ``ops.event_log`` and ``ops.event_stats``."""

    LIVE = "live"
    """Every event: a new id is recorded, a known one counts a delivery; stats are counted."""
    REPLAY = "replay"
    """Re-applied events get ``source = replay``; no delivery and no stats are counted."""
    NONE = "none"
    """Nothing: a rebuild fills tables beside the live ones, whose events are logged already."""


@dataclass(frozen=True, slots=True)
class Projecting:
    """Where a batch's rows go, which stored positions it moves, and what it records.

    Live processing moves the family's positions and records every delivery; a replay writes
    the live tables again without positions (its job keeps its own); a rebuild writes the
    tables of another schema and records nothing.
    """

    positions: str | None
    audit: Audit
    schema: str = MIRROR_SCHEMA

    @classmethod
    def live(cls, projection: str) -> Projecting:
        """Live processing of the projection ``projection`` (a family's name)."""
        return cls(projection, Audit.LIVE)

    @classmethod
    def replay(cls) -> Projecting:
        """Re-projecting events already in the log into the live tables."""
        return cls(None, Audit.REPLAY)

    @classmethod
    def rebuild(cls, schema: str) -> Projecting:
        """Projecting the log into the mirror tables of ``schema``."""
        return cls(None, Audit.NONE, schema)


async def apply_batch(
    conn: AsyncConnection[Any],
    family: str,
    events: Sequence[ConsumedEvent],
    registry: HandlerRegistry,
    *,
    projecting: Projecting | None = None,
    attempts: int = 1,
) -> list[AppliedEvent]:
    """Apply consumed events to the mirror tables in one transaction and return each outcome.

    ``projecting`` says how (live processing of ``family`` by default); the steps below are
    those of live processing, and a replay or a rebuild leaves out what :class:`Projecting`
    says it does not write.

    Order of side effects, which is what makes the projection crash-safe:

    1. Lock the stored positions of the batch's partitions (``ops.projection_offsets`` rows of
       the family's projection) and skip every event at or below them: an
       earlier run, perhaps another worker before a rebalance, applied those already. The lock
       makes a second worker that briefly holds the same partition wait, then skip.
    2. Write the rows: per object the newest event of the batch is upserted with a guard on
       ``(last_event_created, last_event_offset)``, so a row only ever moves to a newer event
       (or is written again from the event it holds: how a replay re-projects it); then
       children left out of complete lists are marked deleted.
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
                conn, family, projecting or Projecting.live(family), events, registry,
                columns, attempts,
            )
    except (psycopg.DataError, psycopg.IntegrityError, ProgramLimitExceeded) as exc:
        raise BatchRejected(exc) from exc


async def _apply(
    conn: AsyncConnection[Any],
    family: str,
    projecting: Projecting,
    events: Sequence[ConsumedEvent],
    registry: HandlerRegistry,
    columns: Mapping[str, tuple[str, ...]],
    attempts: int,
) -> list[AppliedEvent]:
    if projecting.schema == MIRROR_SCHEMA:
        # Taken before any statement names a mirror table, so one that waits for a switch
        # resolves the tables it swapped in.
        await conn.execute(queries("writer")["share_mirrors"], {"lock": SWITCH_LOCK})
    locking = (
        await lock_positions(conn, projecting.positions, events)
        if projecting.positions is not None else None
    )
    looking_up = (
        await conn.execute(
            queries("writer")["logged_events"],
            {
                "event_ids": [e.envelope.id for e in events],
                "created": [e.envelope.created for e in events],
            },
        )
        if projecting.audit is not Audit.NONE else None
    )
    positions = (
        {(str(t), int(p)): int(o) for t, p, o in await locking.fetchall()} if locking else {}
    )
    logged = (
        {
            str(event_id): Logged(str(status), log_partition, log_offset)
            for event_id, status, log_partition, log_offset in await looking_up.fetchall()
        }
        if looking_up else {}
    )
    fresh = [e for e in events if e.offset > positions.get((e.topic, e.partition), -1)]
    # A replay re-projects what the log holds, whatever was logged of it before.
    plan = BatchPlan(fresh, logged if projecting.audit is Audit.LIVE else {}, registry)
    upserts = [
        await _upsert_rows(conn, projecting.schema, table, columns[table], rows)
        for table, rows in plan.staged_rows().items()
    ]
    prior = {
        (table, str(row_id)): ((int(created), int(offset)), str(event_id))
        for table, upserting in upserts
        for row_id, created, offset, event_id in await upserting.fetchall()
    }
    records = plan.settle(prior)
    await _mark_removed_children(conn, projecting.schema, plan.candidates)
    if projecting.audit is Audit.LIVE:
        await record_events(
            conn, family, [*records, *plan.duplicates], attempts=attempts,
            newest_log_offsets=plan.newest_log_offsets,
        )
        await record_trail(conn, [
            *_unusual(records, logged),
            *(trail_row(event, Stage.DUPLICATE, count, outcome.value)
              for event, outcome, count in plan.duplicates),
        ])
        await count_stats(conn, family, records)
        await record_ties(conn, plan.ties)
    elif projecting.audit is Audit.REPLAY:
        await record_replayed(conn, family, records)
        await record_trail(conn, [
            trail_row(event, Stage.REPLAYED, 1, outcome.value) for event, outcome, _ in records
        ])
    if projecting.audit is not Audit.NONE:
        await close_revived_dead_letters(conn, records, logged)
    if projecting.positions is not None:
        await advance_positions(conn, projecting.positions, fresh)
    return [AppliedEvent(e, plan.outcomes.get(e.coordinates, Outcome.SKIPPED)) for e in events]


async def _upsert_rows(
    conn: AsyncConnection[Any], schema: str, table: str, columns: tuple[str, ...],
    rows: Sequence[bytes],
) -> tuple[str, AsyncCursor[Any]]:
    """Send the upsert of the staged rows; its result is the prior versions of the rows."""
    document = b"[" + b",".join(rows) + b"]"
    return table, await conn.execute(
        _upsert_statement(schema, table, columns), {"rows": Json(document, dumps=_as_is)}
    )


def _as_is(document: bytes) -> bytes:
    return document


@cache
def _upsert_statement(schema: str, table: str, columns: tuple[str, ...]) -> bytes:
    """The upsert of one mirror table, rendered once: composing it costs more than running it."""
    return sql.SQL(queries("writer")["upsert_mirror"]).format(
        table=sql.Identifier(schema, table),
        columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
        assignments=sql.SQL(", ").join(
            sql.SQL("{name} = excluded.{name}").format(name=sql.Identifier(name))
            for name in columns
            if name not in ("id", "last_event_offset")
        ),
    ).as_bytes()


def _json(value: Any) -> Json:
    """One JSON parameter for a whole batch: PostgreSQL unpacks it into typed rows.

    Dumping one document in C costs a fraction of binding one array per column element by
    element, which was the largest part of the writer's CPU.
    """
    return Json(value, dumps=dumps)


async def _mark_removed_children(
    conn: AsyncConnection[Any], schema: str, candidates: Sequence[Candidate]
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
        statement = _removal_statement(schema, child, parent_column, parent)
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
def _removal_statement(schema: str, child: str, parent_column: str, parent: str) -> bytes:
    return sql.SQL(queries("writer")["mark_removed_children"]).format(
        child=sql.Identifier(schema, child),
        parent=sql.Identifier(schema, parent),
        parent_column=sql.Identifier(parent_column),
    ).as_bytes()


async def lock_positions(
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


async def advance_positions(
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


async def record_events(
    conn: AsyncConnection[Any],
    family: str,
    records: Sequence[EventRecord],
    *,
    attempts: int,
    newest_log_offsets: Mapping[str, int] | None = None,
) -> None:
    """Record events in ``ops.event_log``: ``count`` deliveries each, at log positions up to
    ``newest_log_offsets`` of its id (its own position where it has no entry)."""
    if not records:
        return
    newest = newest_log_offsets or {}
    events = [
        _logged(event, outcome) | {
            "deliveries": count,
            "last_log_offset": newest.get(event.envelope.id, event.log_offset),
        }
        for event, outcome, count in records
    ]
    await conn.execute(
        queries("writer")["record_events"],
        {"family": family, "attempts": attempts, "events": _json(events)},
    )


async def record_replayed(
    conn: AsyncConnection[Any], family: str, records: Sequence[EventRecord]
) -> None:
    """Record in ``ops.event_log`` what a replay did: ``source = replay`` where it re-applied.

    An event the log did not hold yet is recorded as the replay found it; no delivery is
    counted, since no one delivered it again.
    """
    if not records:
        return
    events = [_logged(event, outcome) for event, outcome, _ in records]
    await conn.execute(
        queries("writer")["record_replayed"], {"family": family, "events": _json(events)}
    )


async def record_ties(
    conn: AsyncConnection[Any], ties: Mapping[tuple[str, str], set[str]]
) -> None:
    """Remember the rows two same-second events wrote, for ``reconcile --ties``."""
    if not ties:
        return
    rows = [{"table": table, "object_id": object_id, "event_ids": sorted(event_ids)}
            for (table, object_id), event_ids in sorted(ties.items())]
    await conn.execute(queries("writer")["record_ties"], {"ties": _json(rows)})


class Stage(StrEnum):
    """A stage of an event in ``ops.event_trail``; ``ops.event_log`` says how it was received,
    logged and routed, and its first outcome unless that was a dead letter."""

    APPLIED = "applied"
    STALE = "stale"
    UNHANDLED = "unhandled"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"
    RETRIED = "retried"
    REPLAYED = "replayed"
    RESOLVED = "resolved"


def trail_row(
    event: ConsumedEvent, stage: Stage, deliveries: int = 1, detail: str | None = None
) -> dict[str, Any]:
    """One ``ops.event_trail`` row: what happened to a delivery of ``event``."""
    return {
        "event_id": event.envelope.id,
        "stage": stage.value,
        "source": event.envelope.source.value,
        "topic": event.topic,
        "partition": event.partition,
        "offset": event.offset,
        "deliveries": deliveries,
        "detail": detail,
    }


def _unusual(
    records: Sequence[EventRecord], logged: Mapping[str, Logged]
) -> list[dict[str, Any]]:
    """The trail rows of a batch's projected events: only what ``ops.event_log`` cannot say.

    An event's first outcome is its event-log row, so the common case costs no trail row: a
    dead-lettered event tried again is ``retried``, and copies of one event within the batch
    are a ``duplicate``.
    """
    rows = []
    for event, outcome, deliveries in records:
        if _was_dead_lettered(logged, event):
            rows.append(trail_row(event, Stage.RETRIED, deliveries, outcome.value))
        elif deliveries > 1:
            rows.append(trail_row(event, Stage.DUPLICATE, deliveries - 1, outcome.value))
    return rows


async def record_trail(conn: AsyncConnection[Any], rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(queries("writer")["record_trail"], {"trail": _json(rows)})


def _logged(event: ConsumedEvent, outcome: Outcome) -> dict[str, Any]:
    """An event's ``ops.event_log`` columns, as the writer's JSON carries them."""
    envelope = event.envelope
    return {
        "event_id": envelope.id,
        "type": envelope.type,
        "object_id": envelope.object_id,
        "account": envelope.account,
        "livemode": envelope.livemode,
        "created": envelope.created,
        "received_at": envelope.received_at,
        "status": outcome.value,
        "source": envelope.source.value,
        "topic": event.topic,
        "partition": event.partition,
        "offset": event.offset,
        "endpoint": envelope.endpoint,
        "log_partition": event.log_partition,
        "log_offset": event.log_offset,
    }


def _was_dead_lettered(logged: Mapping[str, Logged], event: ConsumedEvent) -> bool:
    stored = logged.get(event.envelope.id)
    return stored is not None and stored.status == Outcome.DEAD_LETTERED


async def close_revived_dead_letters(
    conn: AsyncConnection[Any], records: Sequence[EventRecord], logged: Mapping[str, Logged]
) -> None:
    """Mark ``retried`` the open dead letters of events that were dead-lettered and now are not."""
    revived = sorted(
        event.envelope.id
        for event, outcome, _ in records
        if _was_dead_lettered(logged, event) and outcome is not Outcome.DEAD_LETTERED
    )
    if revived:
        await conn.execute(queries("writer")["close_revived_dead_letters"], {"event_ids": revived})


async def count_stats(
    conn: AsyncConnection[Any], family: str, records: Sequence[EventRecord]
) -> None:
    """Count the events of each minute, type and status, and each endpoint's newest webhook."""
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
        queries("writer")["count_stats"],
        {"family": family, "events": _json(events), "bounds": list(BOUNDS_MS)},
    )
    newest: dict[str, datetime] = {}
    for event, _, _ in records:
        envelope = event.envelope
        if envelope.source is not EventSource.WEBHOOK:
            continue
        known = newest.get(envelope.endpoint)
        if known is None or envelope.received_at > known:
            newest[envelope.endpoint] = envelope.received_at
    if newest:
        await conn.execute(
            queries("writer")["record_endpoints"],
            {
                "family": family,
                "endpoints": _json(
                    [{"endpoint": e, "received_at": at} for e, at in sorted(newest.items())]
                ),
            },
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


