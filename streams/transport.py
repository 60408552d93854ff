"""Faust's aiokafka transport with the consumer's fetch long-poll bounded.

Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500``. aiokafka keeps one fetch
request in flight per broker and leaves out of it every partition whose records are still
being delivered, so when the worker's own family topics are caught up the request holds only
them and the broker parks it for up to 1.5 s while ``stripe.events`` has records waiting:
measured, a pre-loaded log went through at half the rate and low-rate events waited for the
next fetch. A short long-poll costs an idle worker a few empty fetches a second.
"""

from __future__ import annotations

from typing import Any

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka

FETCH_MAX_WAIT_MS = 50
"""The longest the broker holds a fetch that has no records yet, milliseconds."""


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, building its worker consumer with the bounded long-poll."""

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when the consumer starts and builds its fetcher; it has no setter.
        if not hasattr(consumer, "_fetch_max_wait_ms"):
            raise RuntimeError("this aiokafka consumer does not keep _fetch_max_wait_ms")
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer running :class:`ConsumerThread`."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`Consumer`; set as ``app.transport``."""

    Consumer = Consumer
