"""Running real `stripe-streams worker` processes in tests, feeding them and watching the tables."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.log.codec import decode_dead_letter, encode_event
from streams.log.envelope import DeadLetter, EventEnvelope
from streams.log.topics import MAX_MESSAGE_BYTES, ensure_topics, worker_topics
from streams.settings import Settings

# Fast retries keep poison tests short; outages are waited out whatever these say.
FAST_RETRIES = {
    "STRIPE_STREAMS_MAX_ATTEMPTS": "2",
    "STRIPE_STREAMS_RETRY_BACKOFF": "0.1",
    "STRIPE_STREAMS_RETRY_BACKOFF_MAX": "2",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that gives a worker process these settings."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": settings.database_url,
        "STRIPE_STREAMS_TOPIC_PREFIX": settings.topic_prefix,
        "STRIPE_STREAMS_PARTITIONS": str(settings.topic_partitions),
        **FAST_RETRIES,
        **extra,
    }


class WorkerProcess:
    """One `stripe-streams worker` subprocess, its web port and its log file."""

    def __init__(self, settings: Settings, log_dir: Path, name: str = "worker", **env: str):
        self.port = free_port()
        self.log_path = log_dir / f"{name}.log"
        self._env = environment(settings, **env)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--web-port", str(self.port)],
                env=self._env, stdout=log, stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no commit, nothing flushed."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM and wait for a graceful exit; return the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def prepare_topics(settings: Settings) -> None:
    asyncio.run(
        ensure_topics(
            settings.kafka_bootstrap_servers, worker_topics(settings.topic_prefix),
            settings.topic_partitions,
        )
    )


async def produce(settings: Settings, envelopes: Iterable[EventEnvelope]) -> None:
    """Append envelopes to the log as the gateway does: keyed by object id, acks=all."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all",
        enable_idempotence=True, linger_ms=5, max_request_size=MAX_MESSAGE_BYTES,
    )
    await producer.start()
    try:
        sent = [
            await producer.send(settings.topic(), encode_event(envelope), key=envelope.key)
            for envelope in envelopes
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def read_dead_letters(settings: Settings, quiet: float = 3.0) -> list[DeadLetter]:
    """Every message of the dead-letter topic, read until none arrives for ``quiet`` seconds."""
    consumer = AIOKafkaConsumer(
        settings.topic("dlq"), bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )
    await consumer.start()
    letters = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=int(quiet * 1000))
            if not batch:
                return letters
            for messages in batch.values():
                letters.extend(decode_dead_letter(m.value) for m in messages if m.value)
    finally:
        await consumer.stop()


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, workers: Iterable[WorkerProcess] = ()
) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` (with the workers' logs) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    logs = "\n".join(f"--- {w.log_path.name}\n{w.log()[-4000:]}" for w in workers)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


def logged_events(url: str) -> set[str]:
    """Ids of the events the event log holds (empty while PostgreSQL is unreachable)."""
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            return {event_id for (event_id,) in conn.execute("SELECT event_id FROM ops.event_log")}
    except psycopg.OperationalError:
        return set()
