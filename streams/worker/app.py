"""The Faust app of the worker, built from Settings.

Processing guarantee is ``at_least_once`` and every agent keeps one batch in flight; exactly-once
effects come from PostgreSQL (positions stored with the rows, event ids deduplicated, guarded
upserts), not from Kafka transactions. Messages are consumed and produced as raw bytes: the
Avro codec is applied by the agents, which must be able to dead-letter a message that does not
decode.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import faust
from aiokafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST

from streams.outages import KAFKA, outages
from streams.settings import Settings
from streams.worker.agents import register_agents
from streams.worker.runtime import WorkerRuntime
from streams.worker.sensor import LivenessMonitor
from streams.worker.transport import Transport

# Seconds Kafka has to answer a readiness check: probes of orchestrators give up after a few.
_KAFKA_ANSWER = 2.0


def create_app(
    settings: Settings,
    *,
    web_port: int | None = None,
    runtime: WorkerRuntime | None = None,
) -> faust.App:
    """Return the worker's Faust app with the router and every family agent registered.

    The app id (and Kafka consumer group) is ``settings.group_id``; the web server on
    ``web_port`` (default ``settings.worker_web_port``) serves the metrics at ``/metrics``, the
    liveness at ``/healthz`` and the readiness at ``/readyz``.
    ``runtime`` replaces the PostgreSQL pool and Kafka producer the agents use (unit tests).
    """
    app = faust.App(
        settings.group_id,
        broker=[f"kafka://{server.strip()}" for server in
                settings.kafka_bootstrap_servers.split(",")],
        processing_guarantee="at_least_once",
        store="memory://",
        autodiscover=False,
        topic_partitions=settings.topic_partitions,
        # No tables, so no leader election topic is needed.
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=True,
        web_port=web_port or settings.worker_web_port,
        # Faust wants a data directory even without tables: one empty directory, shared by every
        # worker, outside the working directory.
        datadir=Path(tempfile.gettempdir()) / "stripe-streams-worker",
        # The broker commits only what agents acknowledged; committing often shortens the
        # redelivery after a crash (the skipped events), nothing else depends on it.
        broker_commit_interval=1.0,
        # A worker that died (SIGKILL, lost host) hands its partitions over within seconds.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        Monitor=LivenessMonitor,
        # Messages held per topic ahead of its agent: two batches of the default size. Their
        # bytes are bounded by the transport's delivery budget, whatever the event size.
        stream_buffer_maxsize=1024,
    )
    # Before anything asks the app for its transport (topics do): it sizes the fetches and
    # delivers them to the agents with less overhead than Faust's own.
    app.transport = Transport(app.conf.broker_consumer, app, buffer_bytes=settings.buffer_bytes)
    runtime = runtime or WorkerRuntime(settings)
    app.add_dependency(runtime)
    register_agents(app, settings, runtime)

    metrics = runtime.metrics

    @app.page("/metrics")
    async def exposition(view: faust.web.View, request: Any) -> Any:
        return view.bytes(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def liveness(view: faust.web.View, request: Any) -> Any:
        """200 while the process serves requests, whatever its dependencies do (see /readyz)."""
        return view.json({"status": "ok"})

    @app.page("/readyz")
    async def readiness(view: faust.web.View, request: Any) -> Any:
        """200 while no dependency is in an outage, else 503 naming each one, since when and why.

        Kafka is asked for its metadata on each request, as an idle worker would not notice
        it gone; PostgreSQL's state is the one the worker's last connections left.
        """
        await _ask_kafka(runtime)
        missing = outages.missing()
        body: dict[str, object] = {"ready": not missing, "missing": sorted(missing)}
        body.update((name, outage.describe()) for name, outage in missing.items())
        return view.json(body, status=503 if missing else 200)

    return app


async def _ask_kafka(runtime: WorkerRuntime) -> None:
    """Ask Kafka for its metadata with the worker's producer; an outage starts or ends."""
    try:
        client = runtime.producer.client
    except RuntimeError:
        return  # Not started yet: starting it reports its own failures.
    try:
        async with asyncio.timeout(_KAFKA_ANSWER):
            await client.fetch_all_metadata()
    except (TimeoutError, KafkaError, OSError) as exc:
        outages.failed(KAFKA, exc)
    else:
        outages.recovered(KAFKA)
