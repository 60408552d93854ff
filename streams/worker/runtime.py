"""What the worker's agents share: the handlers, the store, the producer, metrics and positions."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from mode import Service

from projections.metrics import WorkerMetrics
from projections.store import ProjectionStore
from streams.handlers.registry import HandlerRegistry, load_handlers
from streams.log.codec import encode_dead_letter
from streams.log.envelope import DeadLetter
from streams.log.routing import FAMILIES
from streams.log.topics import DEAD_LETTER_SUFFIX, MAX_MESSAGE_BYTES
from streams.settings import Settings
from streams.worker.batching import Delivery
from streams.worker.breaker import BreakerPolicy, DeadLetterBreaker
from streams.worker.settling import BatchSettler, RetryPolicy, patiently


def new_producer(settings: Settings) -> AIOKafkaProducer:
    """An idempotent producer (``acks=all``) for forwarded events, dead letters and retries."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        # aiokafka's 16 KiB batches hold four typical events; the router forwards hundreds to
        # each partition at a time.
        max_batch_size=512 * 1024,
        # The largest event the gateway accepts must pass the router unchanged.
        max_request_size=MAX_MESSAGE_BYTES,
    )


async def send_dead_letter(
    producer: AIOKafkaProducer, settings: Settings, letter: DeadLetter
) -> None:
    """Produce a dead letter to ``<prefix>.events.dlq`` and wait for Kafka's acknowledgement."""
    sent = await producer.send(
        settings.topic(DEAD_LETTER_SUFFIX), encode_dead_letter(letter), key=letter.event.key
    )
    await sent


class WorkerRuntime(Service):
    """The handler registry, metrics, the projections' store, the Kafka producer and breaker.

    The store and the producer open as the runtime starts, or on first use if an agent gets
    partitions before that; both close when the app stops.
    """

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.registry: HandlerRegistry = load_handlers()
        self.metrics = WorkerMetrics()
        # One connection per family agent and one for dead letters and timers, all opened at
        # once: no agent waits, not even for its first connection.
        self.store = ProjectionStore(settings, self.registry, connections=len(FAMILIES) + 1)
        self.retry = RetryPolicy.from_settings(settings)
        self.breaker = DeadLetterBreaker(
            BreakerPolicy.from_settings(settings), self.store, retry=self.retry,
            metrics=self.metrics,
        )
        self.next_offsets: dict[tuple[str, int], int] = {}
        self.consumer_lag: dict[tuple[str, int], int] = {}
        self.metrics.track_consumer_lag(lambda: self.consumer_lag)
        self._producer: AIOKafkaProducer | None = None
        self._opening = asyncio.Lock()

    @Service.task
    async def _open_early(self) -> None:
        """Open the store and start the producer as the worker starts, before the first batch."""
        await self.ready()

    async def ready(self) -> None:
        """Open the store and start the producer unless done already."""
        async with self._opening:
            if self._producer is None:
                await self.store.open()
                producer = new_producer(self.settings)
                await patiently(producer.start, self.retry, "starting the producer")
                self._producer = producer

    @property
    def producer(self) -> AIOKafkaProducer:
        """The idempotent producer (``acks=all``) that forwards events and dead letters."""
        if self._producer is None:
            raise RuntimeError("WorkerRuntime.ready() was not awaited")
        return self._producer

    async def on_stop(self) -> None:
        """Flush and stop the producer, then close the store."""
        if self._producer is not None:
            await self._producer.stop()
        await self.store.close()

    def settled(self, events: Sequence[Delivery]) -> None:
        """Remember the next offset per partition, for the consumer lag."""
        for event in events:
            message = event.message
            key = (message.topic, message.partition)
            self.next_offsets[key] = max(self.next_offsets.get(key, 0), message.offset + 1)

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        """Produce a dead letter to ``<prefix>.events.dlq`` and wait for Kafka's acknowledgement."""
        await self.ready()
        await send_dead_letter(self.producer, self.settings, letter)

    def settler(self, family: str, *, projection: str | None) -> BatchSettler:
        """The settler of one family's batches (or of the router's: no projection, no breaker)."""

        def handler_of(event_type: str) -> str:
            registered = self.registry.lookup(event_type)
            return registered.name if registered else f"{family}.unhandled"

        return BatchSettler(
            family,
            store=self.store,
            projection=projection,
            publish=self.publish_dead_letter,
            handler_of=handler_of,
            retry=self.retry,
            breaker=self.breaker if projection is not None else None,
        )
