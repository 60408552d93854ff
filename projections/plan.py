"""The part of applying a batch that needs no database: triage, staged rows, outcomes.

Pure: it runs every handler, stages the rows each event writes as JSON, and, given the versions
the rows held before the batch, decides what happened to each event.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from streams.handlers.registry import HandlerRegistry, MirrorRow, Projection
from streams.log.consumed import ConsumedEvent, EventRejected, Outcome


@dataclass
class Candidate:
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
RowVersion = tuple[tuple[int, int], str]
"""A mirror row's version (its event's ``created`` and log offset) and that event's id."""


@dataclass(frozen=True, slots=True)
class Logged:
    """What ``ops.event_log`` holds of an event id: its status, and up to which position of
    its log partition its deliveries were counted."""

    status: str
    log_partition: int | None = None
    log_offset: int | None = None

    def counted(self, event: ConsumedEvent) -> bool:
        """Whether this copy lies at a log position counted already: a router that crashed
        before committing forwards the same positions again, which no one delivered again."""
        return (
            event.log_offset is not None
            and self.log_offset is not None
            and event.log_partition == self.log_partition
            and event.log_offset <= self.log_offset
        )


class BatchPlan:
    """The part of applying a batch that needs no database: triage, newest rows, outcomes.

    Built from the batch's fresh events (those above the stored positions), in log order, and
    what ``ops.event_log`` already holds of their ids. The first sighting of an id is
    projected by its handler (a dead-lettered id seen again is another attempt, e.g. a DLQ
    retry); any later sighting at another log position only counts a delivery, and a copy of
    a log position counted already (a router's forward repeated after a crash) is skipped.
    """

    def __init__(
        self,
        fresh: Sequence[ConsumedEvent],
        logged: Mapping[str, Logged],
        registry: HandlerRegistry,
    ) -> None:
        self.outcomes: dict[tuple[str, int, int], Outcome] = {}
        copies: list[ConsumedEvent] = []
        positions: set[tuple[str, tuple[str | int | None, ...]]] = set()
        for event in fresh:
            stored = logged.get(event.envelope.id)
            position = (event.envelope.id, _log_position(event))
            if (stored is not None and stored.counted(event)) or position in positions:
                self.outcomes[event.coordinates] = Outcome.SKIPPED
                continue
            positions.add(position)
            copies.append(event)
        deliveries = Counter(e.envelope.id for e in copies)
        self.newest_log_offsets: dict[str, int] = {}
        """Per event id, the newest log offset among its copies in its first copy's log
        partition: what its event-log row counted up to."""
        self.candidates: list[Candidate] = []
        known: dict[str, EventRecord] = {}
        first: dict[str, ConsumedEvent] = {}
        for event in copies:
            event_id = event.envelope.id
            earlier = first.setdefault(event_id, event)
            if event.log_offset is not None and event.log_partition == earlier.log_partition:
                self.newest_log_offsets[event_id] = max(
                    self.newest_log_offsets.get(event_id, event.log_offset), event.log_offset
                )
            stored = logged.get(event_id)
            if stored is not None and stored.status != Outcome.DEAD_LETTERED:
                self.outcomes[event.coordinates] = Outcome.DUPLICATE
                known.setdefault(event_id, (event, Outcome(stored.status), deliveries[event_id]))
            elif earlier is not event:
                self.outcomes[event.coordinates] = Outcome.DUPLICATE
            else:
                self.candidates.append(_project(event, registry, deliveries[event_id]))
        self.duplicates: list[EventRecord] = list(known.values())
        """Event-log records of ids logged before: each counts its deliveries, nothing else."""
        self.ties: dict[tuple[str, str], set[str]] = defaultdict(set)
        """Per object's own row, the ids of events created in the same second that both wrote
        it: which is newer no rule can tell (log position is arrival order), so reconcile
        fetches the object again."""

    def staged_rows(self) -> dict[str, list[bytes]]:
        """Per table, each row as the newest event of the batch shows it, as a JSON object.

        One statement cannot update a row twice, and the guarded upsert would keep only the
        newest anyway. Every candidate's rows were checked when staged, so an older event's
        row that PostgreSQL would refuse is its event's failure all the same.
        """
        winners: dict[tuple[str, str], tuple[bytes, tuple[int, int]]] = {}
        for candidate in self.candidates:
            version = candidate.event.version
            rows = candidate.projection.rows if candidate.projection else ()
            for row, (table, staged) in zip(rows, candidate.staged, strict=True):
                key = (table, row.id)
                current = winners.get(key)
                if current is None or current[1] < version:
                    winners[key] = (staged, version)
        tables: dict[str, list[bytes]] = defaultdict(list)
        for (table, _), (staged, _) in winners.items():
            tables[table].append(staged)
        return tables

    def settle(self, prior: Mapping[tuple[str, str], RowVersion]) -> list[EventRecord]:
        """Decide each candidate's outcome from the rows' versions before the batch.

        Replays the batch in log order: an event whose own object's row held an older version
        (or none, or this very event) when its turn came is processed, otherwise stale.
        Returns the event-log records of the candidates.
        """
        versions = dict(prior)
        records: list[EventRecord] = []
        for candidate in self.candidates:
            event = candidate.event
            for row in candidate.projection.rows if candidate.projection else ():
                key = (row.table, row.id)
                current = versions.get(key)
                if (
                    current is not None
                    and row.id == event.envelope.object_id
                    and current[1] != event.envelope.id
                    and current[0][0] == event.version[0]
                ):
                    self.ties[key].update((current[1], event.envelope.id))
                if (
                    current is None
                    or current[1] == event.envelope.id
                    or current[0] < event.version
                ):
                    versions[key] = (event.version, event.envelope.id)
                    candidate.advanced.add(key)
            outcome = candidate.outcome()
            self.outcomes[candidate.event.coordinates] = outcome
            records.append((candidate.event, outcome, candidate.deliveries))
        return records


def _log_position(event: ConsumedEvent) -> tuple[str | int | None, ...]:
    """Where a copy lies in the log; a message without its log position is one of its own."""
    if event.log_offset is None:
        return event.coordinates
    return event.log_partition, event.log_offset


def _project(event: ConsumedEvent, registry: HandlerRegistry, deliveries: int) -> Candidate:
    registered = registry.lookup(event.envelope.type)
    if registered is None:
        return Candidate(event, None, deliveries)
    # Whatever fails between the payload and the JSON sent to PostgreSQL (parsing, the
    # handler, converting a value) is this event's failure, never the batch's.
    try:
        projection = registered.handle(orjson.loads(event.envelope.payload))
        _check_child_sets(projection)
        staged = tuple((row.table, storable(dumps(_staged_row(row, event))))
                       for row in projection.rows)
    except Exception as exc:
        raise EventRejected(event, registered.name, exc) from exc
    return Candidate(event, projection, deliveries, staged)


_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
"""``\u0000`` in JSON text, not preceded by an escaped backslash of its own."""


def storable(staged: bytes) -> bytes:
    """Return a staged row unchanged, or raise ValueError if PostgreSQL cannot store it.

    PostgreSQL's text and jsonb cannot hold the NUL character; values out of a column's range
    are refused by the handlers' typed readers.
    """
    if b"\\u0000" in staged and _ESCAPED_NUL.search(staged):
        raise ValueError("a string holds the NUL character, which PostgreSQL cannot store")
    return staged


def _check_child_sets(projection: Projection) -> None:
    row_ids = {row.id for row in projection.rows}
    for child_set in projection.child_sets:
        if child_set.parent_id not in row_ids:
            raise ValueError(
                f"the list of {child_set.table} names parent {child_set.parent_id}, "
                "which is not among the event's rows"
            )


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
        "last_event_offset": event.version[1],
    }


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_plain)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Decimal):
        # A JSON string keeps every digit; PostgreSQL reads it into numeric exactly.
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
