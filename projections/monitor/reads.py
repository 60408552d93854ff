"""What the monitoring API reads from PostgreSQL, as JSON-ready dictionaries.

Every read is one short read-only transaction answered from an index or from the per-minute
tables (``ops.event_stats``, ``ops.endpoint_activity``), so its cost does not grow with the
event log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, TypeVar

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from projections.database import queries
from projections.latency import BOUNDS_MS, add, percentile
from streams.log.routing import FAMILIES
from streams.log.topics import topic_name

WINDOWS = {"5m": 300, "1h": 3600, "24h": 86400}
"""The windows of the overview's counts."""
OUTCOMES = ("processed", "stale", "unhandled", "dead_lettered")
_QUANTILES = {"p50_ms": 0.5, "p95_ms": 0.95, "p99_ms": 0.99}


async def _rows(
    conn: AsyncConnection[Any], query: str, params: Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    async with conn.transaction():
        cursor = await conn.execute(queries("monitor")[query], params or {})
        return await cursor.fetchall()


async def _dicts(
    conn: AsyncConnection[Any], query: str, params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(queries("monitor")[query], params)
        return await cursor.fetchall()


async def outcomes(conn: AsyncConnection[Any]) -> dict[str, dict[str, int]]:
    """Per window, the events the workers finished by outcome, and their sum as ``finished``."""
    counts = {name: dict.fromkeys(OUTCOMES, 0) for name in WINDOWS}
    rows = await _rows(
        conn, "outcomes", {"names": list(WINDOWS), "seconds": list(WINDOWS.values())}
    )
    for window, status, events in rows:
        counts[str(window)][str(status)] = int(events)
    return {
        window: {"finished": sum(by_outcome.values()), **by_outcome}
        for window, by_outcome in counts.items()
    }


async def open_dead_letters(conn: AsyncConnection[Any]) -> tuple[int, datetime | None]:
    """How many dead letters are open, and when the oldest of them first failed."""
    [(count, oldest)] = await _rows(conn, "open_dead_letters")
    return int(count), oldest


async def endpoints(conn: AsyncConnection[Any]) -> list[dict[str, Any]]:
    """Each endpoint's newest webhook the workers applied, by when the gateway received it."""
    return [
        {"endpoint": endpoint, "last_received_at": at}
        for endpoint, at in await _rows(conn, "endpoints")
    ]


async def running_jobs(conn: AsyncConnection[Any]) -> list[dict[str, Any]]:
    return [_job(row) for row in await _dicts(conn, "running_jobs", {})]


async def family_positions(
    conn: AsyncConnection[Any], prefix: str
) -> dict[tuple[str, int], int]:
    """The next offset each family agent will process, per family topic partition."""
    rows = await _rows(conn, "positions", {"projections": list(FAMILIES)})
    families = {topic_name(prefix, family) for family in FAMILIES}
    return {
        (str(topic), int(partition)): int(offset) + 1
        for topic, partition, offset in rows
        if topic in families
    }


Summary = tuple[int, int, list[int]]
"""Events, errors (dead-lettered) and latency bucket counts."""
Key = TypeVar("Key")


class HourlyLatency:
    """Per past hour, family and type, the summed counts: hours that ended never change.

    A window of a day would otherwise sum some 1,440 minutes' rows per type on every request;
    with this, only the minutes of the current hour and of the window's first, partial hour
    are read again.
    """

    def __init__(self) -> None:
        self._hours: dict[datetime, dict[tuple[str, str], Summary]] = {}

    async def warm(self, conn: AsyncConnection[Any], now: datetime, days: int) -> None:
        """Sum the past ``days``' hours ahead of the first request, a day per statement."""
        current = _hour(now)
        for start in range(days, 0, -1):
            first = current - timedelta(days=start)
            hours = [
                h for h in _hours_between(first, first + timedelta(days=1))
                if h not in self._hours
            ]
            if hours:
                fetched = await _hourly(conn, hours[0], hours[-1] + _ONE_HOUR)
                for hour in hours:
                    self._hours[hour] = fetched.get(hour, {})

    async def performance(
        self, conn: AsyncConnection[Any], since: datetime, now: datetime
    ) -> dict[str, Any]:
        """Per event type and per family since ``since``: events, error rate, percentiles."""
        first_full = _hour(since) if since == _hour(since) else _hour(since) + _ONE_HOUR
        current = _hour(now)
        totals: dict[tuple[str, str], Summary] = {}
        if first_full >= current:
            _merge(totals, await _summaries(conn, since, now))
        else:
            _merge(totals, await _summaries(conn, since, first_full))
            missing = [h for h in _hours_between(first_full, current) if h not in self._hours]
            if missing:
                fetched = await _hourly(conn, missing[0], missing[-1] + _ONE_HOUR)
                for hour in missing:
                    self._hours[hour] = fetched.get(hour, {})
            for hour in _hours_between(first_full, current):
                _merge(totals, self._hours[hour])
            _merge(totals, await _summaries(conn, current, now))
        for hour in [h for h in self._hours if h < current - _KEPT]:
            del self._hours[hour]
        return _report(totals)


_ONE_HOUR = timedelta(hours=1)
_KEPT = timedelta(days=8)
"""Past hours kept: the longest window the API serves, and a day to spare."""


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _hours_between(first: datetime, end: datetime) -> list[datetime]:
    hours = []
    while first < end:
        hours.append(first)
        first += _ONE_HOUR
    return hours


async def _hourly(
    conn: AsyncConnection[Any], since: datetime, until: datetime
) -> dict[datetime, dict[tuple[str, str], Summary]]:
    found: dict[datetime, dict[tuple[str, str], Summary]] = {}
    async with conn.transaction():
        cursor = await conn.execute(_latency_statement(), {"since": since, "until": until})
        rows = await cursor.fetchall()
    for hour, family, event_type, events, errors, buckets in rows:
        found.setdefault(hour, {})[(str(family), str(event_type))] = (
            int(events), int(errors or 0), list(buckets),
        )
    return found


@cache
def _latency_statement() -> bytes:
    """The ``latency`` query with one sum per latency bucket (summing arrays element-wise)."""
    sums = sql.SQL(", ").join(
        sql.SQL("coalesce(sum(lag_buckets[{}]), 0)").format(sql.Literal(index))
        for index in range(1, len(BOUNDS_MS) + 1)
    )
    return sql.SQL(queries("monitor")["latency"]).format(bucket_sums=sums).as_bytes()


async def _summaries(
    conn: AsyncConnection[Any], since: datetime, until: datetime
) -> dict[tuple[str, str], Summary]:
    merged: dict[tuple[str, str], Summary] = {}
    for by_type in (await _hourly(conn, since, until)).values():
        _merge(merged, by_type)
    return merged


def _merge(into: dict[Key, Summary], more: Mapping[Key, Summary]) -> None:
    for key, (events, errors, buckets) in more.items():
        total, failed, summed = into.get(key, (0, 0, []))
        summed = list(summed)
        add(summed, buckets)
        into[key] = (total + events, failed + errors, summed)


def _report(totals: Mapping[tuple[str, str], Summary]) -> dict[str, Any]:
    by_type = [
        {"type": event_type, "family": family, **_summary(events, errors, buckets)}
        for (family, event_type), (events, errors, buckets) in sorted(totals.items())
    ]
    families: dict[str, Summary] = {}
    for (family, _), summary in totals.items():
        _merge(families, {family: summary})
    by_family = [
        {"family": family, **_summary(events, errors, buckets)}
        for family, (events, errors, buckets) in sorted(families.items())
    ]
    return {"by_type": by_type, "by_family": by_family}


def _summary(events: int, errors: int, buckets: Sequence[int]) -> dict[str, Any]:
    return {
        "events": events,
        "errors": errors,
        "error_rate": round(errors / events, 6) if events else 0.0,
        **{name: _rounded(percentile(buckets, q)) for name, q in _QUANTILES.items()},
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass(frozen=True)
class DeadLetterQuery:
    status: str | None
    type: str | None
    family: str | None
    since: datetime | None
    after: int
    limit: int
    payload: bool


async def dead_letters(conn: AsyncConnection[Any], query: DeadLetterQuery) -> list[dict[str, Any]]:
    rows = await _dicts(conn, "dead_letters", {
        "status": query.status, "type": query.type, "family": query.family,
        "since": query.since, "after": query.after, "limit": query.limit,
        "payload": query.payload,
    })
    if not query.payload:
        for row in rows:
            del row["payload"]
    return rows


async def events_by_id(conn: AsyncConnection[Any], event_id: str) -> list[dict[str, Any]]:
    return await _dicts(conn, "events_by_id", {"event_id": event_id})


async def events_by_object(
    conn: AsyncConnection[Any], object_id: str, after: tuple[datetime, str] | None, limit: int
) -> list[dict[str, Any]]:
    after_created, after_id = after or (None, None)
    return await _dicts(conn, "events_by_object", {
        "object_id": object_id, "after_created": after_created, "after_id": after_id,
        "limit": limit,
    })


async def trails(
    conn: AsyncConnection[Any], events: Sequence[Mapping[str, Any]], prefix: str, payload: bool
) -> list[dict[str, Any]]:
    """Each event with every stage it went through, oldest first."""
    ids = [str(e["event_id"]) for e in events]
    stages: dict[str, list[dict[str, Any]]] = {event_id: [] for event_id in ids}
    for row in await _dicts(conn, "trail", {"event_ids": ids}):
        stages[row.pop("event_id")].append(row)
    payloads = (
        {str(i): p for i, p in await _rows(conn, "dead_letter_payloads", {"event_ids": ids})}
        if payload else {}
    )
    return [
        {
            **_event(event),
            "stages": stages_of(event, stages[str(event["event_id"])], prefix),
            **({"payload": payloads.get(str(event["event_id"]))} if payload else {}),
        }
        for event in events
    ]


def _event(event: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: event[key]
        for key in (
            "event_id", "type", "family", "object_id", "account", "livemode", "created",
            "status", "deliveries", "attempts", "source",
        )
    }


def stages_of(
    event: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], prefix: str
) -> list[dict[str, Any]]:
    """Every stage of an event, oldest first, from its event-log row and its trail rows."""
    return [*_entry(event, rows, prefix), *_later(event, rows)]


def _entry(
    event: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], prefix: str
) -> Iterable[dict[str, Any]]:
    """Received, logged and routed: how the event's first copy reached its family agent."""
    yield {"stage": "received", "at": event["received_at"], "endpoint": event["endpoint"]}
    if event["log_offset"] is not None:
        yield {
            "stage": "logged", "topic": topic_name(prefix),
            "partition": event["log_partition"], "offset": event["log_offset"],
        }
    # A retry rewrites the event log's coordinates; the first failure kept the first copy's.
    first = rows[0] if _failed_first(event, rows) else event
    yield {
        "stage": "routed", "topic": first["topic"], "partition": first["partition"],
        "offset": first["offset"],
    }


def _failed_first(event: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the event's first outcome was the dead letter that starts its trail.

    Not when the event log says it was processed before that failure (a replay that failed
    after the event had been applied); a retry that applied it rewrote that time to a later one.
    """
    if not rows or rows[0]["stage"] != "dead_lettered":
        return False
    processed_at = event["processed_at"]
    return (
        event["status"] == "dead_lettered" or processed_at is None
        or processed_at >= rows[0]["at"]
    )


_STATUS_STAGES = {
    "processed": "applied", "stale": "stale", "unhandled": "unhandled",
    "dead_lettered": "dead_lettered",
}


def _later(
    event: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]
) -> Iterable[dict[str, Any]]:
    """The first outcome, then the trail's rows.

    The event log holds the first outcome, except a dead letter's: that one starts the trail,
    since a later attempt rewrites the event log's status.
    """
    if not _failed_first(event, rows):
        yield {"stage": _STATUS_STAGES[str(event["status"])], "at": event["processed_at"]}
    for row in rows:
        yield {key: value for key, value in row.items() if value is not None}


async def batch_jobs(
    conn: AsyncConnection[Any], status: str | None, kind: str | None, before: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    rows = await _dicts(conn, "batch_jobs", {
        "status": status, "kind": kind, "before": before, "limit": limit,
    })
    return [_job(row) for row in rows]


def _job(row: Mapping[str, Any]) -> dict[str, Any]:
    total, processed = row.get("total"), int(row["processed"])
    elapsed = (row["updated_at"] - row["started_at"]).total_seconds()
    return {
        **row,
        "progress": round(processed / total, 4) if total else None,
        "rate_per_second": round(processed / elapsed, 1) if elapsed > 0 else None,
    }


async def dead_letters_since(
    conn: AsyncConnection[Any], window: timedelta
) -> tuple[int, datetime | None]:
    """Dead letters that first failed within ``window``, and when the first of them failed."""
    [(count, first)] = await _rows(
        conn, "dead_letters_growth", {"seconds": window.total_seconds()}
    )
    return int(count), first


async def minutes(
    conn: AsyncConnection[Any], window: timedelta
) -> list[tuple[datetime, int, list[int]]]:
    """Per minute of ``window``, newest first: events finished and their latency buckets."""
    return [
        (minute, int(events), list(buckets))
        for minute, events, buckets in await _rows(
            conn, "slow_minutes", {"seconds": window.total_seconds()}
        )
    ]


async def paused_families(conn: AsyncConnection[Any]) -> list[dict[str, Any]]:
    return [
        {"family": family, "paused_at": paused_at, "resume_at": resume_at, "reason": reason}
        for family, paused_at, resume_at, reason in await _rows(conn, "paused_families")
    ]


async def newest_position(conn: AsyncConnection[Any]) -> datetime | None:
    """When a family agent last moved a stored position: last committed a batch."""
    [(newest,)] = await _rows(conn, "newest_position", {"projections": list(FAMILIES)})
    return newest if isinstance(newest, datetime) else None
