"""A single-node Apache Kafka (KRaft, combined broker and controller) from the official jars.

The jars are resolved from Maven Central by ``mvn`` with ``scripts/kafka/pom.xml`` and cached per
version under the state directory; storage is formatted on first start.
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
from dataclasses import dataclass
from pathlib import Path

from streams.devtools.services.process import ensure_port_free, read_pid, stop_process
from streams.errors import ConfigurationError, DependencyUnavailable, ServiceError
from streams.log.topics import raise_topic_errors
from streams.settings import REPO_ROOT

POM = REPO_ROOT / "scripts" / "kafka" / "pom.xml"
LOG4J = REPO_ROOT / "scripts" / "kafka" / "log4j.properties"
LOG4J2 = REPO_ROOT / "scripts" / "kafka" / "log4j2.properties"
READY_TIMEOUT = 120.0


@dataclass(frozen=True)
class LocalKafka:
    """One local broker: its version, where it keeps its files, and its listener address."""

    version: str
    home: Path
    host: str = "127.0.0.1"
    port: int = 9092

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def libs(self) -> Path:
        return self.home.parent / "kafka-jars" / self.version

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
        """Pid of the running broker this object started, if any."""
        return read_pid(self.pid_file)

    def up(self) -> int:
        """Start the broker unless it runs; return its pid once a client can create a topic."""
        running = self.pid()
        if running is not None:
            return running
        _require("java", "install Java 17 (apt-get install openjdk-17-jre-headless)")
        ensure_port_free(self.host, self.port, "Kafka", "KAFKA_BOOTSTRAP_SERVERS")
        self.resolve_jars()
        self.home.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._format_storage()
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                [
                    "java", "-Xms256m", "-Xmx768m", "-XX:+UseG1GC",
                    "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
                    f"-Dlog4j.configuration=file:{LOG4J}",
                    f"-Dlog4j2.configurationFile={LOG4J2}",
                    "-cp", f"{self.libs}/*", "kafka.Kafka", str(self.config_file),
                ],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{process.pid}\n")
        try:
            asyncio.run(self._wait_ready(process.pid))
        except ServiceError:
            self.down()
            raise
        return process.pid

    def down(self) -> bool:
        """Stop the broker started by :meth:`up`; return whether one was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        stop_process(pid, signal.SIGTERM, timeout=30)
        self.pid_file.unlink(missing_ok=True)
        return True

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

    def _write_config(self) -> None:
        controller = self.port + 1
        self.config_file.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{self.host}:{controller}",
                    f"listeners=PLAINTEXT://{self.host}:{self.port},"
                    f"CONTROLLER://{self.host}:{controller}",
                    f"advertised.listeners=PLAINTEXT://{self.address}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={self.data_dir}",
                    "num.partitions=1",
                    "default.replication.factor=1",
                    "min.insync.replicas=1",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=10",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                    "delete.topic.enable=true",
                    "log.retention.hours=168",
                    "",
                ]
            )
        )

    def _format_storage(self) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        result = subprocess.run(
            [
                "java", "-cp", f"{self.libs}/*", f"-Dlog4j.configuration=file:{LOG4J}",
                f"-Dlog4j2.configurationFile={LOG4J2}",
                # Attached with '=', an id starting with '-' cannot be read as an option.
                "kafka.tools.StorageTool", "format", f"--cluster-id={new_cluster_id()}",
                "-c", str(self.config_file),
            ],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise ServiceError(f"formatting Kafka storage failed: {result.stdout}{result.stderr}")

    async def _wait_ready(self, pid: int) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import KafkaError

        # Connection refusals are expected while the broker boots; the timeout reports the last.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        deadline = time.monotonic() + READY_TIMEOUT
        last_error = "no answer"
        while time.monotonic() < deadline:
            if read_pid(self.pid_file) != pid:
                raise ServiceError(f"Kafka exited during start-up; see {self.log_file}")
            admin = AIOKafkaAdminClient(bootstrap_servers=self.address, request_timeout_ms=5000)
            try:
                await admin.start()
                response = await admin.create_topics(
                    [NewTopic("stripe-streams.ready", num_partitions=1, replication_factor=1)]
                )
                raise_topic_errors(response.topic_errors)
                return
            # Until the broker has registered, its controller refuses topics as if for good.
            except (KafkaError, OSError, DependencyUnavailable, ConfigurationError) as exc:
                last_error = repr(exc)
            finally:
                await admin.close()
            await asyncio.sleep(0.5)
        raise ServiceError(
            f"Kafka at {self.address} did not accept a topic within {READY_TIMEOUT:.0f}s "
            f"({last_error}); see {self.log_file}"
        )


def new_cluster_id() -> str:
    """A random KRaft cluster id, drawn as Kafka's ``Uuid.randomUuid`` draws one.

    Like Kafka, it never starts with '-', which command-line tools would read as an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _require(command: str, advice: str) -> None:
    if shutil.which(command) is None:
        raise ServiceError(f"{command} not found: {advice}")


def free_port_pair() -> int:
    """Return a port whose successor is free too (broker and controller listeners)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        with socket.socket() as second:
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise ServiceError("no two consecutive free ports on 127.0.0.1")

