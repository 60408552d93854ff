"""The gateway's way into the log: an idempotent ``acks=all`` producer with a bounded wait.

:meth:`EventLog.append` returns only once every in-sync replica has the event, so a webhook can be
answered 200 right after it; when Kafka does not acknowledge within the produce timeout it raises
the retriable :class:`LogUnavailable` and the sender (Stripe) delivers again later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from streams.errors import DependencyUnavailable, StreamsError
from streams.log.topics import MAX_MESSAGE_BYTES, Replication, Retention, ensure_topics
from streams.outages import KAFKA, outages
from streams.settings import Settings


class LogUnavailable(DependencyUnavailable):
    """Kafka did not acknowledge the event in time; delivering it again later will work."""


class EventTooLarge(StreamsError):
    """Kafka refuses the event for its size; delivering it again cannot help."""


class EventAppender(Protocol):
    """Where the gateway appends verified events (Kafka in production)."""

    async def append(self, key: bytes, message: bytes) -> None:
        """Return once the encoded event is durably in the log; raise LogUnavailable otherwise."""

    async def reachable(self) -> bool:
        """Tell whether the log answers right now."""


class EventLog:
    """Appends encoded envelopes to ``<prefix>.events``, keyed by object id, idempotently."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic()
        self._settings = settings
        self._timeout = settings.produce_timeout
        self._producer: AIOKafkaProducer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Ensure the topic and its retention, then connect; raise when Kafka cannot be reached."""
        settings = self._settings
        await ensure_topics(
            settings.kafka_bootstrap_servers, [self.topic], settings.topic_partitions,
            replication=Replication(settings.replication_factor, settings.min_insync_replicas),
            retention=Retention(settings.log_retention_ms, settings.family_retention_ms),
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id="stripe-streams-gateway",
            acks="all",
            enable_idempotence=True,
            linger_ms=settings.producer_linger_ms,
            max_batch_size=settings.producer_batch_bytes,
            compression_type=settings.producer_compression,
            max_request_size=MAX_MESSAGE_BYTES,
            # Batches still queued when the gateway has answered 503 expire about then too.
            request_timeout_ms=max(1000, int(self._timeout * 1000)),
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise LogUnavailable(
                f"Kafka at {settings.kafka_bootstrap_servers} is unreachable: {exc!r}"
            ) from exc
        self._producer, self._loop = producer, asyncio.get_running_loop()

    async def stop(self) -> None:
        """Deliver every event still buffered, then disconnect."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def append(self, key: bytes, message: bytes) -> None:
        """Append one encoded envelope and wait for Kafka's acknowledgement, at most the timeout."""
        await self.append_all([(key, message)])

    async def append_all(self, messages: Sequence[tuple[bytes, bytes]]) -> None:
        """Append ``(key, encoded envelope)`` pairs in order; return once Kafka acknowledged all.

        Each is queued before the next, so events of one partition keep their order; queueing
        waits at most the producer's request timeout, which is the produce timeout, and the
        acknowledgements are awaited until the produce timeout after the call, by a timer on the
        loop captured at start, as ``asyncio.timeout`` costs a getpid() call per use on Python
        3.11.
        """
        producer, loop = self._producer, self._loop
        if producer is None or loop is None:
            raise LogUnavailable("the producer is not running")
        deadline = loop.time() + self._timeout
        try:
            deliveries = [
                await producer.send(self.topic, message, key=key) for key, message in messages
            ]
            for delivery in deliveries:
                if not delivery.done():
                    await _until_done(loop, delivery, deadline)
                if not delivery.done():
                    raise LogUnavailable(f"Kafka did not acknowledge within {self._timeout:g} s")
                delivery.result()
        except MessageSizeTooLargeError as exc:
            largest = max(len(message) for _, message in messages)
            raise EventTooLarge(f"Kafka refuses an event of {largest} bytes") from exc
        except KafkaError as exc:
            raise LogUnavailable(f"Kafka did not take the event: {exc!r}") from exc

    async def reachable(self) -> bool:
        """Ask the cluster for its metadata, within the produce timeout.

        A failure starts or continues an outage of the process's outage log, which says since
        when and why Kafka is missing; an answer ends it.
        """
        if self._producer is None:
            return False
        try:
            async with asyncio.timeout(self._timeout):
                await self._producer.client.fetch_all_metadata()
        except (TimeoutError, KafkaError, OSError) as exc:
            outages.failed(KAFKA, exc)
            return False
        outages.recovered(KAFKA)
        return True


async def _until_done(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[object], deadline: float
) -> None:
    """Wait until ``future`` is done or the loop's clock reaches ``deadline``."""
    waiter = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    future.add_done_callback(wake)
    timer = loop.call_at(deadline, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        future.remove_done_callback(wake)
