"""Creation of the project's Kafka topics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    InvalidConfigurationError,
    InvalidPartitionsError,
    InvalidReplicationFactorError,
    InvalidTopicError,
    KafkaError,
    NoError,
    PolicyViolationError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    for_code,
)
from aiokafka.protocol.metadata import MetadataRequest

from streams.errors import ConfigurationError, DependencyUnavailable
from streams.log.routing import FAMILIES

DEAD_LETTER_SUFFIX = "dlq"
"""Suffix of the dead-letter topic, ``<prefix>.events.dlq``."""

MAX_MESSAGE_BYTES = 2 * 1024 * 1024
"""Largest message on any topic: a 1 MiB event body plus its envelope or dead-letter record.

Kafka's own default (about 1 MB) would refuse the largest events the gateway accepts."""

SERVED_TIMEOUT = 30.0
"""Seconds :func:`ensure_topics` waits for every broker to serve the topics it ensured."""

_FIXES: dict[type[KafkaError], str] = {
    InvalidReplicationFactorError: "ask for at most as many replicas as Kafka has brokers",
    InvalidPartitionsError: "set STRIPE_STREAMS_PARTITIONS to a partition count Kafka accepts",
    InvalidConfigurationError: "drop or correct the topic configuration Kafka rejects",
    InvalidTopicError: "set STRIPE_STREAMS_TOPIC_PREFIX to a prefix Kafka accepts",
    PolicyViolationError: "create the topic as the broker's create.topic.policy allows",
    TopicAuthorizationFailedError: "grant this client CREATE and DESCRIBE on the topic",
    ClusterAuthorizationFailedError: "grant this client CREATE on the cluster",
}


def topic_name(prefix: str, suffix: str = "") -> str:
    """The full name of a topic: ``<prefix>.events``, then ``.<suffix>`` if any."""
    base = f"{prefix}.events"
    return f"{base}.{suffix}" if suffix else base


def worker_topics(prefix: str) -> list[str]:
    """Every topic a worker reads or writes: the log, the family topics and the DLQ."""
    return [
        topic_name(prefix),
        *(topic_name(prefix, family) for family in FAMILIES),
        topic_name(prefix, DEAD_LETTER_SUFFIX),
    ]


async def ensure_topics(
    bootstrap_servers: str, names: Iterable[str], partitions: int, replication: int = 1
) -> None:
    """Create the topics that do not exist yet, then wait until every broker serves them all.

    Existing topics are left as they are. A topic is served once a broker's metadata holds it
    with a leader for every partition; a consumer that joins its group earlier ignores it.
    Raises ConfigurationError when Kafka refuses a topic for good, DependencyUnavailable when
    Kafka cannot be reached or does not serve the topics within SERVED_TIMEOUT seconds.
    """
    wanted = list(dict.fromkeys(names))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
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
            for name in wanted
            if name not in existing
        ]
        if missing:
            response = await admin.create_topics(missing)
            raise_topic_errors(response.topic_errors)
        await client.bootstrap()
        await wait_until_served(client, wanted, SERVED_TIMEOUT)
    except KafkaError as exc:
        raise DependencyUnavailable(f"Kafka at {bootstrap_servers}: {exc!r}") from exc
    finally:
        await admin.close()
        await client.close()


async def wait_until_served(client: AIOKafkaClient, names: Sequence[str], max_wait: float) -> None:
    """Poll every broker the bootstrapped ``client`` knows until each serves all ``names``.

    Raises DependencyUnavailable naming the topics still unserved after ``max_wait`` seconds.
    """
    deadline = time.monotonic() + max_wait
    backoff = 0.05
    while unserved := await _unserved(client, names):
        if time.monotonic() >= deadline:
            raise DependencyUnavailable(
                f"Kafka does not serve topic(s) {', '.join(sorted(unserved))} with a leader "
                f"for every partition after {max_wait:.0f}s"
            )
        await asyncio.sleep(backoff)
        backoff = min(2 * backoff, 1.0)


async def _unserved(client: AIOKafkaClient, names: Sequence[str]) -> set[str]:
    """The topics of ``names`` that some broker does not serve yet."""
    # Brokers may have joined or left since the last round.
    await client.force_metadata_update()
    # A metadata request allowed to create topics would create them with the broker's defaults.
    request = MetadataRequest(list(names), allow_auto_topic_creation=False)
    unserved: set[str] = set()
    for broker in client.cluster.brokers():
        try:
            response = await client.send(broker.nodeId, request)
        except KafkaError:
            # A consumer may ask this broker too; once fenced, the cluster stops listing it.
            return set(names)
        for topic in response.to_object()["topics"]:
            error = for_code(topic["error_code"])
            if error is not NoError and not error.retriable:
                raise _refusal(topic["topic"], error, None)
            partitions = topic["partitions"]
            if error is not NoError or not partitions or any(p["leader"] < 0 for p in partitions):
                unserved.add(topic["topic"])
    return unserved


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
    """Raise the errors of a CreateTopics response; 'already exists' is success.

    A refusal retrying cannot change is a ConfigurationError and goes first; a retriable error
    (an outage) is a DependencyUnavailable.
    """
    outage: DependencyUnavailable | None = None
    for topic, code, *message in topic_errors:
        error = for_code(code)
        if error is NoError or error is TopicAlreadyExistsError:
            continue
        if not error.retriable:
            raise _refusal(topic, error, message[0] if message else None)
        outage = outage or DependencyUnavailable(f"creating topic {topic}: {error.__name__}")
    if outage is not None:
        raise outage


def _refusal(topic: str, error: type[KafkaError], message: str | None) -> ConfigurationError:
    detail = f"{error.__name__}: {' '.join(message.split())}" if message else error.__name__
    fix = _FIXES.get(error, "fix what Kafka's message names, or create the topic by hand")
    return ConfigurationError(f"Kafka refuses topic {topic} ({detail}); {fix}")
