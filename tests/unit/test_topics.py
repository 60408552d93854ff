"""How topic creation reads Kafka's answers (outage, misconfiguration, or not served yet), which
retention each topic gets, and how many replicas of it Kafka keeps and writes wait for."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from streams.errors import ConfigurationError, DependencyUnavailable
from streams.log.routing import FAMILIES
from streams.log.topics import (
    FOREVER,
    Replication,
    Retention,
    alterations,
    raise_config_errors,
    raise_topic_errors,
    topic_configs,
    wait_until_served,
    warn_of_missing_replicas,
    worker_topics,
)
from streams.settings import Settings
from streams.worker.process import warn_of_finite_retention

TOPICS = ["t.events", "t.events.customers"]
CREATED = [("t.events", 0, None), ("t.events.dlq", 36, "Topic 't.events.dlq' already exists.")]
"""CreateTopics results that are success: created, and created by someone else."""


@pytest.mark.parametrize(
    ("code", "message", "named"),
    [
        (38, "Unable to replicate the partition 3 time(s): only 1 broker(s) are registered.",
         "InvalidReplicationFactorError: Unable to replicate.*; set "
         "STRIPE_STREAMS_REPLICATION_FACTOR to at most as many replicas"),
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


WEEK = 7 * 24 * 3600 * 1000
KEPT = {"retention.ms": "-1", "retention.bytes": "-1"}


def test_the_log_and_its_dead_letters_keep_the_log_retention_the_families_their_own() -> None:
    retention = Retention(log_ms=FOREVER, family_ms=WEEK)

    configs = {name: retention.configs(name) for name in worker_topics("acme.eu")}

    assert configs.pop("acme.eu.events") == KEPT
    assert configs.pop("acme.eu.events.dlq") == KEPT
    assert configs == {
        f"acme.eu.events.{family}": {"retention.ms": str(WEEK)} for family in FAMILIES
    }
    assert Retention(log_ms=WEEK, family_ms=FOREVER).configs("acme.events") == {
        "retention.ms": str(WEEK), "retention.bytes": "-1"
    }


@pytest.mark.parametrize("name", ["acme.events.unknown", "customers", "acme.events-2"])
def test_a_topic_that_is_not_a_worker_topic_gets_no_retention(name: str) -> None:
    assert Retention(log_ms=FOREVER, family_ms=WEEK).configs(name) == {}


def test_a_topic_created_before_retention_was_set_gets_it_with_its_other_settings_kept() -> None:
    held = {"t.events": {"max.message.bytes": "2097152"}}

    assert alterations({"t.events": KEPT}, held) == {
        "t.events": {"max.message.bytes": "2097152", **KEPT}
    }


def test_a_topic_holding_another_retention_is_altered_to_the_wanted_one() -> None:
    held = {"t.events.customers": {"retention.ms": "3600000", "cleanup.policy": "delete"}}

    assert alterations({"t.events.customers": {"retention.ms": str(WEEK)}}, held) == {
        "t.events.customers": {"retention.ms": str(WEEK), "cleanup.policy": "delete"}
    }


def test_topics_holding_the_wanted_retention_are_not_altered() -> None:
    held = {
        "t.events": {**KEPT, "max.message.bytes": "2097152"},
        "t.events.customers": {"retention.ms": str(WEEK)},
    }

    assert alterations({"t.events": KEPT, "t.events.customers": {"retention.ms": str(WEEK)}},
                       held) == {}


def resource(topic: str, code: int, message: str | None = None) -> dict[str, Any]:
    return {"resource_name": topic, "error_code": code, "error_message": message}


@pytest.mark.parametrize(
    ("code", "message", "named"),
    [
        (40, "Invalid value -2 for configuration retention.ms: Value must be at least -1",
         "InvalidConfigurationError: Invalid value -2.*; set STRIPE_STREAMS_LOG_RETENTION_MS"),
        (44, "Retention must be at most 30 days",
         "PolicyViolationError: Retention.*alter.config.policy"),
        (29, None, r"TopicAuthorizationFailedError\); grant this client DESCRIBE_CONFIGS"),
        (42, "unexpected", r"InvalidRequestError: unexpected\); fix what Kafka's message names"),
    ],
)
def test_a_refused_retention_is_a_configuration_error_naming_the_topic_and_the_fix(
    code: int, message: str | None, named: str
) -> None:
    with pytest.raises(
        ConfigurationError,
        match=rf"retention or min\.insync\.replicas of topic t\.events\.dlq \({named}",
    ) as e:
        raise_config_errors([resource("t.events", 0, ""), resource("t.events.dlq", code, message)])
    assert "\n" not in str(e.value)
    assert not e.value.retriable


def test_a_retention_kafka_cannot_set_now_is_an_outage_after_any_refusal() -> None:
    with pytest.raises(
        DependencyUnavailable, match=r"min\.insync\.replicas of topic t\.events: RequestTimed"
    ):
        raise_config_errors([resource("t.events", 7), resource("t.events.dlq", 0, "")])
    with pytest.raises(ConfigurationError, match=r"t\.events\.dlq \(InvalidConfig"):
        raise_config_errors([resource("t.events", 7), resource("t.events.dlq", 40, "bad")])


@pytest.mark.parametrize(
    ("retention", "said"),
    [
        (30 * 24 * 3600 * 1000, "30 days"),
        (36 * 3600 * 1000, "1.5 days"),
        (3600 * 1000, "1 hour"),
        (90 * 1000, "1.5 minutes"),
        (500, "500 ms"),
    ],
)
def test_a_finite_log_retention_is_warned_of_in_one_line(
    caplog: pytest.LogCaptureFixture, retention: int, said: str
) -> None:
    with caplog.at_level(logging.INFO):
        warn_of_finite_retention("stripe.events", retention)

    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"stripe.events keeps events for {said} only (retention.ms={retention}): events older "
        "than that cannot be replayed or rebuilt; set STRIPE_STREAMS_LOG_RETENTION_MS=-1 to keep "
        "them forever"
    )


def test_a_log_kept_forever_is_not_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        warn_of_finite_retention("stripe.events", FOREVER)

    assert caplog.records == []


@pytest.mark.parametrize(
    ("brokers", "factor", "min_insync"),
    [(1, 1, None), (2, 2, 1), (3, 3, 2), (5, 3, 2)],
)
def test_unset_replication_follows_the_brokers_the_cluster_reports(
    brokers: int, factor: int, min_insync: int | None
) -> None:
    """A single broker keeps its own min.insync.replicas; from three replicas, one may be lost."""
    derived = Settings.from_env({})

    replication = Replication(derived.replication_factor, derived.min_insync_replicas)

    assert replication.factor_for(brokers) == factor
    assert replication.min_insync_for(factor, brokers) == min_insync


def test_a_topic_keeps_the_min_insync_replicas_its_own_replicas_allow() -> None:
    """A topic of 3 replicas keeps min.insync.replicas=2 even while a broker is down."""
    assert Replication().min_insync_for(replicas=3, brokers=2) == 2
    assert Replication().min_insync_for(replicas=1, brokers=3) == 1


def test_set_replication_wins_over_the_cluster_size() -> None:
    configured = Settings.from_env(
        {"STRIPE_STREAMS_REPLICATION_FACTOR": "2", "STRIPE_STREAMS_MIN_INSYNC_REPLICAS": "2"}
    )

    replication = Replication(configured.replication_factor, configured.min_insync_replicas)

    assert replication.factor_for(brokers=5) == 2
    assert replication.min_insync_for(replicas=2, brokers=1) == 2


def test_more_insync_replicas_than_replicas_is_refused_naming_both_settings() -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"^STRIPE_STREAMS_MIN_INSYNC_REPLICAS=2 exceeds the replication factor 1.*"
        r"raise STRIPE_STREAMS_REPLICATION_FACTOR$",
    ):
        Replication(min_insync=2).factor_for(brokers=1)


@pytest.mark.parametrize("variable", ["STRIPE_STREAMS_REPLICATION_FACTOR",
                                      "STRIPE_STREAMS_MIN_INSYNC_REPLICAS"])
def test_a_replica_count_below_one_is_refused(variable: str) -> None:
    with pytest.raises(ConfigurationError, match=f"^{variable} must be a positive integer"):
        Settings.from_env({variable: "0"})


def test_a_topic_gets_min_insync_replicas_beside_its_retention_unless_left_to_the_broker() -> None:
    retention = Retention(log_ms=FOREVER, family_ms=WEEK)

    assert topic_configs("t.events", retention, 2) == {**KEPT, "min.insync.replicas": "2"}
    assert topic_configs("t.events.customers", None, 2) == {"min.insync.replicas": "2"}
    assert topic_configs("t.events.customers", retention, None) == {"retention.ms": str(WEEK)}
    assert topic_configs("t.events", None, None) == {}


def test_a_wrong_min_insync_replicas_is_altered_with_the_other_settings_kept() -> None:
    held = {"t.events": {**KEPT, "min.insync.replicas": "1", "segment.ms": "600000"}}

    assert alterations({"t.events": {**KEPT, "min.insync.replicas": "2"}}, held) == {
        "t.events": {**KEPT, "min.insync.replicas": "2", "segment.ms": "600000"}
    }


def test_topics_with_fewer_replicas_than_wanted_are_named_in_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        warn_of_missing_replicas({"t.events": 1, "t.events.dlq": 2, "t.events.other": 3}, 3)
        warn_of_missing_replicas({"t.events": 3}, 3)

    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "t.events has 1 replica, t.events.dlq has 2 replicas, fewer than the replication factor "
        "3: Kafka does not add replicas to existing topics; add them with "
        "kafka-reassign-partitions.sh"
    )
