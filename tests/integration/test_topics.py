"""`ensure_topics` on a real broker: topics are served once it returns; refusals are immediate."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.metadata import MetadataRequest

from streams.errors import ConfigurationError
from streams.log.topics import ensure_topics, worker_topics

pytestmark = pytest.mark.integration

PARTITIONS = 6


async def create_elsewhere(bootstrap: str, names: list[str]) -> None:
    """Create the topics as another pipeline starting at the same time does."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        await admin.create_topics([NewTopic(name, PARTITIONS, 1) for name in names])
    finally:
        await admin.close()


async def led_partitions(bootstrap: str, names: list[str]) -> dict[str, list[int]]:
    """The partitions with a leader of each topic, as a client connecting now sees them."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    try:
        await client.bootstrap()
        request = MetadataRequest(names, allow_auto_topic_creation=False)
        response = await client.send(client.get_random_node(), request)
    finally:
        await client.close()
    return {
        topic["topic"]: sorted(p["partition"] for p in topic["partitions"] if p["leader"] >= 0)
        for topic in response.to_object()["topics"]
    }


def pipeline_topics(prefix: str) -> list[str]:
    return worker_topics(prefix)


@pytest.mark.parametrize("head_start", [False, True], ids=["being-created", "just-created"])
async def test_topics_are_served_once_ensure_topics_returns_while_other_pipelines_start(
    kafka_bootstrap: str, topic_prefix: str, head_start: bool
) -> None:
    """A worker that joined its group before its topics were served ignored them for minutes.

    Other pipelines starting at once keep the broker busy bringing up their partitions, so the
    broker serves topics a while after Kafka has acknowledged their creation.
    """
    others = [pipeline_topics(f"{topic_prefix}.p{n}") for n in range(3)]
    await asyncio.gather(*(create_elsewhere(kafka_bootstrap, names) for names in others))
    names = pipeline_topics(topic_prefix)
    elsewhere = asyncio.create_task(create_elsewhere(kafka_bootstrap, names))
    if head_start:
        await elsewhere

    await ensure_topics(kafka_bootstrap, names, PARTITIONS)
    seen = await led_partitions(kafka_bootstrap, names)

    await elsewhere
    assert seen == {name: list(range(PARTITIONS)) for name in names}


async def test_a_replication_factor_beyond_the_brokers_is_refused_at_once(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}.events"
    started = time.monotonic()

    with pytest.raises(
        ConfigurationError,
        match=rf"topic {re.escape(topic)} \(InvalidReplicationFactorError: .*\); ask for at most",
    ):
        await ensure_topics(kafka_bootstrap, [topic], partitions=1, replication=100)

    assert time.monotonic() - started < 5
    assert await led_partitions(kafka_bootstrap, [topic]) == {topic: []}
