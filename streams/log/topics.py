"""Creation of the project's Kafka topics, their replication and their retention."""

from __future__ import annotations

import asyncio
import logging
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

log = logging.getLogger(__name__)

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
    InvalidReplicationFactorError: "set STRIPE_STREAMS_REPLICATION_FACTOR to at most as many "
    "replicas as Kafka has brokers",
    InvalidPartitionsError: "set STRIPE_STREAMS_PARTITIONS to a partition count Kafka accepts",
    InvalidConfigurationError: "drop or correct the topic configuration Kafka rejects",
    InvalidTopicError: "set STRIPE_STREAMS_TOPIC_PREFIX to a prefix Kafka accepts",
    PolicyViolationError: "create the topic as the broker's create.topic.policy allows",
    TopicAuthorizationFailedError: "grant this client CREATE and DESCRIBE on the topic",
    ClusterAuthorizationFailedError: "grant this client CREATE on the cluster",
    KafkaError: "fix what Kafka's message names, or create the topic by hand",
}
_SETTING_FIXES: dict[type[KafkaError], str] = {
    InvalidConfigurationError: "set STRIPE_STREAMS_LOG_RETENTION_MS, "
    "STRIPE_STREAMS_FAMILY_RETENTION_MS and STRIPE_STREAMS_MIN_INSYNC_REPLICAS to values Kafka "
    "accepts",
    PolicyViolationError: "set values the broker's alter.config.policy allows",
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


def derived_replication(brokers: int) -> int:
    """The replication factor of a cluster of ``brokers``: one replica per broker, at most 3."""
    return min(3, brokers)


def derived_min_insync(replicas: int) -> int:
    """The ``min.insync.replicas`` of ``replicas``: from 3 up, writes survive losing one of them."""
    return replicas - 1 if replicas >= 3 else 1


@dataclass(frozen=True)
class Replication:
    """How many replicas of each partition Kafka keeps, and how many an ``acks=all`` write needs.

    Either one unset is derived from the brokers the cluster reports when the topics are
    ensured: :func:`derived_replication` of them, and :func:`derived_min_insync` of a topic's
    replicas, except on a single broker, whose topics keep its own ``min.insync.replicas``.
    """

    factor: int | None = None
    """Replicas of each new topic; existing topics keep theirs."""
    min_insync: int | None = None
    """``min.insync.replicas`` set on every topic."""

    def factor_for(self, brokers: int) -> int:
        """The replication factor of new topics on a cluster of ``brokers``.

        Raises ConfigurationError when ``min_insync`` exceeds it: Kafka would accept the topic,
        then refuse every ``acks=all`` write to it.
        """
        factor = self.factor if self.factor is not None else derived_replication(brokers)
        if self.min_insync is not None and self.min_insync > factor:
            raise ConfigurationError(
                f"STRIPE_STREAMS_MIN_INSYNC_REPLICAS={self.min_insync} exceeds the replication "
                f"factor {factor}, so Kafka would refuse every write; lower it or raise "
                "STRIPE_STREAMS_REPLICATION_FACTOR"
            )
        return factor

    def min_insync_for(self, replicas: int, brokers: int) -> int | None:
        """The ``min.insync.replicas`` of a topic of ``replicas``; None: the broker's own."""
        if self.min_insync is not None:
            return self.min_insync
        return None if brokers == 1 else derived_min_insync(replicas)


DERIVED = Replication()
"""Replication derived entirely from the cluster."""


def topic_configs(
    name: str, retention: Retention | None, min_insync: int | None
) -> dict[str, str]:
    """The settings :func:`ensure_topics` keeps on topic ``name``, beyond its message size."""
    configs = retention.configs(name) if retention is not None else {}
    if min_insync is not None:
        configs = {**configs, "min.insync.replicas": str(min_insync)}
    return configs


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
    replication: Replication = DERIVED,
    retention: Retention | None = None,
) -> None:
    """Create the missing topics, wait until every broker serves them, then set their settings.

    New topics are created with ``replication``'s factor, their retention and
    ``min.insync.replicas``; an existing topic holding another retention or
    ``min.insync.replicas`` has it altered, its other settings kept, and one holding the right
    ones is left alone. An existing topic with fewer replicas than the factor keeps them, with
    one warning: Kafka adds replicas only when partitions are reassigned. Without
    ``retention``, new topics get the broker's default and existing ones keep theirs.
    A topic is served once a broker's metadata holds it with a leader for every partition; a
    consumer that joins its group earlier ignores it. Raises ConfigurationError when Kafka
    refuses a topic or its settings for good, or ``replication`` contradicts itself,
    DependencyUnavailable when Kafka cannot be reached or does not serve the topics within
    SERVED_TIMEOUT seconds.
    """
    wanted = list(dict.fromkeys(names))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=10_000)
    try:
        await client.bootstrap()
        brokers = len(client.cluster.brokers())
        factor = replication.factor_for(brokers)
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=factor,
                topic_configs={
                    "max.message.bytes": str(MAX_MESSAGE_BYTES),
                    **topic_configs(name, retention, replication.min_insync_for(factor, brokers)),
                },
            )
            for name in wanted
            if name not in existing
        ]
        if missing:
            response = await admin.create_topics(missing)
            raise_topic_errors(response.topic_errors)
        await wait_until_served(client, wanted, SERVED_TIMEOUT)
        replicas = await _replica_counts(client, wanted)
        warn_of_missing_replicas(replicas, factor)
        # Someone else may have created a topic meanwhile, with other settings; a topic's own
        # replica count decides its min.insync.replicas, so a broker down now lowers none.
        configured = {
            name: configs
            for name in wanted
            if (
                configs := topic_configs(
                    name, retention,
                    replication.min_insync_for(replicas.get(name, factor), brokers),
                )
            )
        }
        if configured:
            await _alter_differing(admin, configured)
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


async def _replica_counts(client: AIOKafkaClient, names: Sequence[str]) -> dict[str, int]:
    """The fewest replicas of any partition of each topic of ``names``, as Kafka assigned them."""
    request = MetadataRequest(list(names), allow_auto_topic_creation=False)
    response = await client.send(client.get_random_node(), request)
    return {
        topic["topic"]: min(len(partition["replicas"]) for partition in topic["partitions"])
        for topic in response.to_object()["topics"]
        if topic["partitions"]
    }


def warn_of_missing_replicas(replicas: Mapping[str, int], factor: int) -> None:
    """Warn, in one line, of the topics holding fewer than ``factor`` replicas."""
    short = [
        f"{name} has {count} replica{'' if count == 1 else 's'}"
        for name, count in replicas.items()
        if count < factor
    ]
    if short:
        log.warning(
            "%s, fewer than the replication factor %d: Kafka does not add replicas to existing "
            "topics; add them with kafka-reassign-partitions.sh",
            ", ".join(short), factor,
        )


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
            (f"the retention or min.insync.replicas of topic {resource['resource_name']}",
             resource["error_code"], resource["error_message"])
            for resource in resources
        ),
        "reading or setting",
        _SETTING_FIXES,
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
