"""Faust's aiokafka transport with a bounded fetch long-poll and a leaner delivery loop.

Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500``. aiokafka keeps one fetch
request in flight per broker and leaves out of it every partition whose records are still
being delivered, so when the worker's own family topics are caught up the request holds only
them and the broker parks it for up to 1.5 s while ``stripe.events`` has records waiting:
measured, a pre-loaded log went through at half the rate and low-rate events waited for the
next fetch. A short long-poll costs an idle worker a few empty fetches a second.

The broker, on the other hand, answers a fetch as soon as it holds one byte, so at a few
thousand events a second the worker fetched a handful of records at a time: waiting for 32 KiB
(a few milliseconds at that rate, never more than the long-poll) took 15 % off its CPU.

Faust's consumer also races four tasks (the delivery, a suspended flow, a stop, a crash) for
every message it hands to the streams: measured, 40 % of the CPU of an agent that only takes
and acknowledges. :meth:`Consumer._drain_messages` runs that race once per fetch instead.

Faust bounds what it holds ahead of the agents by message counts, so a backlog of large events
took gigabytes. :class:`DeliveryBudget` bounds it by bytes: a message is handed to the streams
only while the bytes handed over and not yet acknowledged stay within the budget.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import AsyncGenerator
from typing import Any, cast

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from mode import ServiceT

FETCH_MAX_WAIT_MS = 50
"""The longest the broker holds a fetch that has fewer than FETCH_MIN_BYTES, milliseconds."""
FETCH_MIN_BYTES = 32 * 1024
"""How much a fetch waits for before the long-poll runs out, bytes."""
FETCH_MAX_BYTES = 8 * 1024 * 1024
"""Most bytes one fetch returns over all partitions (aiokafka's default is 50 MiB)."""


class DeliveryBudget:
    """Bytes of messages handed to the streams and not yet acknowledged, kept under a limit.

    Agents acknowledge each partition's messages in offset order, so an acknowledgement frees
    every message of its partition up to its offset. One message is always let through when
    nothing is held, however large, so no message can stall the worker.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._by_partition: defaultdict[TP, deque[tuple[int, int]]] = defaultdict(deque)
        self._freed = asyncio.Event()

    async def take(self, tp: TP, offset: int, size: int) -> None:
        """Wait until ``size`` more bytes fit, then hold them for the message at ``offset``."""
        while self.held and self.held + size > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.held += size
        self._by_partition[tp].append((offset, size))

    def release(self, tp: TP, offset: int) -> None:
        """Free the messages of ``tp`` up to ``offset``: they are acknowledged."""
        held = self._by_partition.get(tp)
        while held and held[0][0] <= offset:
            self.held -= held.popleft()[1]
        self._freed.set()

    def reset(self) -> None:
        """Forget every held message: a rebalance dropped what the streams had not taken."""
        self._by_partition.clear()
        self.held = 0
        self._freed.set()


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, building its worker consumer with the project's fetch sizes."""

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads these when the consumer starts and builds its fetcher; no setters.
        for name, value in (
            ("_fetch_max_wait_ms", FETCH_MAX_WAIT_MS),
            ("_fetch_min_bytes", FETCH_MIN_BYTES),
            ("_fetch_max_bytes", FETCH_MAX_BYTES),
        ):
            if not hasattr(consumer, name):
                raise RuntimeError(f"this aiokafka consumer does not keep {name}")
            setattr(consumer, name, value)
        return consumer


Fetched = AsyncGenerator[tuple[TP, Message], None]
YIELD_EVERY = 100
"""Messages delivered in a row before the loop lets other tasks run."""


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer running :class:`ConsumerThread` and a leaner delivery loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.budget = DeliveryBudget(cast(Transport, self.transport).buffer_bytes)

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def ack(self, message: Message) -> bool:
        """Acknowledge as Faust does, and free the message's bytes in the delivery budget."""
        acked = super().ack(message)
        self.budget.release(message.tp, message.offset)
        return acked

    def resume_flow(self) -> None:
        """Resume after a rebalance, which cleared what the streams held but had not taken."""
        self.budget.reset()
        super().resume_flow()

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        """Fetch records and deliver them to the streams until the consumer or fetcher stops.

        As in Faust, the fetch itself is never abandoned, and a delivery is abandoned when the
        flow is suspended (a rebalance), the consumer stops or crashes: the undelivered rest of
        that fetch is read again from the committed offsets, which never pass an unsettled event.
        A consumer stopped or cancelled while the app stops ends the loop quietly.
        """
        ending: tuple[type[BaseException], ...] = (
            asyncio.CancelledError, *self.consumer_stopped_errors
        )
        try:
            while not (self.should_stop or fetcher.should_stop):
                fetched = cast(Fetched, self.getmany(timeout=1.0))
                await self.sleep(0)
                if self.should_stop:
                    return
                first = await anext(fetched, None)
                if first is None:
                    continue
                delivering = asyncio.ensure_future(self._deliver(first, fetched))
                # Cancels the delivery when the flow is suspended or the consumer stops first.
                await self.wait_first(delivering, self.suspend_flow.wait())
        except ending:
            if not self.transport.app.should_stop:
                raise
            self.log.info("Consumer stopped while the app stops")

    async def _deliver(self, first: tuple[TP, Message], fetched: Fetched) -> None:
        """Hand each fetched message to the streams in order, as Faust's own loop does."""
        callback = self.callback
        read_offsets = self._read_offset
        budget = self.budget
        delivered = 0
        try:
            item: tuple[TP, Message] | None = first
            while item is not None:
                tp, message = item
                read = read_offsets.get(tp)
                if read is None or message.offset >= read:
                    if read and message.offset - read > 1 and self.app.topics.acks_enabled_for(
                        message.topic
                    ):
                        await self._add_gap(tp, read + 1, message.offset)
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
                    await budget.take(tp, message.offset, len(message.value or b""))
                    await callback(message)
                    read_offsets[tp] = message.offset
                delivered += 1
                if delivered % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                item = await anext(fetched, None)
        finally:
            await fetched.aclose()


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`Consumer`; set as ``app.transport``.

    ``buffer_bytes`` is the delivery budget of the worker's consumer.
    """

    Consumer = Consumer

    def __init__(self, *args: Any, buffer_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.buffer_bytes = buffer_bytes
