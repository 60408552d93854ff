"""Creation of the project's Kafka topics."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from streams.errors import DependencyUnavailable

MAX_MESSAGE_BYTES = 2 * 1024 * 1024
"""Largest message on any topic: a 1 MiB event body plus its envelope or dead-letter record.

Kafka's own default (about 1 MB) would refuse the largest events the gateway accepts."""


async def ensure_topics(
    bootstrap_servers: str, names: Iterable[str], partitions: int, replication: int = 1
) -> None:
    """Create the topics that do not exist yet; existing topics are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=replication,
                topic_configs={"max.message.bytes": str(MAX_MESSAGE_BYTES)},
            )
            for name in dict.fromkeys(names)
            if name not in existing
        ]
        if missing:
            response = await admin.create_topics(missing)
            raise_topic_errors(response.topic_errors)
    except KafkaError as exc:
        raise DependencyUnavailable(f"Kafka at {bootstrap_servers}: {exc!r}") from exc
    finally:
        await admin.close()


async def delete_topics(bootstrap_servers: str, prefix: str) -> None:
    """Delete every topic whose name starts with ``prefix`` (test and demo clean-up)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    try:
        await admin.start()
        doomed = [name for name in await admin.list_topics() if name.startswith(prefix)]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


def raise_topic_errors(topic_errors: Sequence[Sequence[Any]]) -> None:
    """Raise the first per-topic error of a CreateTopics response; 'already exists' is success."""
    for topic, code, *_ in topic_errors:
        if code and for_code(code) is not TopicAlreadyExistsError:
            raise DependencyUnavailable(f"creating topic {topic}: {for_code(code).__name__}")
