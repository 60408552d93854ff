"""The worker's Kafka consumer, as Faust builds it through the project's transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

from faust.types import TP, EventT, Message, StreamT

from streams.settings import Settings
from streams.worker.app import create_app
from streams.worker.sensor import LivenessMonitor
from streams.worker.transport import FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES, DeliveryBudget

SETTINGS = Settings.from_env({"STRIPE_STREAMS_TOPIC_PREFIX": "unit"})
FAUST_FETCH_MAX_WAIT_MS = 1500


async def test_the_worker_consumer_holds_an_empty_fetch_briefly() -> None:
    """A fetch of caught-up family topics must not hold back records waiting in the log.

    Faust's own 1.5 s long-poll halved the throughput of a backlog and delayed quiet events.
    """
    app = create_app(SETTINGS)
    consumer = app.consumer._thread._create_worker_consumer(app.transport)

    assert consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS
    assert FETCH_MAX_WAIT_MS <= FAUST_FETCH_MAX_WAIT_MS / 10


async def test_the_worker_consumer_waits_for_a_worthwhile_fetch() -> None:
    """One byte, aiokafka's default, made the worker fetch a handful of records at a time."""
    app = create_app(SETTINGS)
    consumer = app.consumer._thread._create_worker_consumer(app.transport)

    assert consumer._fetch_min_bytes == FETCH_MIN_BYTES >= 16 * 1024


class Fetches:
    """Stands in for the consumer's fetches: each call to getmany yields one batch of records."""

    def __init__(self, *batches: list[tuple[TP, Message]]) -> None:
        self.batches = list(batches)

    async def getmany(self, **options: float) -> AsyncIterator[tuple[TP, Message]]:
        for item in self.batches.pop(0):
            yield item


def _messages(topic: str, partition: int, offsets: range) -> list[tuple[TP, Message]]:
    tp = TP(topic, partition)
    return [
        (tp, Message(topic, partition, offset, 0.0, 0, [], b"k", b"v", None, tp=tp))
        for offset in offsets
    ]


class Fetcher:
    """The fetcher service the drain loop watches: it stops once every fetch is consumed."""

    def __init__(self, fetches: Fetches) -> None:
        self.fetches = fetches

    @property
    def should_stop(self) -> bool:
        return not self.fetches.batches


async def test_the_consumer_delivers_every_fetched_message_in_order() -> None:
    consumer = create_app(SETTINGS).consumer
    fetches = Fetches(_messages("unit.events", 0, range(0, 250)),
                      _messages("unit.events", 0, range(250, 260)))
    delivered: list[int] = []

    async def deliver(message: Message) -> None:
        delivered.append(message.offset)

    consumer.callback = deliver
    consumer.getmany = fetches.getmany  # type: ignore[method-assign]
    await asyncio.wait_for(consumer._drain_messages(Fetcher(fetches)), timeout=5)

    assert delivered == list(range(260))
    assert consumer._read_offset[TP("unit.events", 0)] == 259


async def test_a_delivery_stuck_when_the_flow_is_suspended_is_abandoned() -> None:
    """A rebalance suspends the flow: the fetch being delivered is dropped, the loop goes on.

    Faust seeks back to the committed offsets afterwards, so the dropped messages come again.
    """
    consumer = create_app(SETTINGS).consumer
    fetches = Fetches(_messages("unit.events", 0, range(0, 3)),
                      _messages("unit.events", 1, range(0, 2)))
    delivered: list[tuple[int, int]] = []
    stuck = asyncio.Event()

    async def deliver(message: Message) -> None:
        if message.partition == 0 and message.offset == 1:
            stuck.set()
            await asyncio.Event().wait()
        delivered.append((message.partition, message.offset))

    async def rebalance() -> None:
        await stuck.wait()
        consumer.stop_flow()
        await asyncio.sleep(0.01)
        consumer.resume_flow()

    consumer.callback = deliver
    consumer.getmany = fetches.getmany  # type: ignore[method-assign]
    await asyncio.wait_for(
        asyncio.gather(consumer._drain_messages(Fetcher(fetches)), rebalance()), timeout=5
    )

    assert delivered == [(0, 0), (1, 0), (1, 1)]
    assert consumer._read_offset[TP("unit.events", 0)] == 0


def test_the_worker_still_tells_faust_when_a_stream_last_took_an_event() -> None:
    """Faust warns of a stalled stream from this time; the per-message statistics are gone."""
    app = create_app(SETTINGS)
    tp = TP("unit.events", 3)
    message = _messages("unit.events", 3, range(7, 8))[0][1]

    app.monitor.on_message_in(tp, 7, message)
    app.monitor.on_stream_event_in(tp, 7, cast(StreamT, None), cast(EventT, None))

    assert isinstance(app.monitor, LivenessMonitor)
    assert app.monitor.stream_inbound_time[tp] > 0
    assert app.monitor.messages_received_total == 0


async def test_the_delivery_budget_holds_back_a_message_until_acknowledgements_free_room() -> None:
    budget = DeliveryBudget(limit=100)
    tp = TP("unit.events", 0)
    await budget.take(tp, 0, 60)
    waiting = asyncio.ensure_future(budget.take(tp, 1, 60))
    await asyncio.sleep(0.01)
    assert not waiting.done()

    budget.release(tp, 0)
    await asyncio.wait_for(waiting, 1)

    assert budget.held == 60


async def test_the_delivery_budget_lets_one_message_larger_than_itself_through() -> None:
    budget = DeliveryBudget(limit=100)
    tp = TP("unit.events", 0)

    await asyncio.wait_for(budget.take(tp, 0, 1000), 1)
    blocked = asyncio.ensure_future(budget.take(tp, 1, 1))
    await asyncio.sleep(0.01)

    assert not blocked.done()
    budget.reset()
    await asyncio.wait_for(blocked, 1)
    assert budget.held == 1


async def test_an_acknowledgement_frees_every_earlier_message_of_its_partition_only() -> None:
    budget = DeliveryBudget(limit=1000)
    first, second = TP("unit.events", 0), TP("unit.events", 1)
    for offset in range(3):
        await budget.take(first, offset, 10)
    await budget.take(second, 0, 10)

    budget.release(first, 1)

    assert budget.held == 20
