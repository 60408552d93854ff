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
"""

from __future__ import annotations

import asyncio
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


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, building its worker consumer with the project's fetch sizes."""

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads these when the consumer starts and builds its fetcher; no setters.
        for name, value in (
            ("_fetch_max_wait_ms", FETCH_MAX_WAIT_MS), ("_fetch_min_bytes", FETCH_MIN_BYTES)
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

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

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
                    await callback(message)
                    read_offsets[tp] = message.offset
                delivered += 1
                if delivered % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                item = await anext(fetched, None)
        finally:
            await fetched.aclose()


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`Consumer`; set as ``app.transport``."""

    Consumer = Consumer
