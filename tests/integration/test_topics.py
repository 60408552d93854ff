"""`ensure_topics` on a real broker: topics are served once it returns, with their retention;
refusals are immediate."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.metadata import MetadataRequest

from streams.errors import ConfigurationError
from streams.log.topics import (
    FOREVER,
    MAX_MESSAGE_BYTES,
    Replication,
    Retention,
    ensure_topics,
    worker_topics,
)
from streams.settings import Settings
from streams.worker.process import preflight

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
        match=rf"topic {re.escape(topic)} \(InvalidReplicationFactorError: .*\); set "
        r"STRIPE_STREAMS_REPLICATION_FACTOR to at most",
    ):
        await ensure_topics(kafka_bootstrap, [topic], partitions=1, replication=Replication(100))

    assert time.monotonic() - started < 5
    assert await led_partitions(kafka_bootstrap, [topic]) == {topic: []}


WEEK = 7 * 24 * 3600 * 1000
RETENTION = Retention(log_ms=FOREVER, family_ms=WEEK)


async def topic_configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    """The settings each topic has set on itself (not inherited from the broker)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    return {
        resource["resource_name"]: {
            entry["config_names"]: entry["config_value"]
            for entry in resource["config_entries"]
            if entry["config_source"] == 1
        }
        for resource in response.to_object()["resources"]
    }


def retentions(configs: dict[str, dict[str, str]]) -> dict[str, tuple[str | None, str | None]]:
    return {
        name: (held.get("retention.ms"), held.get("retention.bytes"))
        for name, held in configs.items()
    }


def expected_retentions(prefix: str, log: str, family: str) -> dict[str, Any]:
    """(retention.ms, retention.bytes) of each worker topic: the log's for the log and the DLQ."""
    kept_as_log = {f"{prefix}.events", f"{prefix}.events.dlq"}
    return {
        name: (log, "-1") if name in kept_as_log else (family, None)
        for name in worker_topics(prefix)
    }


@pytest.fixture
def alterations(monkeypatch: pytest.MonkeyPatch) -> list[list[ConfigResource]]:
    """The resources of every AlterConfigs request sent while the test runs."""
    sent: list[list[ConfigResource]] = []
    alter_configs = AIOKafkaAdminClient.alter_configs

    async def spy(admin: AIOKafkaAdminClient, resources: list[ConfigResource]) -> Any:
        sent.append(resources)
        return await alter_configs(admin, resources)

    monkeypatch.setattr(AIOKafkaAdminClient, "alter_configs", spy)
    return sent


async def test_new_topics_keep_the_log_and_dead_letters_forever_and_the_families_a_week(
    kafka_bootstrap: str, topic_prefix: str, alterations: list[list[ConfigResource]]
) -> None:
    names = worker_topics(topic_prefix)

    await ensure_topics(kafka_bootstrap, names, partitions=1, retention=RETENTION)

    configs = await topic_configs(kafka_bootstrap, names)
    assert retentions(configs) == expected_retentions(topic_prefix, "-1", str(WEEK))
    assert {held["max.message.bytes"] for held in configs.values()} == {str(MAX_MESSAGE_BYTES)}
    assert alterations == []


async def test_existing_topics_get_the_configured_retention_once_and_keep_their_settings(
    kafka_bootstrap: str, topic_prefix: str, alterations: list[list[ConfigResource]]
) -> None:
    names = worker_topics(topic_prefix)
    await ensure_topics(kafka_bootstrap, names, partitions=1)
    before = await topic_configs(kafka_bootstrap, names)
    assert retentions(before) == {name: (None, None) for name in names}
    hour = Retention(log_ms=3_600_000, family_ms=60_000)

    await ensure_topics(kafka_bootstrap, names, partitions=1, retention=hour)
    await ensure_topics(kafka_bootstrap, names, partitions=1, retention=hour)

    configs = await topic_configs(kafka_bootstrap, names)
    assert retentions(configs) == expected_retentions(topic_prefix, "3600000", "60000")
    assert {held["max.message.bytes"] for held in configs.values()} == {str(MAX_MESSAGE_BYTES)}
    assert [sorted(r.name for r in resources) for resources in alterations] == [sorted(names)]

    await ensure_topics(kafka_bootstrap, names, partitions=1, retention=RETENTION)

    configs = await topic_configs(kafka_bootstrap, names)
    assert retentions(configs) == expected_retentions(topic_prefix, "-1", str(WEEK))
    assert len(alterations) == 2


async def test_a_topic_created_elsewhere_with_another_retention_is_altered_alone(
    kafka_bootstrap: str, topic_prefix: str, alterations: list[list[ConfigResource]]
) -> None:
    names = worker_topics(topic_prefix)
    await ensure_topics(kafka_bootstrap, names[1:], partitions=1, retention=RETENTION)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        await admin.start()
        configs = {"retention.ms": "60000", "segment.ms": "600000"}
        await admin.create_topics([NewTopic(names[0], 1, 1, topic_configs=configs)])
    finally:
        await admin.close()

    await ensure_topics(kafka_bootstrap, names, partitions=1, retention=RETENTION)

    assert await topic_configs(kafka_bootstrap, [names[0]]) == {
        names[0]: {"retention.ms": "-1", "retention.bytes": "-1", "segment.ms": "600000"}
    }
    assert [[r.name for r in resources] for resources in alterations] == [[names[0]]]


async def test_a_retention_the_broker_refuses_is_a_configuration_error_at_once(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}.events"
    await ensure_topics(kafka_bootstrap, [topic], partitions=1)
    started = time.monotonic()

    with pytest.raises(
        ConfigurationError,
        match=rf"^Kafka refuses the retention or min\.insync\.replicas of topic {re.escape(topic)} "
        r"\(InvalidConfigurationError: .*retention\.ms.*\); set STRIPE_STREAMS_LOG_RETENTION_MS",
    ) as refused:
        await ensure_topics(kafka_bootstrap, [topic], partitions=1, retention=Retention(-2, WEEK))

    assert "\n" not in str(refused.value)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("retention", "warnings"), [(FOREVER, 0), (30 * 24 * 3600 * 1000, 1)])
async def test_the_worker_warns_once_at_start_when_the_log_retention_is_finite(
    settings: Settings, caplog: pytest.LogCaptureFixture, retention: int, warnings: int
) -> None:
    configured = dataclasses.replace(settings, log_retention_ms=retention)

    with caplog.at_level(logging.INFO):
        await preflight(configured)

    said = [r.getMessage() for r in caplog.records if "keeps events for" in r.getMessage()]
    assert said == [
        f"{settings.topic()} keeps events for 30 days only (retention.ms={retention}): events "
        "older than that cannot be replayed or rebuilt; set STRIPE_STREAMS_LOG_RETENTION_MS=-1 "
        "to keep them forever"
    ][:warnings]


async def broker_count(bootstrap: str) -> int:
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    try:
        await client.bootstrap()
        return len(client.cluster.brokers())
    finally:
        await client.close()


async def replica_counts(bootstrap: str, names: list[str]) -> dict[str, set[int]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    return {t["topic"]: {len(p["replicas"]) for p in t["partitions"]} for t in described}


async def test_on_a_single_broker_topics_keep_one_replica_and_the_brokers_min_insync_replicas(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    if await broker_count(kafka_bootstrap) != 1:
        pytest.skip("needs a single-broker Kafka; KAFKA_BOOTSTRAP_SERVERS names a cluster")
    names = worker_topics(topic_prefix)

    await ensure_topics(kafka_bootstrap, names, partitions=2, retention=RETENTION)

    assert await replica_counts(kafka_bootstrap, names) == {name: {1} for name in names}
    configs = await topic_configs(kafka_bootstrap, names)
    assert [name for name, held in configs.items() if "min.insync.replicas" in held] == []
