"""``stripe-streams dlq retry``: dead letters republished to the log, as a batch job.

Each selected open dead letter's event goes back to ``<prefix>.events`` as it was received
(endpoint, received time, the payload) with ``source = dlq_retry``, keyed like the gateway keys
it, so the router and the family agents settle it like any event: applied, the event's
``ops.event_log`` status becomes ``processed`` and the dead letter ``retried``; failing again,
the same dead letter counts the new attempts and error and stays ``open``. The job publishes
in chunks, a few at a time; an item that cannot be republished is reported and the rest go on.
Then it waits, up to a bound, for the workers to settle what it published.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer
from psycopg_pool import AsyncConnectionPool

from projections.database import connection, create_pool, database_errors
from projections.dead_letter_review import (
    RetryItem,
    retry_items,
    retry_outcomes,
    retry_selection,
)
from projections.jobs import start_job
from streams.errors import InvalidEvent, StreamsError
from streams.jobs.running import EXIT_DONE, EXIT_FAILURES, Job, exit_code, running_job
from streams.log.codec import encode_event
from streams.log.envelope import EventEnvelope, EventSource
from streams.settings import Settings
from streams.worker.runtime import new_producer
from streams.worker.settling import UNDECODABLE, RetryPolicy, patiently

KIND = "dlq_retry"
CHUNK = 50
"""Dead letters republished together."""
CONCURRENT_CHUNKS = 5
_POLL = 0.5


@dataclass(frozen=True)
class RetryRequest:
    """Which dead letters to retry and how long to wait for their outcome."""

    ids: tuple[int, ...] = ()
    type: str | None = None
    everything: bool = False
    wait: float = 60.0


@dataclass
class _Published:
    ids: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)


async def retry(settings: Settings, request: RetryRequest) -> int:
    """Retry the dead letters ``request`` selects; return the command's exit code."""
    pool = create_pool(settings, min_size=1, max_size=CONCURRENT_CHUNKS + 1)
    with database_errors(settings.database_url):
        await pool.open(wait=False)
    try:
        async with connection(pool) as conn:
            selected = await retry_selection(
                conn, ids=list(request.ids) or None, type=request.type
            )
        missing = sorted(set(request.ids) - set(selected))
        if missing:
            raise StreamsError(
                f"no open dead letter {', '.join(map(str, missing))}: see 'stripe-streams dlq "
                "list --status all'"
            )
        if not selected:
            raise StreamsError("no open dead letter to retry")
        async with connection(pool) as conn:
            job = await start_job(conn, KIND, _params(request), total=len(selected))
        producer = new_producer(settings)
        await patiently(producer.start, RetryPolicy.from_settings(settings),
                        "starting the producer")
        try:
            async with running_job(pool, job, KIND) as running:
                published_at = datetime.now(UTC)
                published = await _publish(settings, pool, producer, selected, running)
            outcomes = await _settled(pool, published.ids, published_at, request.wait)
        finally:
            await producer.stop()
        return _report(running, published, outcomes, request.wait)
    finally:
        await pool.close()


async def _publish(
    settings: Settings, pool: AsyncConnectionPool, producer: AIOKafkaProducer,
    selected: Sequence[int], running: Job,
) -> _Published:
    published = _Published()
    chunks = [list(selected[i:i + CHUNK]) for i in range(0, len(selected), CHUNK)]
    gate = asyncio.Semaphore(CONCURRENT_CHUNKS)

    async def one_chunk(ids: list[int]) -> None:
        async with gate:
            if running.interrupted:
                return
            async with connection(pool) as conn:
                items = await retry_items(conn, ids)
            sent: list[tuple[int, asyncio.Future[object]]] = []
            for item in items:
                try:
                    envelope = _envelope(item)
                    sent.append((item.id, await producer.send(
                        settings.topic(), encode_event(envelope), key=envelope.key
                    )))
                except (InvalidEvent, ValueError) as exc:
                    published.errors[item.id] = str(exc)
            for dead_letter, acknowledged in sent:
                try:
                    await acknowledged
                except Exception as exc:
                    published.errors[dead_letter] = f"Kafka refused it: {exc!r}"
                else:
                    published.ids.append(dead_letter)
            failed = sum(1 for i in ids if i in published.errors)
            await running.advance(len(ids) - failed, failed)

    await asyncio.gather(*(one_chunk(ids) for ids in chunks))
    return published


def _envelope(item: RetryItem) -> EventEnvelope:
    if item.type == UNDECODABLE:
        raise ValueError("the message was not an event: resolve it instead")
    try:
        return EventEnvelope.from_stripe_event(
            item.payload, endpoint=item.endpoint or "unknown", source=EventSource.DLQ_RETRY,
            received_at=item.received_at,
        )
    except InvalidEvent as exc:
        raise InvalidEvent(f"still not an event any table can hold: {exc}") from exc


async def _settled(
    pool: AsyncConnectionPool, ids: list[int], published_at: datetime, wait: float
) -> dict[int, tuple[str, str]]:
    """Poll until every published dead letter is settled, or ``wait`` seconds have passed."""
    deadline = time.monotonic() + wait
    while True:
        async with connection(pool) as conn:
            outcomes = await retry_outcomes(conn, ids, published_at)
        pending = [i for i, (outcome, _) in outcomes.items() if outcome == "pending"]
        if not pending or time.monotonic() >= deadline:
            return outcomes
        await asyncio.sleep(_POLL)


def _report(
    running: Job, published: _Published, outcomes: dict[int, tuple[str, str]], wait: float
) -> int:
    counts = Counter(outcome for outcome, _ in outcomes.values())
    rows = [
        ("applied (retried)", f"{counts['retried']:,}"),
        ("failed again", f"{counts['failed again']:,}"),
        ("not settled yet", f"{counts['pending']:,}"),
        ("not republished", f"{len(published.errors):,}"),
    ]
    running.summary("interrupted" if running.interrupted else "done", rows)
    for dead_letter, error in sorted(published.errors.items()):
        running.console.print(f"dead letter {dead_letter} not republished: {error}",
                              highlight=False)
    for dead_letter, (outcome, error) in sorted(outcomes.items()):
        if outcome == "failed again":
            running.console.print(f"dead letter {dead_letter} failed again: {error}",
                                  highlight=False)
    if counts["pending"]:
        running.console.print(
            f"{counts['pending']} republished event(s) not settled within {wait:g} s: is a "
            "worker running? 'stripe-streams dlq list' shows them as they settle",
            highlight=False,
        )
    code = exit_code(running)
    if code == EXIT_DONE and (counts["failed again"] or counts["pending"]):
        return EXIT_FAILURES
    return code


def _params(request: RetryRequest) -> dict[str, object]:
    return {"ids": list(request.ids), "type": request.type, "all": request.everything}
