"""Killing a worker (SIGKILL) at any moment and restarting it gives the same tables."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
import pytest

from streams.devtools.samples import EventFactory
from streams.settings import Settings
from tests.integration.test_projection_ordering import (
    apply_in_batches,
    deliver,
    empty_tables,
    envelope_of,
    item_churn,
    mirror_snapshot,
)
from tests.integration.worker_support import (
    WorkerProcess,
    logged_events,
    prepare_topics,
    produce,
    wait_until,
)

pytestmark = pytest.mark.integration


def many_stories(customers: int, seed: int = 23) -> list[object]:
    factory = EventFactory(seed=seed)
    events = []
    for n in range(customers):
        events.extend(factory.customer_lifecycle(periods=2) if n % 4 else item_churn(factory))
    return [envelope_of(event) for event in events]


def count_logged(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM ops.event_log").fetchone()
    return int(row[0]) if row else 0


def test_a_worker_killed_mid_batch_and_restarted_gives_the_same_tables(
    settings: Settings, tmp_path: Path
) -> None:
    story = many_stories(100)
    asyncio.run(apply_in_batches(settings.database_url, deliver(story)))
    expected = mirror_snapshot(settings.database_url)
    empty_tables(settings.database_url)
    prepare_topics(settings)
    asyncio.run(produce(settings, story))
    small_batches = {"STRIPE_STREAMS_BATCH_SIZE": "25", "STRIPE_STREAMS_BATCH_TIMEOUT_MS": "20"}

    for run, kill_after in enumerate((len(story) // 4, len(story) // 2)):
        worker = WorkerProcess(settings, tmp_path, f"worker-{run}", **small_batches).start()
        deadline = time.monotonic() + 120
        while count_logged(settings.database_url) < kill_after:
            assert time.monotonic() < deadline, worker.log()[-4000:]
            time.sleep(0.05)
        worker.kill()
        assert count_logged(settings.database_url) < len(story), "killed too late to prove much"

    with WorkerProcess(settings, tmp_path, "worker-last", **small_batches) as worker:
        wait_until(lambda: logged_events(settings.database_url) >= {e.id for e in story}, 120,
                   "every event after the restarts", [worker])

    assert mirror_snapshot(settings.database_url) == expected
    with psycopg.connect(settings.database_url) as conn:
        statuses = conn.execute("SELECT DISTINCT status FROM ops.event_log").fetchall()
        dead = conn.execute("SELECT count(*) FROM ops.dead_letters").fetchone()
        recounted = conn.execute(
            "SELECT count(*) FROM ops.event_log WHERE deliveries <> 1"
        ).fetchone()
        duplicates = conn.execute(
            "SELECT count(*) FROM ops.event_trail WHERE stage = 'duplicate'"
        ).fetchone()
    assert statuses == [("processed",)]
    assert dead == (0,)
    # Each event was appended once: what the router forwarded again after a kill is no delivery.
    assert recounted == (0,)
    assert duplicates == (0,)
