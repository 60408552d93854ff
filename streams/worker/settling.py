"""Settling a batch: apply it, and when that fails, split, retry, dead-letter, or wait.

The settler reads one thing from an error: ``retriable``. A retriable error (PostgreSQL or Kafka
down, a deadlock) is waited out with capped exponential backoff for as long as it lasts, and
nothing is dead-lettered. Any other failure of a batch is narrowed down to the event that causes
it (the writer names it, or the batch is split in halves until one event is left); that event
is tried again with exponential backoff up to ``max_attempts`` times, then produced to the
dead-letter topic and recorded in ``ops.dead_letters``, and the partition moves on, unless the
dead-letter circuit breaker (see :mod:`streams.worker.breaker`) pauses the family instead. Errors
that are neither (a missing table, a bug) propagate: the agent stops the worker rather than skip.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Protocol, TypeVar

from streams.errors import InvalidEvent
from streams.log.consumed import (
    AppliedEvent,
    BatchRejected,
    ConsumedEvent,
    EventRejected,
    Outcome,
)
from streams.log.envelope import DeadLetter, EventEnvelope, EventSource
from streams.outages import outages
from streams.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

PublishDeadLetter = Callable[[DeadLetter], Awaitable[None]]
"""Produce a dead letter to the dead-letter topic and wait for Kafka's acknowledgement."""
UNDECODABLE = "undecodable"


class Store(Protocol):
    """Where batches are applied and dead letters recorded (the projections' store)."""

    async def apply(
        self, family: str, events: Sequence[ConsumedEvent], attempts: int
    ) -> list[AppliedEvent]:
        """Apply events in one transaction, recording the given attempt number."""

    async def record_dead_letter(
        self, family: str, event: ConsumedEvent, letter: DeadLetter, projection: str | None
    ) -> int | None:
        """Record a dead letter still to produce; its id, or None when the position covered it."""

    async def produce_dead_letter(self, dead_letter: int, publish: PublishDeadLetter) -> None:
        """Produce a recorded dead letter with ``publish``, exactly once."""


class Breaker(Protocol):
    """What pauses a family instead of dead-lettering its events wholesale."""

    def settled(self, family: str, applied: Sequence[AppliedEvent]) -> None:
        """Count events the family's agent settled."""

    async def holds(self, family: str, error: BaseException) -> bool:
        """Whether an event about to be dead-lettered for ``error`` must wait instead."""

    async def wait_while_paused(self, family: str) -> None:
        """Return once ``family`` is not paused."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a failing event is tried again."""

    max_attempts: int = 3
    backoff: float = 0.5
    backoff_max: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The policy configured by STRIPE_STREAMS_MAX_ATTEMPTS and STRIPE_STREAMS_RETRY_*."""
        return cls(settings.max_attempts, settings.retry_backoff, settings.retry_backoff_max)

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1, 2, ...): doubling, capped."""
        return float(min(self.backoff_max, self.backoff * 2 ** (retry - 1)))


def is_retriable(exc: BaseException) -> bool:
    """Whether waiting and trying again can succeed, as the error itself says."""
    return getattr(exc, "retriable", False) is True


class BatchSettler:
    """Settle a family's batches: no poison event blocks its partition, no outage loses events.

    ``projection`` names the positions the store moves past a dead letter (None for the
    router, which projects nothing). A ``breaker`` may pause the family instead of
    dead-lettering an event that failed every attempt; ``gives_up`` says in the log what
    became of such an event (a rebuild only counts it).
    """

    def __init__(
        self,
        family: str,
        *,
        store: Store,
        projection: str | None,
        publish: PublishDeadLetter,
        handler_of: Callable[[str], str],
        retry: RetryPolicy,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        breaker: Breaker | None = None,
        gives_up: str = "dead-lettered",
    ) -> None:
        self.family = family
        self._store = store
        self._projection = projection
        self._publish = publish
        self._handler_of = handler_of
        self._retry = retry
        self._sleep = sleep
        self._breaker = breaker
        self._gives_up = gives_up

    async def apply(self, events: Sequence[ConsumedEvent]) -> list[AppliedEvent]:
        """Apply events in log order; return each one's outcome once all are settled.

        Every event ends applied, stale, unhandled, a duplicate, skipped or dead-lettered:
        when this returns, the caller may acknowledge all of them to Kafka.
        """
        results: list[AppliedEvent] = []
        await self._settle(list(events), results)
        return results

    async def wait_while_paused(self) -> None:
        """Return once the family is not paused by the dead-letter circuit breaker."""
        if self._breaker is not None:
            await self._breaker.wait_while_paused(self.family)

    async def dead_letter_undecodable(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
        timestamp: float | None, error: Exception,
    ) -> AppliedEvent:
        """Dead-letter a message that is not an event envelope at all (decoding cannot improve)."""
        envelope = undecodable_envelope(topic, partition, offset, key, value, timestamp)
        event = ConsumedEvent(envelope, topic, partition, offset)
        now = datetime.now(UTC)
        return await self._dead_letter(event, "decode", error, attempts=1, first_failed_at=now)

    async def dead_letter_invalid(
        self, event: ConsumedEvent, error: InvalidEvent
    ) -> AppliedEvent:
        """Dead-letter an envelope whose fields no table can hold (trying again cannot help)."""
        now = datetime.now(UTC)
        return await self._dead_letter(event, "validate", error, attempts=1, first_failed_at=now)

    async def _settle(self, events: list[ConsumedEvent], results: list[AppliedEvent]) -> None:
        pending = events
        while pending:
            try:
                results.extend(await self._patiently(partial(self._apply, pending, 1)))
                return
            except EventRejected as rejected:
                index = _position(pending, rejected.event)
                await self._settle(pending[:index], results)
                results.append(await self._retry_alone(pending[index], rejected))
                pending = pending[index + 1 :]
            except BatchRejected as rejected:
                if len(pending) == 1:
                    results.append(await self._retry_alone(pending[0], rejected))
                    return
                half = len(pending) // 2
                log.info(
                    "%s: batch of %d refused (%s); splitting it to find the event",
                    self.family, len(pending), rejected,
                )
                await self._settle(pending[:half], results)
                pending = pending[half:]

    async def _retry_alone(
        self, event: ConsumedEvent, failure: EventRejected | BatchRejected
    ) -> AppliedEvent:
        first_failed_at = datetime.now(UTC)
        attempt = 1
        while True:
            if attempt < self._retry.max_attempts:
                attempt += 1
                delay = self._retry.delay(attempt - 1)
                log.warning(
                    "%s: event %s at %s/%d/%d failed: %s: %s; attempt %d of %d in %.1fs",
                    self.family, event.envelope.id, *event.coordinates,
                    type(failure.cause).__name__, failure.cause, attempt,
                    self._retry.max_attempts, delay,
                )
                await self._sleep(delay)
            elif await self._paused_instead(failure):
                # The family was paused and has resumed: the event starts its attempts afresh.
                attempt = 1
            else:
                return await self._dead_letter(
                    event,
                    failure.handler if isinstance(failure, EventRejected) else self._handler_of(
                        event.envelope.type
                    ),
                    failure.cause,
                    attempts=self._retry.max_attempts,
                    first_failed_at=first_failed_at,
                )
            try:
                applied = await self._patiently(partial(self._apply, [event], attempt))
            except (EventRejected, BatchRejected) as again:
                failure = again
            else:
                return applied[0]

    async def _paused_instead(self, failure: EventRejected | BatchRejected) -> bool:
        """Whether the breaker paused the family rather than let it dead-letter; if so, wait."""
        if self._breaker is None or not await self._breaker.holds(self.family, failure.cause):
            return False
        await self._breaker.wait_while_paused(self.family)
        return True

    async def _dead_letter(
        self,
        event: ConsumedEvent,
        handler: str,
        error: BaseException,
        *,
        attempts: int,
        first_failed_at: datetime,
    ) -> AppliedEvent:
        letter = DeadLetter(
            event=event.envelope,
            error_type=type(error).__name__,
            error_message=str(error) or repr(error),
            retriable=is_retriable(error),
            handler=handler,
            attempts=attempts,
            source_topic=event.topic,
            source_partition=event.partition,
            source_offset=event.offset,
            first_failed_at=first_failed_at,
            last_failed_at=datetime.now(UTC),
        )
        # Record first: a crash after it leaves the dead letter recorded and still to produce,
        # which the worker produces once; producing first could repeat it on the topic.
        recorded = await self._patiently(partial(
            self._store.record_dead_letter, self.family, event, letter, self._projection
        ))
        if recorded is not None:
            await self._patiently(partial(
                self._store.produce_dead_letter, recorded, self._publish
            ))
        log.error(
            "%s: event %s (%s) at %s/%d/%d %s after %d attempt(s): %s: %s",
            self.family, event.envelope.id, event.envelope.type, *event.coordinates,
            self._gives_up, attempts, letter.error_type, letter.error_message,
        )
        return AppliedEvent(
            event, Outcome.DEAD_LETTERED if recorded is not None else Outcome.SKIPPED
        )

    async def _apply(self, events: Sequence[ConsumedEvent], attempts: int) -> list[AppliedEvent]:
        applied = await self._store.apply(self.family, events, attempts)
        if self._breaker is not None:
            self._breaker.settled(self.family, applied)
        return applied

    async def _patiently(self, operation: Callable[[], Awaitable[T]]) -> T:
        return await patiently(operation, self._retry, self.family, self._sleep)


async def patiently(
    operation: Callable[[], Awaitable[T]],
    retry: RetryPolicy,
    what: str,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Run ``operation`` until it stops failing with retriable errors, backing off between tries.

    There is no limit: an outage is waited out however long it lasts, and logged when it
    starts, once a minute while it lasts, and when it ends. A non-retriable error is raised at
    once.
    """
    waits = 0
    while True:
        try:
            result = await operation()
        except Exception as exc:
            if not is_retriable(exc):
                raise
            waits += 1
            outages.failed(what, exc)
            await sleep(retry.delay(waits))
        else:
            outages.recovered(what)
            return result


def undecodable_envelope(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
    timestamp: float | None,
) -> EventEnvelope:
    """An envelope standing in for a message that could not be decoded, keeping its bytes."""
    placeholder = f"{UNDECODABLE}:{topic}:{partition}:{offset}"
    kept = {
        "undecodable_message": {
            "key": base64.b64encode(key).decode() if key is not None else None,
            "value": base64.b64encode(value).decode() if value is not None else None,
        }
    }
    return EventEnvelope(
        id=placeholder,
        type=UNDECODABLE,
        object_id=key.decode("utf-8", "replace") if key else placeholder,
        object_type=UNDECODABLE,
        created=int(timestamp or 0),
        api_version=None,
        livemode=False,
        account=None,
        endpoint="unknown",
        source=EventSource.WEBHOOK,
        received_at=datetime.fromtimestamp(timestamp, UTC) if timestamp else datetime.now(UTC),
        payload=json.dumps(kept),
    )


def _position(events: Sequence[ConsumedEvent], event: ConsumedEvent) -> int:
    for index, candidate in enumerate(events):
        if candidate.coordinates == event.coordinates:
            return index
    raise ValueError(f"event at {event.coordinates} is not in the batch")
