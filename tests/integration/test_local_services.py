"""`services up|down|status` on private ports: idempotent start, stop by pid, nothing left; a
three-node cluster that keeps taking the gateway's writes in time when a node is killed."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.partitioner import DefaultPartitioner

from ingest.producer import EventLog
from streams.cli import main
from streams.devtools.services import LocalServices, kafka
from streams.devtools.services.kafka import LocalKafka, free_port_block
from streams.devtools.services.postgres import LocalPostgres
from streams.devtools.services.process import is_alive
from streams.errors import ServiceError
from streams.log.topics import FOREVER, Retention, ensure_topics, worker_topics
from streams.settings import Settings


def test_kafka_up_is_idempotent_and_down_stops_it(private_kafka: LocalKafka) -> None:
    [pid] = private_kafka.up()
    try:
        assert private_kafka.up() == [pid]
        assert private_kafka.nodes[0].pid() == pid
        asyncio.run(ensure_topics(private_kafka.address, ["probe.events"], partitions=2))
    finally:
        assert private_kafka.down() == private_kafka.nodes
    assert not is_alive(pid)
    assert private_kafka.nodes[0].pid() is None
    assert private_kafka.down() == []


def test_kafka_starts_when_its_cluster_id_starts_with_a_dash(
    private_kafka: LocalKafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One random id in 64 starts with '-', which the storage tool once took for an option."""
    cluster_id = "-7QuT1dRRkS0kq7-1f5ZxA"
    monkeypatch.setattr(kafka, "new_cluster_id", lambda: cluster_id)

    private_kafka.up()

    meta = (private_kafka.nodes[0].data_dir / "meta.properties").read_text()
    assert f"cluster.id={cluster_id}" in meta.splitlines()
    asyncio.run(ensure_topics(private_kafka.address, ["probe.events"], partitions=1))


def test_postgres_up_is_idempotent_and_down_stops_it(private_postgres: LocalPostgres) -> None:
    pid = private_postgres.up()
    try:
        assert private_postgres.up() == pid
        with psycopg.connect(private_postgres.url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("stripe_streams",)
    finally:
        assert private_postgres.down() is True
    assert not is_alive(pid)
    assert private_postgres.pid() is None


def test_up_refuses_an_address_another_process_serves(
    private_postgres: LocalPostgres, postgres_admin_url: str
) -> None:
    taken = urlsplit(postgres_admin_url)
    squatter = replace(private_postgres, host=taken.hostname or "", port=taken.port or 5432)
    with pytest.raises(ServiceError, match="already served by a process"):
        squatter.up()
    assert squatter.pid() is None


@pytest.fixture
def private_cluster() -> Iterator[LocalKafka]:
    """A three-node cluster of this test's own (not started) on six free ports."""
    shared = Settings.from_env()
    home = Path(tempfile.mkdtemp(prefix="ss-kafka3-"))
    cluster = LocalKafka(
        version=shared.kafka_version, home=home / "kafka", port=free_port_block(6), brokers=3
    )
    LocalServices.from_settings(shared).kafka.resolve_jars()
    (home / "kafka-jars").symlink_to(shared.state_dir / "kafka-jars")
    yield cluster
    cluster.down()
    shutil.rmtree(home, ignore_errors=True)


def services(cluster: LocalKafka, action: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What `stripe-streams services ACTION` prints about Kafka for the cluster's state dir."""
    assert main(["services", action]) == 0
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("kafka")]


async def replication_of(bootstrap: str, names: list[str]) -> dict[str, tuple[int, str]]:
    """Each topic's fewest replicas of a partition, and its min.insync.replicas."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        described = await admin.describe_topics(names)
        [configs] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    min_insync = {
        resource["resource_name"]: entry["config_value"]
        for resource in configs.to_object()["resources"]
        for entry in resource["config_entries"]
        if entry["config_names"] == "min.insync.replicas"
    }
    return {
        topic["topic"]: (min(len(p["replicas"]) for p in topic["partitions"]),
                         min_insync[topic["topic"]])
        for topic in described
    }


def settled_replication(
    bootstrap: str, expected: dict[str, tuple[int, str]]
) -> dict[str, tuple[int, str]]:
    """What :func:`replication_of` reports once it is ``expected``, or after 10 s.

    Brokers apply an altered setting a moment after the controller has acknowledged it.
    """
    deadline = time.monotonic() + 10
    while (seen := asyncio.run(replication_of(bootstrap, list(expected)))) != expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return seen


async def create_elsewhere(bootstrap: str, topics: list[NewTopic]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        await admin.create_topics(topics)
    finally:
        await admin.close()


async def partition_state(bootstrap: str, topic: str) -> dict[str, Any]:
    """Partition 0 of ``topic``: its leader and in-sync replicas."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    [partition] = [p for p in described["partitions"] if p["partition"] == 0]
    return dict(partition)


def keys_of_partition_0(count: int, partitions: int) -> list[bytes]:
    """Object ids the gateway's producer sends to partition 0 of a topic of ``partitions``."""
    partitioner = DefaultPartitioner()
    every = list(range(partitions))
    candidates = (f"cus_{n}".encode() for n in itertools.count())
    return list(itertools.islice(
        (key for key in candidates if partitioner(key, every, every) == 0), count
    ))


async def append_through_a_node_loss(
    settings: Settings, victim: int, keys: list[bytes]
) -> float:
    """Append one message per key as the gateway does, SIGKILLing pid ``victim`` halfway.

    Returns the slowest append's seconds; an append past the produce timeout raises
    LogUnavailable, which the gateway would answer 503.
    """
    log = EventLog(settings)
    await log.start()
    slowest = 0.0
    try:
        for n, key in enumerate(keys):
            if n == len(keys) // 2:
                os.kill(victim, signal.SIGKILL)
            began = time.monotonic()
            await log.append(key, str(n).encode())
            slowest = max(slowest, time.monotonic() - began)
    finally:
        await log.stop()
    return slowest


async def read_partition(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    partition = TopicPartition(topic, 0)
    try:
        await consumer.start()
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        values: list[bytes] = []
        while len(values) < count:
            batches = await consumer.getmany(partition, timeout_ms=10_000)
            assert batches, f"only {len(values)} of {count} messages could be read back"
            values.extend(message.value for message in batches[partition])
        return values
    finally:
        await consumer.stop()


def test_a_three_node_cluster_replicates_topics_and_takes_writes_with_a_node_killed(
    private_cluster: LocalKafka, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = private_cluster
    monkeypatch.setenv("STRIPE_STREAMS_STATE_DIR", str(cluster.home.parent))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", cluster.address)

    pids = cluster.up()

    assert len(set(pids)) == 3
    assert cluster.up() == pids
    assert services(cluster, "status", capsys) == [
        f"{node.name}   {node.address}  pid {pid}  running  log {node.log_file}"
        for node, pid in zip(cluster.nodes, pids, strict=True)
    ]

    # The project's topics, as the gateway and the workers ensure them, unconfigured.
    names = worker_topics("acme")
    asyncio.run(ensure_topics(
        cluster.address, names, partitions=3, retention=Retention(FOREVER, FOREVER)
    ))
    assert asyncio.run(replication_of(cluster.address, names)) == dict.fromkeys(names, (3, "2"))

    # Topics another client made: one with too few replicas, one writable with one replica.
    few, lax = "legacy.events", "lax.events"
    asyncio.run(create_elsewhere(cluster.address, [
        NewTopic(few, 1, 1), NewTopic(lax, 1, 3, topic_configs={"min.insync.replicas": "1"})
    ]))
    with caplog.at_level(logging.WARNING, logger="streams.log.topics"):
        asyncio.run(ensure_topics(cluster.address, [few, lax], partitions=1))
    expected = {few: (1, "1"), lax: (3, "2")}
    assert settled_replication(cluster.address, expected) == expected
    [warning] = [r.getMessage() for r in caplog.records if "kafka-reassign-partitions" in
                 r.getMessage()]
    assert warning.startswith(f"{few} has 1 replica, fewer than the replication factor 3")

    # Two replicas stay in sync once the leader of the log's partition 0 is killed.
    log = names[0]
    leader = asyncio.run(partition_state(cluster.address, log))["leader"]
    victim = pids[leader - 1]
    survivors = [node for node in cluster.nodes if node.node_id != leader]
    bootstrap = ",".join(node.address for node in survivors)

    # Through the gateway's producer and its 5 s produce timeout: the loss costs no 503.
    gateway = Settings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap_servers, "STRIPE_STREAMS_TOPIC_PREFIX": "acme",
        "STRIPE_STREAMS_PARTITIONS": "3", "STRIPE_STREAMS_KAFKA_BROKERS": "3",
    })
    slowest = asyncio.run(append_through_a_node_loss(gateway, victim, keys_of_partition_0(20, 3)))

    assert slowest < gateway.produce_timeout
    after = asyncio.run(partition_state(bootstrap, log))
    assert sorted(after["isr"]) == sorted(node.node_id for node in survivors)
    assert asyncio.run(read_partition(bootstrap, log, 20)) == [str(n).encode() for n in range(20)]

    assert services(cluster, "down", capsys) == [f"{node.name:<9} stopped" for node in survivors]
    assert not any(is_alive(pid) for pid in pids)
