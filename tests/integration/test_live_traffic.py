"""What a replay or a rebuild waits for: the events the workers have not processed yet, in the
log (beyond their group's committed offsets) and in the family topics."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from projections.database import create_pool
from streams.devtools.samples import EventFactory
from streams.jobs.yielding import LiveTraffic
from streams.settings import Settings
from tests.integration.test_projection_ordering import envelope_of
from tests.integration.worker_support import prepare_topics, produce

pytestmark = pytest.mark.integration


async def commit(settings: Settings, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for the workers' group, as their routers do."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=settings.group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
    finally:
        await consumer.stop()


async def backlog(settings: Settings) -> tuple[int, int]:
    async with create_pool(settings, min_size=1, max_size=1) as pool, \
            LiveTraffic(settings, pool) as live:
        return await live.backlog()


async def ends(settings: Settings, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


def test_the_routers_backlog_in_the_log_counts_and_their_commits_are_progress(
    settings: Settings,
) -> None:
    prepare_topics(settings)
    factory = EventFactory(seed=4)
    events = [envelope_of(e) for _ in range(5) for e in factory.customer_lifecycle(periods=1)]
    log = [TopicPartition(settings.topic(), p) for p in range(settings.topic_partitions)]
    asyncio.run(commit(settings, dict.fromkeys(log, 0)))
    asyncio.run(produce(settings, events))

    behind, progress = asyncio.run(backlog(settings))

    assert (behind, progress) == (len(events), 0)

    asyncio.run(commit(settings, asyncio.run(ends(settings, log))))

    assert asyncio.run(backlog(settings)) == (0, len(events))
