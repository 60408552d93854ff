"""The worker's agents: the router and one projecting agent per family.

Each agent takes a batch (up to N events, B bytes or T ms, per family), settles every event of
it, and only then acknowledges the batch to Faust, whose commits therefore never pass an event
that is not settled. Settled means forwarded and acknowledged by Kafka (router) or committed to
PostgreSQL as applied, stale, unhandled, duplicate or dead-lettered (family agents). An error
that settles nothing (a missing table, a bug) stops the worker with the batch unacknowledged;
no exception ever escapes an agent, since Faust would acknowledge the batch anyway.

Skipping what is already applied needs no state in the worker: the family agents' writer locks
the positions stored in ``ops.projection_offsets`` and skips events at or below them, so after a
restart or a rebalance (Kafka redelivers from its last commit, which is never ahead of
PostgreSQL) every worker of the consumer group agrees on what is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, cast

import faust
from faust import Stream
from faust.types import Message

from projections.partitions import maintain
from streams.errors import CodecError
from streams.log.codec import event_type_of
from streams.log.consumed import AppliedEvent, ConsumedEvent, Decoded, decode_consumed
from streams.log.routing import FAMILIES, OTHER, route_event
from streams.settings import Settings
from streams.worker.batching import Delivery, batches
from streams.worker.forwarding import forward
from streams.worker.runtime import WorkerRuntime
from streams.worker.settling import patiently

log = logging.getLogger(__name__)
ROUTER = "router"
_LAG_INTERVAL = 5.0
_OPEN_DEAD_LETTERS_INTERVAL = 15.0
_PARTITIONS_INTERVAL = 6 * 3600.0
_ABANDONED_AFTER = 30.0
"""Seconds after which a recorded dead letter not yet produced counts as its worker's loss."""

Settle = Callable[[Sequence[Delivery]], Awaitable[None]]
"""Settle every event of a batch; raising means nothing may be acknowledged."""


def register_agents(app: faust.App, settings: Settings, runtime: WorkerRuntime) -> None:
    """Register the router, the family agents and the metric timers on ``app``."""
    source = app.topic(settings.topic(), key_serializer="raw", value_serializer="raw")
    router = _agent(
        app, runtime, ROUTER, _router(settings, runtime),
        settings.batch_size, settings.batch_bytes, settings.router_batch_timeout_ms / 1000,
    )
    app.agent(source, name=ROUTER, concurrency=1)(router)
    for family in FAMILIES:
        topic = app.topic(settings.topic(family), key_serializer="raw", value_serializer="raw")
        projector = _agent(
            app, runtime, family, _projector(runtime, family),
            settings.batch_size_for(family), settings.batch_bytes,
            settings.batch_timeout_for(family),
        )
        app.agent(topic, name=f"project_{family}", concurrency=1)(projector)
    app.timer(_LAG_INTERVAL, name="measure_consumer_lag")(_lag_meter(app, runtime))

    async def forget_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        """Forget positions of partitions this worker no longer holds: another worker moves on."""
        for tp in revoked:
            runtime.next_offsets.pop((tp.topic, tp.partition), None)

    # mode's signal annotation wants a positional-only variadic receiver; Faust sends
    # (sender, revoked, signal=...).
    app.on_partitions_revoked.connect(cast(Any, forget_revoked))

    app.timer(_OPEN_DEAD_LETTERS_INTERVAL, name="count_open_dead_letters")(
        _open_dead_letters(runtime)
    )
    app.timer(_OPEN_DEAD_LETTERS_INTERVAL, name="publish_abandoned_dead_letters")(
        _abandoned_dead_letters(runtime)
    )
    app.timer(_PARTITIONS_INTERVAL, name="maintain_partitions")(_partitions(settings))


def _agent(
    app: faust.App, runtime: WorkerRuntime, name: str, settle: Settle,
    size: int, max_bytes: int, within: float,
) -> Any:
    """An agent that settles each batch, then acknowledges it, or stops the worker."""

    async def run(stream: Stream[bytes]) -> None:
        async for events in batches(stream, size, max_bytes, within):
            try:
                await runtime.ready()
                await settle(events)
            except Exception as exc:
                await _halt(app, name, exc)
                return
            for event in events:
                await stream.ack(event)
            runtime.settled(events)

    return run


def _router(settings: Settings, runtime: WorkerRuntime) -> Settle:
    settler = runtime.settler(OTHER, projection=None)

    async def settle(events: Sequence[Delivery]) -> None:
        """Forward each event to its family's topic; dead-letter what has no readable type."""
        routed: list[tuple[str, Message]] = []
        for event in events:
            try:
                event_type = event_type_of(event.message.value or b"")
            except CodecError as exc:
                await settler.dead_letter_undecodable(*_source_of(event), exc)
            else:
                routed.append((settings.topic(route_event(event_type)), event.message))
        await patiently(
            partial(forward, runtime.producer, settings.topic(), routed),
            runtime.retry, "forwarding events",
        )

    return settle


def _projector(runtime: WorkerRuntime, family: str) -> Settle:
    settler = runtime.settler(family, projection=family)

    async def settle(events: Sequence[Delivery]) -> None:
        """Apply the batch in log order, dead-lettering in place messages that are no event.

        While the family is paused by the dead-letter circuit breaker, the batch waits
        unacknowledged, so the family's partitions stop advancing.
        """
        await settler.wait_while_paused()
        applied: list[AppliedEvent] = []
        run: list[ConsumedEvent] = []
        for event, decoded in _decode(events):
            if isinstance(decoded, ConsumedEvent):
                run.append(decoded)
                continue
            applied.extend(await settler.apply(run))
            run = []
            if isinstance(decoded, CodecError):
                applied.append(await settler.dead_letter_undecodable(*_source_of(event), decoded))
            else:
                applied.append(await settler.dead_letter_invalid(*decoded))
        applied.extend(await settler.apply(run))
        runtime.metrics.observe_batch(family, applied)

    return settle


def _decode(events: Sequence[Delivery]) -> list[tuple[Delivery, Decoded]]:
    """Each Faust event with its decoded envelope and coordinates, or why it is no event."""
    decoded: list[tuple[Delivery, Decoded]] = []
    for event in events:
        message = event.message
        headers = message.headers
        decoded.append((event, decode_consumed(
            message.topic, message.partition, message.offset, message.value,
            headers.items() if isinstance(headers, Mapping) else headers, in_log=False,
        )))
    return decoded


def _source_of(event: Delivery) -> tuple[str, int, int, bytes | None, bytes | None, float | None]:
    message = event.message
    return (
        message.topic, message.partition, message.offset, message.key, message.value,
        message.timestamp,
    )


def _lag_meter(app: faust.App, runtime: WorkerRuntime) -> Any:
    async def measure_consumer_lag() -> None:
        """Refresh ``consumer_lag`` for the partitions assigned to this worker right now."""
        assigned = sorted(app.consumer.assignment())
        try:
            ends = await app.consumer.highwaters(*assigned)
        except Exception as exc:
            log.debug("consumer_lag not refreshed: %r", exc)
            return
        lag: dict[tuple[str, int], int] = {}
        for tp in assigned:
            position = runtime.next_offsets.get((tp.topic, tp.partition))
            if position is None:
                position = await app.consumer.position(tp)
            if ends.get(tp) is not None and position is not None:
                lag[(tp.topic, tp.partition)] = max(0, ends[tp] - position)
        runtime.consumer_lag = lag

    return measure_consumer_lag


def _open_dead_letters(runtime: WorkerRuntime) -> Any:
    async def count() -> None:
        """Refresh ``dead_letters_open`` from ops.dead_letters (not while PostgreSQL is down)."""
        try:
            await runtime.ready()
            runtime.metrics.dead_letters_open.set(await runtime.store.open_dead_letters())
        except Exception as exc:
            log.debug("dead_letters_open not refreshed: %s", exc)

    return count


def _partitions(settings: Settings) -> Any:
    async def maintain() -> None:
        """Keep the months ahead partitioned while the worker runs for months on end."""
        try:
            await maintain_partitions(settings)
        except Exception as exc:
            log.warning("ops partitions not maintained this time: %r", exc)

    return maintain


async def maintain_partitions(settings: Settings) -> None:
    """Create the monthly partitions of the ops tables ahead and drop expired ones; log both."""
    done = await asyncio.to_thread(
        maintain, settings.database_url, retention_months=settings.event_log_retention_months
    )
    if done is not None and (done.created or done.dropped):
        log.info(
            "ops partitions: created %s; dropped %s",
            ", ".join(done.created) or "none", ", ".join(done.dropped) or "none",
        )



def _abandoned_dead_letters(runtime: WorkerRuntime) -> Any:
    async def publish() -> None:
        """Produce the dead letters a worker recorded and died before producing."""
        try:
            await runtime.ready()
            published = await runtime.store.publish_abandoned(
                runtime.publish_dead_letter, _ABANDONED_AFTER
            )
        except Exception as exc:
            log.warning("dead letters a stopped worker recorded not produced yet: %r", exc)
        else:
            if published:
                log.info("produced %d dead letter(s) a stopped worker had recorded", published)

    return publish


async def _halt(app: faust.App, agent: str, exc: BaseException) -> None:
    log.critical(
        "agent %s cannot settle its batch and stops the worker; the batch stays "
        "unacknowledged and is consumed again after a restart: %r", agent, exc, exc_info=exc,
    )
    await app.crash(exc)
