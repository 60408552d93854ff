"""A local Apache Kafka cluster (KRaft) of one or three combined broker and controller nodes.

The jars are resolved from Maven Central by ``mvn`` with ``scripts/kafka/pom.xml`` and cached per
version under the state directory; each node's storage is formatted on its first start. A single
node keeps its files in the cluster's home, as it always has; the nodes of a three-node cluster
each keep theirs in ``node-<id>/`` there, with their own ports and storage.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from streams.devtools.services.process import ensure_port_free, read_pid, stop_process
from streams.errors import ConfigurationError, DependencyUnavailable, ServiceError
from streams.log.topics import derived_min_insync, derived_replication, raise_topic_errors
from streams.settings import KAFKA_NODE_COUNTS, REPO_ROOT

POM = REPO_ROOT / "scripts" / "kafka" / "pom.xml"
LOG4J = REPO_ROOT / "scripts" / "kafka" / "log4j.properties"
LOG4J2 = REPO_ROOT / "scripts" / "kafka" / "log4j2.properties"
READY_TIMEOUT = 120.0
READY_TOPIC = "stripe-streams.ready"
"""The topic ``up`` creates, with one replica per node, to prove the cluster takes topics."""

SINGLE_NODE_HEAP_MB = 768
CLUSTER_NODE_HEAP_MB = 384
"""Largest heap of each node of a three-node cluster: three share a small machine."""


@dataclass(frozen=True)
class KafkaNode:
    """One combined broker and controller process: its id, listeners and files."""

    node_id: int
    name: str
    host: str
    port: int
    home: Path
    version: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def data_dir(self) -> Path:
        # Storage formatted by one release is not always readable by another.
        return self.home / f"data-{self.version}"

    @property
    def config_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.home / "kafka.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka.pid"

    def pid(self) -> int | None:
        """Pid of this node's running process, if ``up`` started one that still runs."""
        return read_pid(self.pid_file)


@dataclass(frozen=True)
class LocalKafka:
    """A local cluster: its version, where it keeps its files, its first listener, its size."""

    version: str
    home: Path
    host: str = "127.0.0.1"
    port: int = 9092
    brokers: int = 1

    @property
    def address(self) -> str:
        """The first node's listener, the address of ``KAFKA_BOOTSTRAP_SERVERS``."""
        return f"{self.host}:{self.port}"

    @property
    def bootstrap_servers(self) -> str:
        """Every node's listener: clients reach the cluster while any node runs."""
        return ",".join(node.address for node in self.nodes)

    @property
    def libs(self) -> Path:
        return self.home.parent / "kafka-jars" / self.version

    @property
    def nodes(self) -> list[KafkaNode]:
        """The nodes, each on the two ports after the previous node's (broker, controller)."""
        if self.brokers == 1:
            return [KafkaNode(1, "kafka", self.host, self.port, self.home, self.version)]
        return [
            KafkaNode(
                node_id, f"kafka-{node_id}", self.host, self.port + 2 * (node_id - 1),
                self.home / f"node-{node_id}", self.version,
            )
            for node_id in range(1, self.brokers + 1)
        ]

    @property
    def heap_mb(self) -> int:
        return SINGLE_NODE_HEAP_MB if self.brokers == 1 else CLUSTER_NODE_HEAP_MB

    def resized(self, brokers: int) -> LocalKafka:
        """The cluster of ``brokers`` nodes with this one's version, home and first listener."""
        return replace(self, brokers=brokers)

    def running(self) -> LocalKafka | None:
        """The cluster, of whichever size, that has a node running under this home, if any."""
        for brokers in KAFKA_NODE_COUNTS:
            cluster = self.resized(brokers)
            if any(node.pid() is not None for node in cluster.nodes):
                return cluster
        return None

    def up(self) -> list[int]:
        """Start the nodes that do not run; return every node's pid once the cluster takes a topic.

        A topic is taken once every node has registered as a broker and a topic with one
        replica per node can be created. Refuses, in one line, while a cluster of another size
        runs under the same home.
        """
        running = self.running()
        if running is not None and running.brokers != self.brokers:
            raise ServiceError(
                f"a {running.brokers}-node Kafka cluster is running; 'services down' first"
            )
        pids = {node: pid for node in self.nodes if (pid := node.pid()) is not None}
        stopped = [node for node in self.nodes if node not in pids]
        if not stopped:
            return list(pids.values())
        _require("java", "install Java 17 (apt-get install openjdk-17-jre-headless)")
        for node in stopped:
            for port in (node.port, node.controller_port):
                ensure_port_free(self.host, port, "Kafka", "KAFKA_BOOTSTRAP_SERVERS")
        self.resolve_jars()
        for node in stopped:
            node.home.mkdir(parents=True, exist_ok=True)
            node.config_file.write_text(render_properties(self.server_properties(node)))
        self._format_storage(stopped)
        started = {node: self._start(node) for node in stopped}
        try:
            asyncio.run(self._wait_ready(started))
        except ServiceError:
            self.down()
            raise
        pids.update(started)
        return [pids[node] for node in self.nodes]

    def down(self) -> list[KafkaNode]:
        """Stop every running node under this home, of a cluster of any size; return them."""
        nodes = [node for brokers in KAFKA_NODE_COUNTS for node in self.resized(brokers).nodes]
        live = [node for node in nodes if node.pid() is not None]
        if live:
            # Stopped one after another, the last nodes would wait for a quorum already gone.
            with ThreadPoolExecutor(max_workers=len(live)) as pool:
                list(pool.map(_stop_node, live))
        for node in nodes:
            node.pid_file.unlink(missing_ok=True)
        return live

    def resolve_jars(self) -> None:
        """Resolve the broker jars of this version into the cache, once."""
        marker = self.libs / ".complete"
        if marker.exists():
            return
        _require("mvn", "install Maven (apt-get install maven)")
        self.libs.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [
                "mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
                f"-Dkafka.version={self.version}", f"-DoutputDirectory={self.libs}",
            ],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
            raise ServiceError(
                f"mvn could not resolve Kafka {self.version}: " + " | ".join(tail)
            )
        marker.touch()

    def server_properties(self, node: KafkaNode) -> dict[str, str]:
        """The configuration of ``node``: a voter of the controller quorum and a broker.

        The internal topics get as many replicas as there are nodes (at most 3), and on three
        nodes a write needs two of them, as the project's own topics do.
        """
        replication = derived_replication(self.brokers)
        min_insync = derived_min_insync(replication)
        voters = ",".join(
            f"{other.node_id}@{other.host}:{other.controller_port}" for other in self.nodes
        )
        # A crashed node's partitions have no leader until the active controller fences it,
        # and a crashed controller must first be replaced: with Kafka's defaults (9 s, and 2 s
        # plus an election) that outlasts the gateway's 5 s produce timeout, which answers 503.
        failover = {
            "broker.session.timeout.ms": "2000",
            "broker.heartbeat.interval.ms": "500",
            "controller.quorum.fetch.timeout.ms": "1000",
            "controller.quorum.election.timeout.ms": "500",
        } if self.brokers > 1 else {}
        return {
            **failover,
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{node.address},CONTROLLER://{node.host}:"
            f"{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{node.address}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(node.data_dir),
            "num.partitions": "1",
            "default.replication.factor": str(replication),
            "min.insync.replicas": str(min_insync),
            "offsets.topic.replication.factor": str(replication),
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": str(replication),
            "transaction.state.log.min.isr": str(min_insync),
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "delete.topic.enable": "true",
            "log.retention.hours": "168",
        }

    def java_command(self, node: KafkaNode) -> list[str]:
        """The command line running ``node``, with a heap sized for the cluster's node count."""
        return [
            "java", f"-Xms{self.heap_mb // 3}m", f"-Xmx{self.heap_mb}m", "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{LOG4J}", f"-Dlog4j2.configurationFile={LOG4J2}",
            "-cp", f"{self.libs}/*", "kafka.Kafka", str(node.config_file),
        ]

    def _start(self, node: KafkaNode) -> int:
        with node.log_file.open("ab") as log:
            process = subprocess.Popen(
                self.java_command(node),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        node.pid_file.write_text(f"{process.pid}\n")
        return process.pid

    def _format_storage(self, nodes: Sequence[KafkaNode]) -> None:
        """Format the storage of those ``nodes`` that have none, with the cluster's one id."""
        unformatted = [node for node in nodes if not (node.data_dir / "meta.properties").exists()]
        if not unformatted:
            return
        cluster_id = self._formatted_cluster_id() or new_cluster_id()
        formats = [
            subprocess.Popen(
                [
                    "java", "-cp", f"{self.libs}/*", f"-Dlog4j.configuration=file:{LOG4J}",
                    f"-Dlog4j2.configurationFile={LOG4J2}",
                    # Attached with '=', an id starting with '-' cannot be read as an option.
                    "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                    "-c", str(node.config_file),
                ],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            for node in unformatted
        ]
        outputs = [(format_.communicate()[0], format_.returncode) for format_ in formats]
        for output, returncode in outputs:
            if returncode != 0:
                raise ServiceError(f"formatting Kafka storage failed: {output}")

    def _formatted_cluster_id(self) -> str | None:
        """The cluster id a node's storage already holds: a re-formatted node must rejoin it."""
        for node in self.nodes:
            meta = node.data_dir / "meta.properties"
            if meta.exists():
                for line in meta.read_text().splitlines():
                    if line.startswith("cluster.id="):
                        return line.removeprefix("cluster.id=")
        return None

    async def _wait_ready(self, started: Mapping[KafkaNode, int]) -> None:
        # Connection refusals are expected while the nodes boot; the timeout reports the last.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        deadline = time.monotonic() + READY_TIMEOUT
        reason: str | None = "no answer"
        while time.monotonic() < deadline:
            for node, pid in started.items():
                if read_pid(node.pid_file) != pid:
                    raise ServiceError(f"Kafka exited during start-up; see {node.log_file}")
            reason = await self._unready_reason()
            if reason is None:
                return
            await asyncio.sleep(0.5)
        raise ServiceError(
            f"Kafka at {self.address} did not accept a topic within {READY_TIMEOUT:.0f}s "
            f"({reason}); see {', '.join(str(node.log_file) for node in started)}"
        )

    async def _unready_reason(self) -> str | None:
        """Why the cluster cannot take a topic with a replica on each node yet; None once it can."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.client import AIOKafkaClient
        from aiokafka.errors import KafkaError

        client = AIOKafkaClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5000)
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5000
        )
        try:
            await client.bootstrap()
            registered = len(client.cluster.brokers())
            # A topic left by an earlier start already exists, whoever has registered since.
            if registered < self.brokers:
                return f"{registered} of {self.brokers} brokers registered"
            await admin.start()
            response = await admin.create_topics(
                [NewTopic(READY_TOPIC, num_partitions=1, replication_factor=self.brokers)]
            )
            raise_topic_errors(response.topic_errors)
        # Until every broker has registered, the controller refuses replicas as if for good.
        except (KafkaError, OSError, DependencyUnavailable, ConfigurationError) as exc:
            return repr(exc)
        finally:
            await admin.close()
            await client.close()
        return None


def render_properties(properties: Mapping[str, str]) -> str:
    """A Java properties file of ``properties``, one ``key=value`` a line."""
    return "".join(f"{key}={value}\n" for key, value in properties.items())


def new_cluster_id() -> str:
    """A random KRaft cluster id, drawn as Kafka's ``Uuid.randomUuid`` draws one.

    Like Kafka, it never starts with '-', which command-line tools would read as an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _stop_node(node: KafkaNode) -> None:
    pid = node.pid()
    if pid is not None:
        stop_process(pid, signal.SIGTERM, timeout=30)


def _require(command: str, advice: str) -> None:
    if shutil.which(command) is None:
        raise ServiceError(f"{command} not found: {advice}")


def free_port_block(count: int) -> int:
    """Return a free port on 127.0.0.1 whose ``count - 1`` successors are free too."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if all(_bindable(port + offset) for offset in range(1, count)):
            return port
    raise ServiceError(f"no {count} consecutive free ports on 127.0.0.1")


def free_port_pair() -> int:
    """Return a port whose successor is free too (one node's broker and controller listeners)."""
    return free_port_block(2)


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
