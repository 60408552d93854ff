"""``stripe-streams backfill``: the events Stripe's Events API holds, appended to the log.

Webhooks alone leave holes: an endpoint down for longer than Stripe retries, a new
installation on an account with history, a type not subscribed. The backfill pages through
``GET /v1/events`` (the last 30 days, Stripe's retention), oldest first, and appends every event
the pipeline does not hold yet to ``<prefix>.events`` with ``source = backfill``, validated and
produced as the gateway does; the workers then apply them like any event.

Oldest first: Stripe lists newest first, so each type group starts from an anchor, the newest
event created before ``--since``, and asks for the page just newer than its cursor
(``ending_before``), page after page. Without an anchor it walks to the oldest page first.

An event is ``known``, and not appended, when ``ops.event_log`` or an earlier backfill holds its
id: deduplication is by event id, never by payload (Stripe renders an event at the API version
of its creation, a webhook at the endpoint's, so one id can come in two shapes; the mirror keeps
the copy the log held first). Before a page's events are produced they are recorded as sent,
and once Kafka acknowledged them as appended, with the cursor after the page: ``--resume``
first reads the log's recent messages to learn which events sent by the stopped run reached it,
then fetches the page after the stored cursor again, so nothing is skipped and nothing is
appended twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from ingest.producer import EventLog
from projections.database import connection, create_pool, database_errors
from projections.jobs import (
    appended_backfilled,
    forget_backfilled,
    known_events,
    resume_job,
    sending_backfilled,
    start_job,
    unsettled_backfilled,
)
from streams.errors import CodecError, InvalidEvent, StreamsError
from streams.jobs.running import Job, exit_code, running_job
from streams.jobs.stripe_api import Item, StripeApi
from streams.log.codec import decode_event, encode_event
from streams.log.envelope import EventEnvelope, EventSource
from streams.log.scanning import scan_since
from streams.settings import Settings

T = TypeVar("T")
KIND = "backfill"
EVENTS = "/v1/events"
PAGE = 100
TYPES_PER_REQUEST = 20
"""Stripe's limit on ``types[]``."""
RETENTION = timedelta(days=30)
"""How far back Stripe's Events API lists events."""
ENDPOINT = "backfill"
"""The envelope's endpoint for events that came from the Events API, not a webhook."""


@dataclass(frozen=True)
class BackfillRequest:
    """What the command line asked for; ``resume`` continues a job and ignores the rest."""

    since: datetime | None = None
    until: datetime | None = None
    types: tuple[str, ...] = ()
    account: str | None = None
    undelivered: bool = False
    resume: int | None = None


@dataclass
class _Counts:
    pages: int = 0
    appended: int = 0
    known: int = 0
    refused: int = 0


async def backfill(settings: Settings, request: BackfillRequest) -> int:
    """Run or resume a backfill job; return the command's exit code."""
    pool = create_pool(settings, min_size=1, max_size=2)
    with database_errors(settings.database_url):
        await pool.open(wait=False)
    try:
        resuming = request.resume is not None
        async with connection(pool) as conn:
            if request.resume is not None:
                job = await resume_job(conn, request.resume, KIND)
                request = _request_of(job.params)
            else:
                _check_window(request)
                job = await start_job(conn, KIND, _params(request),
                                      position={"group": 0, "cursor": None})
        api = StripeApi(settings, request.account)
        log = EventLog(settings)
        await log.start()
        try:
            if resuming:
                await _settle_unsettled(settings, pool, job.id)
            return await _run(pool, api, log, job, request)
        finally:
            await log.stop()
    finally:
        await pool.close()


async def _run(pool: Any, api: StripeApi, log: EventLog, job: Any, request: BackfillRequest
               ) -> int:
    counts = _Counts()
    groups = _groups(request.types)
    start = datetime.now(UTC)
    async with running_job(pool, job, KIND) as running:
        group, cursor = int(job.position["group"]), job.position["cursor"]
        while group < len(groups) and not running.interrupted:
            params = _filters(request, groups[group])
            async for page, newest in _ahead(_oldest_first(api, params, request, cursor)):
                await _append(pool, log, job.id, page, request, counts, running)
                cursor = newest
                await running.advance(position={"group": group, "cursor": cursor},
                                      total=_estimate(running, request, page, start))
                if running.interrupted:
                    break
            else:
                group, cursor = group + 1, None
    running.summary(
        "interrupted" if running.interrupted else "done",
        [
            ("pages", f"{counts.pages:,}"),
            ("appended (holes filled)", f"{counts.appended:,}"),
            ("already known", f"{counts.known:,}"),
            ("refused as the gateway would", f"{counts.refused:,}"),
            ("requests to Stripe", f"{api.requests:,}"),
            ("retries", ", ".join(f"{n} {cause}" for cause, n in api.retries.items()) or "0"),
            *([("resume with", f"--resume {job.id}")] if running.interrupted else []),
        ],
    )
    return exit_code(running)


async def _oldest_first(
    api: StripeApi, params: dict[str, Any], request: BackfillRequest, cursor: str | None
) -> AsyncGenerator[tuple[list[Item], str], None]:
    """Each page of the range, oldest event first, with the id of its newest event."""
    if cursor is None:
        cursor = await _anchor(api, params, request)
        if cursor is None:
            oldest = await _oldest_page(api, params)
            if not oldest:
                return
            yield oldest[::-1], oldest[0][0]["id"]
            cursor = oldest[0][0]["id"]
    while True:
        page, has_more = await api.page(EVENTS, {**params, "limit": PAGE,
                                                 "ending_before": cursor})
        if not page:
            return
        cursor = page[0][0]["id"]
        yield page[::-1], cursor
        if not has_more:
            return


async def _ahead(pages: AsyncGenerator[T, None]) -> AsyncIterator[T]:
    """The pages, the next one fetched while the caller appends this one.

    A page costs a request and an append; overlapping them keeps the request rate at the cap.
    """
    iterator = aiter(pages)
    fetching = asyncio.ensure_future(anext(iterator))
    try:
        while True:
            try:
                page = await fetching
            except StopAsyncIteration:
                return
            fetching = asyncio.ensure_future(anext(iterator))
            yield page
    finally:
        fetching.cancel()
        await asyncio.gather(fetching, return_exceptions=True)
        await pages.aclose()


async def _anchor(api: StripeApi, params: dict[str, Any], request: BackfillRequest
                  ) -> str | None:
    """The newest event of the same filters created before ``since``, if any."""
    assert request.since is not None
    before = {k: v for k, v in params.items() if k != "created"}
    page, _ = await api.page(EVENTS, {**before, "limit": 1,
                                      "created": {"lt": int(request.since.timestamp())}})
    return str(page[0][0]["id"]) if page else None


async def _oldest_page(api: StripeApi, params: dict[str, Any]) -> list[Item]:
    """The last page of the range as Stripe lists it (newest first), walking to it."""
    page, has_more = await api.page(EVENTS, {**params, "limit": PAGE})
    while has_more:
        page, has_more = await api.page(
            EVENTS, {**params, "limit": PAGE, "starting_after": page[-1][0]["id"]}
        )
    return page


async def _append(
    pool: Any, log: EventLog, job: int, page: list[Item], request: BackfillRequest,
    counts: _Counts, running: Job,
) -> None:
    envelopes: list[EventEnvelope] = []
    refused = 0
    for event, text in page:
        try:
            envelope = EventEnvelope.from_event_dict(
                event, payload=text, endpoint=ENDPOINT, source=EventSource.BACKFILL
            )
        except InvalidEvent as exc:
            refused += 1
            running.console.print(f"event {event.get('id')!r} refused: {exc}", highlight=False)
            continue
        if envelope.account is None and request.account is not None:
            envelope = replace(envelope, account=request.account)
        envelopes.append(envelope)
    async with connection(pool) as conn:
        known = await known_events(conn, [e.id for e in envelopes])
    fresh = [e for e in envelopes if e.id not in known]
    ids = [e.id for e in fresh]
    async with connection(pool) as conn:
        await sending_backfilled(conn, job, ids)
    await log.append_all([(e.key, encode_event(e)) for e in fresh])
    async with connection(pool) as conn:
        await appended_backfilled(conn, ids)
    counts.pages += 1
    counts.appended += len(fresh)
    counts.known += len(envelopes) - len(fresh)
    counts.refused += refused
    await running.advance(len(envelopes), refused)


async def _settle_unsettled(settings: Settings, pool: Any, job: int) -> None:
    """Learn which events the stopped job was appending reached the log.

    Those are appended; the others are forgotten, so the page they came from, fetched again
    from the stored cursor, appends them once.
    """
    async with connection(pool) as conn:
        unsettled = await unsettled_backfilled(conn, job)
    if not unsettled:
        return
    reached: set[str] = set()

    def visit(message: bytes) -> bool:
        try:
            event_id = decode_event(message).id
        except CodecError:
            return False
        if event_id in unsettled:
            reached.add(event_id)
        return len(reached) == len(unsettled)

    await scan_since(settings.kafka_bootstrap_servers, settings.topic(),
                     min(unsettled.values()), visit)
    async with connection(pool) as conn:
        await appended_backfilled(conn, sorted(reached))
        await forget_backfilled(conn, sorted(set(unsettled) - reached))


def _estimate(running: Job, request: BackfillRequest, page: list[Item], start: datetime
              ) -> int | None:
    """The events the job will have seen in all, from how much of its time range it covered."""
    assert request.since is not None
    end = (request.until or start).timestamp()
    span = end - request.since.timestamp()
    covered = (int(page[-1][0]["created"]) - request.since.timestamp()) / span if span else 1
    done = running.state.processed + running.state.failed
    return max(done, round(done / covered)) if covered > 0.01 else None


def _check_window(request: BackfillRequest) -> None:
    assert request.since is not None
    if request.since < datetime.now(UTC) - RETENTION:
        raise StreamsError(
            f"--since {request.since.isoformat()} is older than the 30 days Stripe's Events API "
            "keeps: backfill from within them, and repair older history with "
            "'stripe-streams reconcile --resource R'"
        )
    if request.until is not None and request.until <= request.since:
        raise StreamsError("--until must come after --since")


def _groups(types: tuple[str, ...]) -> list[tuple[str, ...]]:
    if not types:
        return [()]
    return [types[i:i + TYPES_PER_REQUEST] for i in range(0, len(types), TYPES_PER_REQUEST)]


def _filters(request: BackfillRequest, types: tuple[str, ...]) -> dict[str, Any]:
    assert request.since is not None
    created: dict[str, int] = {"gte": int(request.since.timestamp())}
    if request.until is not None:
        created["lte"] = int(request.until.timestamp())
    params: dict[str, Any] = {"created": created}
    if types:
        params["types"] = list(types)
    if request.undelivered:
        params["delivery_success"] = "false"
    return params


def _params(request: BackfillRequest) -> dict[str, Any]:
    return {
        "since": request.since.isoformat() if request.since else None,
        "until": request.until.isoformat() if request.until else None,
        "types": list(request.types),
        "account": request.account,
        "undelivered": request.undelivered,
    }


def _request_of(params: dict[str, Any]) -> BackfillRequest:
    return BackfillRequest(
        datetime.fromisoformat(params["since"]),
        datetime.fromisoformat(params["until"]) if params["until"] else None,
        tuple(params["types"]), params["account"], bool(params["undelivered"]),
    )
