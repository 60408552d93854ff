"""Creation of the project's Kafka topics, and their retention."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
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

FOREVER = -1
"""The ``retention.ms`` (or ``retention.bytes``) that keeps every message."""

_DYNAMIC_TOPIC_CONFIG = 1
"""``config_source`` of a DescribeConfigs entry set on the topic itself rather than inherited."""

# Each table's KafkaError entry is the fix for a refusal it does not name.
_FIXES: dict[type[KafkaError], str] = {
    InvalidReplicationFactorError: "ask for at most as many replicas as Kafka has brokers",
    InvalidPartitionsError: "set STRIPE_STREAMS_PARTITIONS to a partition count Kafka accepts",
    InvalidConfigurationError: "drop or correct the topic configuration Kafka rejects",
    InvalidTopicError: "set STRIPE_STREAMS_TOPIC_PREFIX to a prefix Kafka accepts",
    PolicyViolationError: "create the topic as the broker's create.topic.policy allows",
    TopicAuthorizationFailedError: "grant this client CREATE and DESCRIBE on the topic",
    ClusterAuthorizationFailedError: "grant this client CREATE on the cluster",
    KafkaError: "fix what Kafka's message names, or create the topic by hand",
}
_RETENTION_FIXES: dict[type[KafkaError], str] = {
    InvalidConfigurationError: "set STRIPE_STREAMS_LOG_RETENTION_MS and "
    "STRIPE_STREAMS_FAMILY_RETENTION_MS to retentions Kafka accepts",
    PolicyViolationError: "set a retention the broker's alter.config.policy allows",
    TopicAuthorizationFailedError: "grant this client DESCRIBE_CONFIGS and ALTER_CONFIGS on the "
    "topic",
    ClusterAuthorizationFailedError: "grant this client ALTER_CONFIGS on the cluster",
    KafkaError: "fix what Kafka's message names",
}


@dataclass(frozen=True)
class Retention:
    """How long the topics keep their messages, in milliseconds; FOREVER keeps them all.

    The log and the dead-letter topic are bounded by time alone (``retention.bytes=-1``), so a
    size bound set on the broker does not delete them either.
    """

    log_ms: int
    """Of ``<prefix>.events``, the source of truth, and of ``<prefix>.events.dlq``."""
    family_ms: int
    """Of the family topics ``<prefix>.events.<family>``, which are derived from the log."""

    def configs(self, name: str) -> dict[str, str]:
        """The retention settings of topic ``name``; none for a name that is not a worker topic."""
        _, separator, suffix = name.rpartition(".events.")
        if separator and suffix in FAMILIES:
            return {"retention.ms": str(self.family_ms)}
        # The dead-letter topic is the record of failures, kept as long as the events themselves.
        if name.endswith(".events") or (separator and suffix == DEAD_LETTER_SUFFIX):
            return {"retention.ms": str(self.log_ms), "retention.bytes": str(FOREVER)}
        return {}


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
    bootstrap_servers: str,
    names: Iterable[str],
    partitions: int,
    replication: int = 1,
    retention: Retention | None = None,
) -> None:
    """Create the missing topics, wait until every broker serves them, then set their retention.

    New topics are created with their retention; an existing topic holding another retention
    has it altered, its other settings kept, and one holding the right one is left alone.
    Without ``retention``, new topics get the broker's default and existing ones keep theirs.
    A topic is served once a broker's metadata holds it with a leader for every partition; a
    consumer that joins its group earlier ignores it. Raises ConfigurationError when Kafka
    refuses a topic or its retention for good, DependencyUnavailable when Kafka cannot be
    reached or does not serve the topics within SERVED_TIMEOUT seconds.
    """
    wanted = list(dict.fromkeys(names))
    retained = {
        name: configs
        for name in wanted
        if retention is not None and (configs := retention.configs(name))
    }
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
                topic_configs={
                    "max.message.bytes": str(MAX_MESSAGE_BYTES), **retained.get(name, {})
                },
            )
            for name in wanted
            if name not in existing
        ]
        if missing:
            response = await admin.create_topics(missing)
            raise_topic_errors(response.topic_errors)
        await client.bootstrap()
        await wait_until_served(client, wanted, SERVED_TIMEOUT)
        if retained:
            # Someone else may have created a topic meanwhile, with another retention.
            await _alter_differing(admin, retained)
    except KafkaError as exc:
        raise DependencyUnavailable(f"Kafka at {bootstrap_servers}: {exc!r}") from exc
    finally:
        await admin.close()
        await client.close()


async def retention_ms(bootstrap_servers: str, topic: str) -> int:
    """The ``retention.ms`` the broker applies to ``topic``, wherever it is set; FOREVER: none.

    Raises ConfigurationError when Kafka refuses to describe the topic, DependencyUnavailable
    when Kafka cannot be reached.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    try:
        await admin.start()
        entries = await _describe(admin, [topic])
    except KafkaError as exc:
        raise DependencyUnavailable(f"Kafka at {bootstrap_servers}: {exc!r}") from exc
    finally:
        await admin.close()
    return int(entries[topic]["retention.ms"][0])


async def _alter_differing(
    admin: AIOKafkaAdminClient, wanted: Mapping[str, dict[str, str]]
) -> None:
    """Give each topic of ``wanted`` those settings where the broker holds others."""
    described = await _describe(admin, list(wanted))
    held = {
        topic: {
            name: value
            for name, (value, source) in entries.items()
            if source == _DYNAMIC_TOPIC_CONFIG
        }
        for topic, entries in described.items()
    }
    changes = alterations(wanted, held)
    if changes:
        responses = await admin.alter_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, topic, configs)
                for topic, configs in changes.items()
            ]
        )
        raise_config_errors(
            resource for response in responses for resource in response.to_object()["resources"]
        )


async def _describe(
    admin: AIOKafkaAdminClient, topics: list[str]
) -> dict[str, dict[str, tuple[str, int]]]:
    """Every setting of each topic: its value and where it is set (``config_source``)."""
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in topics]
    )
    resources = [
        resource for response in responses for resource in response.to_object()["resources"]
    ]
    raise_config_errors(resources)
    return {
        resource["resource_name"]: {
            entry["config_names"]: (entry["config_value"], entry["config_source"])
            for entry in resource["config_entries"]
        }
        for resource in resources
    }


def alterations(
    wanted: Mapping[str, Mapping[str, str]], held: Mapping[str, Mapping[str, str]]
) -> dict[str, dict[str, str]]:
    """The full configuration to set on each topic whose own settings differ from ``wanted``.

    ``held`` is what each topic has set on itself. An alteration replaces all of a topic's own
    settings, so it carries those it keeps along with the wanted ones.
    """
    return {
        topic: {**held.get(topic, {}), **configs}
        for topic, configs in wanted.items()
        if any(held.get(topic, {}).get(name) != value for name, value in configs.items())
    }


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
                raise _refusal(f"topic {topic['topic']}", error, None, _FIXES)
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
    _raise_errors(
        (
            (f"topic {topic}", code, message[0] if message else None)
            for topic, code, *message in topic_errors
            if for_code(code) is not TopicAlreadyExistsError
        ),
        "creating",
        _FIXES,
    )


def raise_config_errors(resources: Iterable[Mapping[str, Any]]) -> None:
    """Raise the errors of the topics of a DescribeConfigs or AlterConfigs response.

    As for :func:`raise_topic_errors`, a refusal goes first, before an outage.
    """
    _raise_errors(
        (
            (f"the retention of topic {resource['resource_name']}", resource["error_code"],
             resource["error_message"])
            for resource in resources
        ),
        "reading or setting",
        _RETENTION_FIXES,
    )


def _raise_errors(
    results: Iterable[tuple[str, int, str | None]], doing: str, fixes: dict[type[KafkaError], str]
) -> None:
    """Raise the first refusal of ``results`` (subject, error code, message), else an outage."""
    outage: DependencyUnavailable | None = None
    for subject, code, message in results:
        error = for_code(code)
        if error is NoError:
            continue
        if not error.retriable:
            raise _refusal(subject, error, message, fixes)
        outage = outage or DependencyUnavailable(f"{doing} {subject}: {error.__name__}")
    if outage is not None:
        raise outage


def _refusal(
    subject: str, error: type[KafkaError], message: str | None, fixes: dict[type[KafkaError], str]
) -> ConfigurationError:
    detail = f"{error.__name__}: {' '.join(message.split())}" if message else error.__name__
    fix = fixes.get(error, fixes[KafkaError])
    return ConfigurationError(f"Kafka refuses {subject} ({detail}); {fix}")
