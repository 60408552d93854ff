"""The local Kafka cluster `services up` starts: its nodes' configuration, the cluster id it
formats their storage with, and its refusal to start beside a cluster of another size."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.cli import main
from streams.devtools.services import kafka
from streams.devtools.services.kafka import LocalKafka
from streams.devtools.services.process import is_alive
from streams.errors import ConfigurationError, ServiceError
from streams.settings import Settings


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka's tools read an argument starting with '-' as an option, so Kafka never draws one."""
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=bytes(range(16)))])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(draws))

    assert kafka.new_cluster_id() == "AAECAwQFBgcICQoLDA0ODw"


def test_a_single_node_is_its_own_quorum_with_unreplicated_internal_topics(
    tmp_path: Path,
) -> None:
    single = LocalKafka(version="3.9.1", home=tmp_path / "kafka")

    [node] = single.nodes
    properties = single.server_properties(node)

    assert (node.name, node.address, node.home) == ("kafka", "127.0.0.1:9092", tmp_path / "kafka")
    assert node.data_dir == tmp_path / "kafka" / "data-3.9.1"
    assert properties["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert properties["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert {key: properties[key] for key in REPLICATION_KEYS} == dict.fromkeys(
        REPLICATION_KEYS, "1"
    )
    assert "-Xmx768m" in single.java_command(node)
    assert "broker.session.timeout.ms" not in properties


REPLICATION_KEYS = [
    "default.replication.factor",
    "offsets.topic.replication.factor",
    "transaction.state.log.replication.factor",
    "min.insync.replicas",
    "transaction.state.log.min.isr",
]


def test_three_nodes_form_one_quorum_each_on_its_own_ports_and_storage(tmp_path: Path) -> None:
    cluster = LocalKafka(version="3.9.1", home=tmp_path / "kafka", port=19092, brokers=3)

    configs = {node.name: cluster.server_properties(node) for node in cluster.nodes}

    assert list(configs) == ["kafka-1", "kafka-2", "kafka-3"]
    assert [config["listeners"] for config in configs.values()] == [
        f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{port + 1}"
        for port in (19092, 19094, 19096)
    ]
    assert {config["controller.quorum.voters"] for config in configs.values()} == {
        "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
    }
    assert [config["node.id"] for config in configs.values()] == ["1", "2", "3"]
    assert [config["log.dirs"] for config in configs.values()] == [
        str(tmp_path / "kafka" / f"node-{n}" / "data-3.9.1") for n in (1, 2, 3)
    ]
    for config in configs.values():
        assert [config[key] for key in REPLICATION_KEYS] == ["3", "3", "3", "2", "2"]
        # Fenced before the gateway's produce timeout: failover costs no 503.
        assert int(config["broker.session.timeout.ms"]) < 5000
    assert cluster.bootstrap_servers == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"
    assert all("-Xmx384m" in cluster.java_command(node) for node in cluster.nodes)


def test_a_properties_file_holds_one_setting_a_line() -> None:
    assert kafka.render_properties({"node.id": "2", "log.dirs": "/d"}) == "node.id=2\nlog.dirs=/d\n"


@pytest.fixture
def fake_three_nodes(tmp_path: Path) -> Iterator[LocalKafka]:
    """A three-node cluster whose pid files name live stand-in processes."""
    cluster = LocalKafka(version="3.9.1", home=tmp_path / "kafka", port=19092, brokers=3)
    processes = [subprocess.Popen(["sleep", "60"]) for _ in cluster.nodes]
    for node, process in zip(cluster.nodes, processes, strict=True):
        node.home.mkdir(parents=True)
        node.pid_file.write_text(f"{process.pid}\n")
    yield cluster
    for process in processes:
        process.kill()
        process.wait()


def test_up_with_another_size_than_the_running_cluster_says_so_in_one_line(
    fake_three_nodes: LocalKafka,
) -> None:
    with pytest.raises(ServiceError) as refused:
        fake_three_nodes.resized(1).up()

    assert str(refused.value) == "a 3-node Kafka cluster is running; 'services down' first"


def test_status_and_down_act_on_the_running_cluster_whatever_size_is_set(
    fake_three_nodes: LocalKafka, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STRIPE_STREAMS_STATE_DIR", str(fake_three_nodes.home.parent))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", fake_three_nodes.address)
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:1/none")
    pids = [node.pid() for node in fake_three_nodes.nodes]

    assert main(["services", "status"]) == 0
    status = [line for line in capsys.readouterr().out.splitlines() if line.startswith("kafka")]
    assert main(["services", "down", "--brokers", "1"]) == 0
    down = capsys.readouterr().out.splitlines()

    assert status == [
        f"{node.name}   {node.address}  pid {pid}  running  log {node.log_file}"
        for node, pid in zip(fake_three_nodes.nodes, pids, strict=True)
    ]
    assert down == [
        "kafka-1   stopped", "kafka-2   stopped", "kafka-3   stopped", "postgres  was not running"
    ]
    assert not any(is_alive(pid) for pid in pids if pid is not None)


@pytest.mark.parametrize(
    ("raw", "said"),
    [("2", "must be 1 or 3, got 2"), ("0", "must be a positive integer, got 0"),
     ("three", "must be an integer, got 'three'")],
)
def test_a_cluster_size_other_than_one_or_three_is_refused(raw: str, said: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env({"STRIPE_STREAMS_KAFKA_BROKERS": raw})

    assert str(refused.value) == f"STRIPE_STREAMS_KAFKA_BROKERS {said}"


def test_one_node_is_started_unless_set() -> None:
    assert Settings.from_env({}).kafka_brokers == 1
    assert Settings.from_env({"STRIPE_STREAMS_KAFKA_BROKERS": "3"}).kafka_brokers == 3
