"""Reading back what the tests appended to the log, and running batch-job commands."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.log.codec import decode_event
from streams.log.envelope import EventEnvelope
from streams.settings import Settings
from tests.integration.worker_support import environment


async def _read_log(settings: Settings) -> list[tuple[int, int, EventEnvelope]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(settings.topic(), p)
               for p in consumer.partitions_for_topic(settings.topic()) or ()]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        found: list[tuple[int, int, EventEnvelope]] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                found.extend(
                    (tp.partition, r.offset, decode_event(r.value)) for r in records if r.value
                )
        return sorted(found, key=lambda f: (f[0], f[1]))
    finally:
        await consumer.stop()


def read_log(settings: Settings) -> list[tuple[int, int, EventEnvelope]]:
    """Every envelope of ``<prefix>.events`` with its partition and offset, in log order."""
    return asyncio.run(_read_log(settings))


def log_positions(settings: Settings) -> list[tuple[int, int, str]]:
    """(partition, offset, event id) of every event in ``<prefix>.events``."""
    return [(partition, offset, envelope.id) for partition, offset, envelope in read_log(settings)]


def run_command(
    settings: Settings, tmp_path: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``stripe-streams ARGS`` with the test's settings; return its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args], env=environment(settings, **env),
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )


def start_command(
    settings: Settings, tmp_path: Path, *args: str, **env: str
) -> subprocess.Popen[str]:
    """Start ``stripe-streams ARGS`` with the test's settings, its output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", *args], env=environment(settings, **env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )


def query(url: str, statement: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return [tuple(row) for row in conn.execute(statement, params).fetchall()]
