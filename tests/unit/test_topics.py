"""How topic creation reads Kafka's answers: outage, misconfiguration, or not served yet."""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from streams.errors import ConfigurationError, DependencyUnavailable
from streams.log.topics import raise_topic_errors, wait_until_served

TOPICS = ["t.events", "t.events.customers"]
CREATED = [("t.events", 0, None), ("t.events.dlq", 36, "Topic 't.events.dlq' already exists.")]
"""CreateTopics results that are success: created, and created by someone else."""


@pytest.mark.parametrize(
    ("code", "message", "named"),
    [
        (38, "Unable to replicate the partition 3 time(s): only 1 broker(s) are registered.",
         "InvalidReplicationFactorError: Unable to replicate.*at most as many replicas"),
        (40, "Unknown topic config name: max.mesage.bytes",
         "InvalidConfigurationError: Unknown topic config name.*topic configuration"),
        (37, "Number of partitions must be larger than 0.",
         "InvalidPartitionsError.*STRIPE_STREAMS_PARTITIONS"),
        (44, "Topic replication factor must be 3", "PolicyViolationError.*create.topic.policy"),
        (29, None, r"TopicAuthorizationFailedError\); grant this client CREATE"),
    ],
)
def test_a_refusal_retrying_cannot_change_is_a_configuration_error(
    code: int, message: str | None, named: str
) -> None:
    with pytest.raises(ConfigurationError, match=rf"topic t\.events\.customers \({named}") as e:
        raise_topic_errors([*CREATED, ("t.events.customers", code, message)])
    assert "\n" not in str(e.value)
    assert not e.value.retriable


def test_only_retriable_errors_are_an_outage() -> None:
    with pytest.raises(DependencyUnavailable, match=r"topic t\.events: RequestTimedOut"):
        raise_topic_errors([("t.events", 7, None), ("t.events.customers", 41, None)])
    with pytest.raises(ConfigurationError, match=r"t\.events\.customers \(InvalidConfig"):
        raise_topic_errors([("t.events", 7, None), ("t.events.customers", 40, "bad config")])


@dataclass
class Broker:
    """A broker answering its n-th metadata request with ``answers[n]`` (the last repeats).

    An answer is (topic error code, leader of every partition).
    """

    nodeId: int
    answers: list[tuple[int, int]]
    asked: int = 0


class Client:
    """Just enough of aiokafka's client: brokers answering metadata requests from a script."""

    def __init__(self, *answers: list[tuple[int, int]]) -> None:
        self.brokers = [Broker(node, list(script)) for node, script in enumerate(answers)]
        self.cluster = SimpleNamespace(brokers=lambda: self.brokers)

    async def force_metadata_update(self) -> bool:
        return True

    async def send(self, node_id: int, request: Any) -> Any:
        broker = self.brokers[node_id]
        code, leader = broker.answers[min(broker.asked, len(broker.answers) - 1)]
        broker.asked += 1
        partitions = [{"partition": p, "leader": leader} for p in range(3)]
        topics = [
            {"topic": name, "error_code": code, "partitions": [] if code else partitions}
            for name in TOPICS
        ]
        return SimpleNamespace(to_object=lambda: {"topics": topics})


SERVED = (0, 0)
UNKNOWN = (3, -1)
LEADERLESS = (0, -1)


async def test_waits_for_the_slowest_broker_and_for_every_partition_leader() -> None:
    client = Client([SERVED], [UNKNOWN, LEADERLESS, LEADERLESS, SERVED])

    await wait_until_served(client, TOPICS, max_wait=10)

    assert client.brokers[1].asked == 4


async def test_topics_never_served_are_named_when_the_wait_ends() -> None:
    client = Client([SERVED], [LEADERLESS])
    started = time.monotonic()

    with pytest.raises(DependencyUnavailable, match=r"t\.events, t\.events\.customers"):
        await wait_until_served(client, TOPICS, max_wait=0.3)

    assert time.monotonic() - started < 2


async def test_a_topic_this_client_may_not_describe_is_a_configuration_error() -> None:
    client = Client([(29, -1)])

    with pytest.raises(ConfigurationError, match=r"t\.events .*grant this client"):
        await wait_until_served(client, TOPICS, max_wait=10)

    assert client.brokers[0].asked == 1
