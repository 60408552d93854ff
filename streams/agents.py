"""The worker's agents: the router and one projecting agent per family.

Each agent takes a batch (up to N events or T ms, per family), settles every event of it, and
only then acknowledges the batch to Faust, whose commits therefore never pass an event that is
not settled. Settled means forwarded and acknowledged by Kafka (router) or committed to
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
from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import Any, cast

import faust
from aiokafka import AIOKafkaProducer
from faust import Stream
from faust.types import EventT, Message
from mode import Service

from projections.database import connection, create_pool
from projections.metrics import WorkerMetrics
from projections.writer import (
    AppliedEvent,
    ConsumedEvent,
    apply_batch,
    count_open_dead_letters,
    record_dead_letter,
)
from streams.codec import MARKER, DeadLetter, decode_event, encode_dead_letter, schemas
from streams.dead_letters import DeadLetterPolicy, RetryPolicy, patiently
from streams.errors import CodecError, InvalidEvent
from streams.forwarding import forward
from streams.handlers.registry import HandlerRegistry, load_handlers
from streams.routing import FAMILIES, OTHER, route_event
from streams.settings import Settings
from streams.topics import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)
Delivery = EventT[bytes]
"""A message as Faust delivers it to an agent: raw key and value, with its coordinates."""
ROUTER = "router"
DEAD_LETTER_SUFFIX = "dlq"
_LAG_INTERVAL = 5.0
_OPEN_DEAD_LETTERS_INTERVAL = 15.0


class WorkerRuntime(Service):
    """What the agents share: the handler registry, metrics, PostgreSQL pool and Kafka producer.

    The pool and the producer open as the runtime starts, or on first use if an agent gets
    partitions before that; both close when the app stops.
    """

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.registry: HandlerRegistry = load_handlers()
        self.metrics = WorkerMetrics()
        # One connection per family agent and one for dead letters and timers, all opened at
        # once: no agent waits, not even for its first connection.
        connections = len(FAMILIES) + 1
        self.pool = create_pool(settings, min_size=connections, max_size=connections)
        self.retry = RetryPolicy.from_settings(settings)
        self.next_offsets: dict[tuple[str, int], int] = {}
        self.consumer_lag: dict[tuple[str, int], int] = {}
        self.metrics.track_consumer_lag(lambda: self.consumer_lag)
        self._producer: AIOKafkaProducer | None = None
        self._opening = asyncio.Lock()

    @Service.task
    async def _open_early(self) -> None:
        """Open the pool and start the producer as the worker starts, before the first batch."""
        await self.ready()

    async def ready(self) -> None:
        """Open the pool and start the producer unless done already."""
        async with self._opening:
            if self._producer is None:
                await self.pool.open(wait=False)
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.settings.kafka_bootstrap_servers,
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=2,
                    # aiokafka's 16 KiB batches hold four typical events; the router forwards
                    # hundreds to each partition at a time.
                    max_batch_size=512 * 1024,
                    # The largest event the gateway accepts must pass the router unchanged.
                    max_request_size=MAX_MESSAGE_BYTES,
                )
                await patiently(producer.start, self.retry, "starting the producer")
                self._producer = producer

    @property
    def producer(self) -> AIOKafkaProducer:
        """The idempotent producer (``acks=all``) that forwards events and dead letters."""
        if self._producer is None:
            raise RuntimeError("WorkerRuntime.ready() was not awaited")
        return self._producer

    async def on_stop(self) -> None:
        """Flush and stop the producer, then close the pool."""
        if self._producer is not None:
            await self._producer.stop()
        await self.pool.close()

    def settled(self, events: Sequence[Delivery]) -> None:
        """Remember the next offset per partition, for the consumer lag."""
        for event in events:
            message = event.message
            key = (message.topic, message.partition)
            self.next_offsets[key] = max(self.next_offsets.get(key, 0), message.offset + 1)

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        """Produce a dead letter to ``<prefix>.events.dlq`` and wait for Kafka's acknowledgement."""
        await self.ready()
        sent = await self.producer.send(
            self.settings.topic(DEAD_LETTER_SUFFIX),
            encode_dead_letter(letter),
            key=letter.event.key,
        )
        await sent

    def policy(self, family: str, *, projection: str | None) -> DeadLetterPolicy:
        """The retry and dead-letter policy of one family (or of the router: no projection)."""

        async def apply(events: Sequence[ConsumedEvent], attempts: int) -> list[AppliedEvent]:
            async with connection(self.pool) as conn:
                return await apply_batch(
                    conn, family, events, self.registry, attempts=attempts
                )

        async def record(event: ConsumedEvent, letter: DeadLetter) -> bool:
            async with connection(self.pool) as conn:
                return await record_dead_letter(
                    conn, family, event, letter, projection=projection
                )

        def handler_of(event_type: str) -> str:
            registered = self.registry.lookup(event_type)
            return registered.name if registered else f"{family}.unhandled"

        return DeadLetterPolicy(
            family,
            apply=apply,
            publish=self.publish_dead_letter,
            record=record,
            handler_of=handler_of,
            retry=self.retry,
        )


def register_agents(app: faust.App, settings: Settings, runtime: WorkerRuntime) -> None:
    """Register the router, the family agents and the metric timers on ``app``."""
    source = app.topic(settings.topic(), key_serializer="raw", value_serializer="raw")
    app.agent(source, name=ROUTER, concurrency=1)(_router(app, settings, runtime))
    for family in FAMILIES:
        topic = app.topic(settings.topic(family), key_serializer="raw", value_serializer="raw")
        app.agent(topic, name=f"project_{family}", concurrency=1)(
            _projector(app, settings, runtime, family)
        )
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


def _router(app: faust.App, settings: Settings, runtime: WorkerRuntime) -> Any:
    policy = runtime.policy(OTHER, projection=None)
    size, within = settings.batch_size, settings.router_batch_timeout_ms / 1000

    async def settle(events: Sequence[Delivery]) -> None:
        routed: list[tuple[str, Message]] = []
        for event in events:
            try:
                event_type = event_type_of(event.message.value or b"")
            except CodecError as exc:
                await policy.dead_letter_undecodable(*_source_of(event), exc)
            else:
                routed.append((settings.topic(route_event(event_type)), event.message))
        await patiently(
            partial(forward, runtime.producer, settings.topic(), routed),
            runtime.retry, "forwarding events",
        )

    async def route(stream: Stream[bytes]) -> None:
        async for events in _batches(stream, size, settings.batch_bytes, within):
            try:
                await runtime.ready()
                await settle(events)
            except Exception as exc:
                await _halt(app, ROUTER, exc)
                return
            for event in events:
                await stream.ack(event)
            runtime.settled(events)

    return route


def _projector(
    app: faust.App, settings: Settings, runtime: WorkerRuntime, family: str
) -> Any:
    policy = runtime.policy(family, projection=family)
    size, within = settings.batch_size_for(family), settings.batch_timeout_for(family)

    async def settle(events: Sequence[Delivery]) -> list[AppliedEvent]:
        """Apply the batch in log order, dead-lettering in place messages that are no event."""
        applied: list[AppliedEvent] = []
        run: list[ConsumedEvent] = []
        for event, decoded in _decode(events):
            if isinstance(decoded, ConsumedEvent):
                run.append(decoded)
                continue
            applied.extend(await policy.apply(run))
            run = []
            if isinstance(decoded, CodecError):
                applied.append(await policy.dead_letter_undecodable(*_source_of(event), decoded))
            else:
                applied.append(await policy.dead_letter_invalid(*decoded))
        applied.extend(await policy.apply(run))
        return applied

    async def project(stream: Stream[bytes]) -> None:
        async for events in _batches(stream, size, settings.batch_bytes, within):
            try:
                await runtime.ready()
                applied = await settle(events)
            except Exception as exc:
                await _halt(app, family, exc)
                return
            for event in events:
                await stream.ack(event)
            runtime.settled(events)
            runtime.metrics.observe_batch(family, applied)

    return project


async def _batches(
    stream: Stream[bytes], size: int, max_bytes: int, within: float
) -> AsyncIterator[Sequence[Delivery]]:
    """Batches of up to ``size`` deliveries, ``max_bytes`` of messages or ``within`` seconds.

    Like Faust's ``noack_take``, bounded by bytes as well (a batch ends with the message that
    reaches ``max_bytes``): the caller acknowledges each batch once it is settled. The next
    batch fills while the caller settles one, so at most two batches per agent are held.
    """
    pending: list[Delivery] = []
    held = 0
    full = asyncio.Event()
    room = asyncio.Event()
    room.set()

    async def collect(value: bytes) -> bytes:
        nonlocal held
        # Faust sets the delivery being processed before it runs the stream's processors.
        delivery = cast(Delivery, stream.current_event)
        pending.append(delivery)
        held += len(delivery.message.value or b"")
        if len(pending) >= size or held >= max_bytes:
            full.set()
            room.clear()
            await stream.wait(cast(Any, room))
        return value

    stream.enable_acks = False
    stream.add_processor(collect)
    # Iterating the stream in the background runs ``collect`` on every delivery, as noack_take
    # does (through the same private hook).
    stream._enable_passive(cast(Any, aiter(stream.channel)))
    while not stream.should_stop:
        await stream.wait_for_stopped(cast(Any, full), timeout=within)
        if pending:
            batch = pending[:]
            pending.clear()
            held = 0
            full.clear()
            room.set()
            yield batch


def event_type_of(message: bytes) -> str:
    """Read the event type of an encoded envelope without decoding the rest of it.

    The router only needs the type, and a full decode (the raw event JSON included) is most of
    its cost; a message whose header or first fields are wrong raises CodecError like a full
    decode would, and the family agent decodes the rest.
    """
    header = MARKER + schemas()["StripeEvent"].fingerprint
    if not message.startswith(header):
        return decode_event(message).type
    position = len(header)
    try:
        for field in ("id", "type"):
            length, position = _varint(message, position)
            if length < 0 or position + length > len(message):
                raise CodecError(f"StripeEvent {field} runs past the end of the message")
            if field == "type":
                return message[position : position + length].decode("utf-8")
            position += length
    except (IndexError, UnicodeDecodeError) as exc:
        raise CodecError(f"truncated or corrupt StripeEvent message: {exc!r}") from None
    raise CodecError("StripeEvent message has no type")


def _varint(message: bytes, position: int) -> tuple[int, int]:
    """Decode an Avro long (zig-zag varint) at ``position``; return it and the next position."""
    shift = result = 0
    while True:
        byte = message[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), position
        shift += 7


Decoded = ConsumedEvent | CodecError | tuple[ConsumedEvent, InvalidEvent]
"""An event ready to apply, a message that does not decode, or an envelope nothing can store."""


def _decode(events: Sequence[Delivery]) -> list[tuple[Delivery, Decoded]]:
    """Each Faust event with its decoded envelope and coordinates, or why it is no event."""
    decoded: list[tuple[Delivery, Decoded]] = []
    for event in events:
        message = event.message
        try:
            envelope = decode_event(message.value or b"")
        except CodecError as exc:
            decoded.append((event, exc))
            continue
        consumed = ConsumedEvent(envelope, message.topic, message.partition, message.offset)
        try:
            # The log may hold envelopes appended before the gateway refused them.
            envelope.check()
        except InvalidEvent as exc:
            decoded.append((event, (consumed, exc)))
        else:
            decoded.append((event, consumed))
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
            async with connection(runtime.pool) as conn:
                runtime.metrics.dead_letters_open.set(await count_open_dead_letters(conn))
        except Exception as exc:
            log.debug("dead_letters_open not refreshed: %s", exc)

    return count


async def _halt(app: faust.App, agent: str, exc: BaseException) -> None:
    log.critical(
        "agent %s cannot settle its batch and stops the worker; the batch stays "
        "unacknowledged and is consumed again after a restart: %r", agent, exc, exc_info=exc,
    )
    await app.crash(exc)
