"""A real worker process between a real Kafka log and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import psycopg
import pytest

from streams.devtools.samples import EventFactory
from streams.log.codec import encode_event
from streams.log.envelope import EventEnvelope
from streams.log.routing import FAMILIES
from streams.settings import Settings
from tests.integration.test_projection_ordering import (
    STORY,
    apply_in_batches,
    deliver,
    empty_tables,
    envelope_of,
    mirror_snapshot,
)
from tests.integration.test_projection_writer import customer_events
from tests.integration.worker_support import (
    WorkerProcess,
    logged_events,
    prepare_topics,
    produce,
    wait_until,
)

pytestmark = pytest.mark.integration


def thin_event() -> EventEnvelope:
    return envelope_of(EventFactory(seed=3).thin_event())


def test_the_log_reaches_the_mirrors_as_in_order_application_does(
    settings: Settings, tmp_path: Path
) -> None:
    asyncio.run(apply_in_batches(settings.database_url, deliver(STORY)))
    expected = mirror_snapshot(settings.database_url)
    empty_tables(settings.database_url)
    extra = thin_event()
    prepare_topics(settings)
    asyncio.run(produce(settings, [*STORY, extra]))

    with WorkerProcess(settings, tmp_path) as worker:
        wanted = {e.id for e in STORY} | {extra.id}
        wait_until(lambda: logged_events(settings.database_url) >= wanted, 90,
                   "every event in ops.event_log", [worker])
        lag = f'stripe_streams_consumer_lag{{partition="0",topic="{settings.topic()}"}} 0.0'
        wait_until(lambda: lag in worker.metrics(), 30, "the consumer lag", [worker])
        metrics = worker.metrics()
        assert worker.stop() == 0

    assert mirror_snapshot(settings.database_url) == expected
    with psycopg.connect(settings.database_url) as conn:
        unknown = conn.execute(
            "SELECT family, status, deliveries FROM ops.event_log WHERE event_id = %s", (extra.id,)
        ).fetchone()
        positions = conn.execute(
            "SELECT count(*) FROM ops.projection_offsets WHERE topic LIKE %s",
            (f"{settings.topic_prefix}.events.%",),
        ).fetchone()
    assert unknown == ("other", "unhandled", 1)
    assert positions is not None and positions[0] > 0
    created = sum(e.type == "customer.created" for e in STORY)
    assert (
        'stripe_streams_events_processed_total{family="customers",outcome="processed",'
        f'type="customer.created"}} {created}.0'
    ) in metrics
    assert 'stripe_streams_events_processed_total{family="other",outcome="unhandled"' in metrics
    for name in ("stripe_streams_event_lag_seconds_bucket{family=",
                 "stripe_streams_batch_size_bucket{family=",
                 "stripe_streams_dead_letters_open 0.0"):
        assert name in metrics


def test_events_appended_while_the_worker_runs_are_applied(
    settings: Settings, tmp_path: Path
) -> None:
    prepare_topics(settings)
    with WorkerProcess(settings, tmp_path) as worker:
        asyncio.run(produce(settings, STORY[:20]))
        wait_until(lambda: len(logged_events(settings.database_url)) == 20, 90,
                   "the first events", [worker])
        asyncio.run(produce(settings, STORY[20:]))
        wait_until(lambda: len(logged_events(settings.database_url)) == len(STORY), 90,
                   "the later events", [worker])


def test_a_worker_that_cannot_write_stops_without_losing_its_batch(
    settings: Settings, tmp_path: Path
) -> None:
    # A table missing is no poison event: dead-lettering every customer event would be wrong.
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("ALTER TABLE stripe.customers RENAME TO customers_elsewhere")
    customers = [e for e in STORY if e.type in ("customer.created", "customer.updated")]
    prepare_topics(settings)
    asyncio.run(produce(settings, customers))

    stopped = WorkerProcess(settings, tmp_path, "stopped").start()
    assert stopped.process is not None
    code = stopped.process.wait(timeout=120)

    assert code != 0
    assert "cannot settle its batch" in stopped.log()
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("ALTER TABLE stripe.customers_elsewhere RENAME TO customers")
        assert conn.execute("SELECT count(*) FROM ops.dead_letters").fetchone() == (0,)
    with WorkerProcess(settings, tmp_path, "restarted") as worker:
        wait_until(lambda: logged_events(settings.database_url) >= {e.id for e in customers},
                   90, "the customer events after the table is back", [worker])


def test_the_largest_event_the_gateway_accepts_passes_the_router(
    settings: Settings, tmp_path: Path
) -> None:
    events, customer = customer_events(1)
    # A body just under the gateway's 1 MiB limit: with its envelope the message is above 1 MiB.
    events[0]["data"]["object"]["metadata"] = {"notes": ""}
    notes = 1024 * 1024 - 16 - len(json.dumps(events[0]))
    events[0]["data"]["object"]["metadata"] = {"notes": "x" * notes}
    large = envelope_of(events[0])
    assert len(encode_event(large)) > 1024 * 1024
    prepare_topics(settings)
    asyncio.run(produce(settings, [large]))

    with WorkerProcess(settings, tmp_path) as worker:
        wait_until(lambda: large.id in logged_events(settings.database_url), 90,
                   "the large event", [worker])

    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT length(data->'metadata'->>'notes') FROM stripe.customers WHERE id = %s",
            (customer["id"],),
        ).fetchone()
    assert row == (notes,)


def test_a_started_worker_holds_its_connections_before_the_first_event(
    settings: Settings, tmp_path: Path
) -> None:
    """One per family agent and one for dead letters: no first batch waits to connect."""
    prepare_topics(settings)

    def connections() -> int:
        with psycopg.connect(settings.database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'stripe-streams'"
            ).fetchone()
        return int(row[0]) if row else 0

    with WorkerProcess(settings, tmp_path) as worker:
        wait_until(lambda: connections() == len(FAMILIES) + 1, 60, "the connections", [worker])
    assert not logged_events(settings.database_url)
