"""``stripe-streams reconcile``: compare the mirrors with Stripe's objects and repair drift.

For a resource (a mirror table Stripe's API lists), every object Stripe lists is compared with
its mirror row. A row that is missing, marked deleted, or holds other content gets a synthetic
event appended to ``<prefix>.events``, of type ``<object's event prefix>.reconciled``
(``customer.reconciled``, ``customer.subscription.reconciled``) with the object as Stripe
returned it and ``source = reconcile``, so the workers repair the row by the normal path and
the repair is auditable in ``ops.event_log``. The event is created at the second the page was
fetched: an event Stripe emits for a later change is newer and wins, and a row whose newest
event is as new as the page is left alone (counted as changing), never made older.

``--ties`` fetches exactly the objects the workers recorded in ``ops.ties`` (two events of the
object created in the same second, whose order no rule can tell) and repairs them the same way.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from ingest.producer import EventLog
from projections.database import connection, create_pool, database_errors
from projections.jobs import start_job
from projections.reconciling import MirrorRow, forget_tie, mirror_rows, ties
from streams.errors import StreamsError
from streams.handlers.registry import MirrorTable, load_handlers
from streams.jobs.running import Job, exit_code, running_job
from streams.jobs.stripe_api import StripeApi
from streams.log.codec import encode_event
from streams.log.envelope import EventEnvelope, EventSource
from streams.settings import Settings

KIND = "reconcile"
PAGE = 100
ENDPOINT = "reconcile"
"""The envelope's endpoint of a synthetic event: no webhook endpoint received it."""


@dataclass(frozen=True)
class ReconcileRequest:
    """Which resource to compare (None: every table with ties, with ``ties``), from when."""

    resource: str | None
    since: datetime | None = None
    ties: bool = False


@dataclass
class _Counts:
    found: int = 0
    missing: int = 0
    drifted: int = 0
    changing: int = 0
    repairs: list[EventEnvelope] = field(default_factory=list)


def listable(table: MirrorTable) -> bool:
    """Whether reconcile can compare this table: Stripe's API lists its objects."""
    return table.api_path is not None and table.reconciled_type is not None


async def reconcile(settings: Settings, request: ReconcileRequest) -> int:
    """Run a reconcile job; return the command's exit code."""
    tables = load_handlers().tables
    api = StripeApi(settings)
    pool = create_pool(settings, min_size=1, max_size=2)
    with database_errors(settings.database_url):
        await pool.open(wait=False)
    log = EventLog(settings)
    try:
        await log.start()
        async with connection(pool) as conn:
            job = await start_job(conn, KIND, {
                "resource": request.resource, "ties": request.ties,
                "since": request.since.isoformat() if request.since else None,
            })
        counts = _Counts()
        async with running_job(pool, job, KIND) as running:
            if request.ties:
                await _ties(api, pool, log, tables, request.resource, counts, running)
            else:
                table = tables[str(request.resource)]
                await _listing(api, pool, log, table, request.since, counts, running)
        repaired = len(counts.repairs)
        running.summary(
            "interrupted" if running.interrupted else ("clean" if not repaired else "repaired"),
            [
                ("found in Stripe", f"{counts.found:,}"),
                ("missing from the mirror", f"{counts.missing:,}"),
                ("drifted", f"{counts.drifted:,}"),
                ("repaired (events appended)", f"{repaired:,}"),
                ("changing now (left alone)", f"{counts.changing:,}"),
                ("requests to Stripe", f"{api.requests:,}"),
            ],
        )
        return exit_code(running)
    finally:
        await log.stop()
        await pool.close()


async def _listing(
    api: StripeApi, pool: Any, log: EventLog, table: MirrorTable, since: datetime | None,
    counts: _Counts, running: Job,
) -> None:
    assert table.api_path is not None
    params: dict[str, Any] = {"limit": PAGE}
    if since is not None:
        params["created"] = {"gte": int(since.timestamp())}
    if table.name == "subscriptions":
        # Stripe lists canceled subscriptions only when asked; their rows exist all the same.
        params["status"] = "all"
    after: str | None = None
    while not running.interrupted:
        fetched_at = int(time.time())
        page, has_more = await api.page(
            table.api_path, {**params, **({"starting_after": after} if after else {})}
        )
        objects = [item for item, _ in page]
        await _compare(pool, log, table, objects, fetched_at, counts, running)
        if not has_more or not objects:
            return
        after = str(objects[-1]["id"])


async def _ties(
    api: StripeApi, pool: Any, log: EventLog, tables: Any, only: str | None,
    counts: _Counts, running: Job,
) -> None:
    async with connection(pool) as conn:
        tied = await ties(conn, only)
    for table_name, object_id in tied:
        if running.interrupted:
            return
        table = tables.get(table_name)
        if table is None or not listable(table):
            continue
        fetched_at = int(time.time())
        found = await api.retrieve(table.api_path, object_id)
        if found is None:
            async with connection(pool) as conn:
                row = (await mirror_rows(conn, table_name, [object_id])).get(object_id)
            if row is None or row.deleted:
                await _forget(pool, table_name, object_id)
                continue
            found = {"id": object_id, "object": row.data.get("object"), "deleted": True}
        await _compare(pool, log, table, [found], fetched_at, counts, running)
        await _forget(pool, table_name, object_id)


async def _forget(pool: Any, table: str, object_id: str) -> None:
    async with connection(pool) as conn:
        await forget_tie(conn, table, object_id)


async def _compare(
    pool: Any, log: EventLog, table: MirrorTable, objects: list[dict[str, Any]],
    fetched_at: int, counts: _Counts, running: Job,
) -> None:
    """Compare objects Stripe returned at ``fetched_at`` with their rows; append repairs."""
    if not objects:
        return
    async with connection(pool) as conn:
        rows = await mirror_rows(conn, table.name, [str(o["id"]) for o in objects])
    repairs: list[EventEnvelope] = []
    for obj in objects:
        counts.found += 1
        row = rows.get(str(obj["id"]))
        if row is None:
            counts.missing += 1
        elif row.last_event_created is not None and row.last_event_created >= fetched_at:
            counts.changing += 1
            continue
        elif _same(row, obj):
            continue
        else:
            counts.drifted += 1
        repairs.append(_repair(table, obj, fetched_at))
    await log.append_all([(e.key, encode_event(e)) for e in repairs])
    counts.repairs.extend(repairs)
    await running.advance(len(objects))


def _same(row: MirrorRow, obj: dict[str, Any]) -> bool:
    return row.deleted == bool(obj.get("deleted")) and row.data == obj


def _repair(table: MirrorTable, obj: dict[str, Any], fetched_at: int) -> EventEnvelope:
    assert table.reconciled_type is not None
    event = {
        "id": f"evt_reconcile_{uuid.uuid4().hex}",
        "object": "event",
        "type": table.reconciled_type,
        "created": fetched_at,
        "livemode": bool(obj.get("livemode", False)),
        "api_version": None,
        "data": {"object": obj},
    }
    try:
        return EventEnvelope.from_event_dict(
            event, payload=orjson.dumps(event).decode(), endpoint=ENDPOINT,
            source=EventSource.RECONCILE,
        )
    except Exception as exc:
        raise StreamsError(f"Stripe's {table.name} object {obj.get('id')!r} cannot be "
                           f"logged: {exc}") from exc
