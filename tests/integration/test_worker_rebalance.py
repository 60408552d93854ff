"""Two workers in one consumer group share the partitions, and rebalances lose nothing."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import psycopg
import pytest

from streams.settings import Settings
from tests.integration.test_projection_ordering import (
    apply_in_batches,
    deliver,
    empty_tables,
    mirror_snapshot,
)
from tests.integration.test_worker_crash import many_stories
from tests.integration.worker_support import (
    WorkerProcess,
    logged_events,
    prepare_topics,
    produce,
    wait_until,
)

pytestmark = pytest.mark.integration


def assigned(worker: WorkerProcess) -> set[tuple[str, str]]:
    """The (topic, partition) pairs the worker reports a consumer lag for: its assignment."""
    return set(re.findall(
        r'stripe_streams_consumer_lag\{partition="(\d+)",topic="([^"]+)"\}', worker.metrics()
    ))


def processed(worker: WorkerProcess) -> float:
    return sum(
        float(value) for value in re.findall(
            r'stripe_streams_events_processed_total\{[^}]*outcome="processed"[^}]*\} (\S+)',
            worker.metrics(),
        )
    )


def test_two_workers_share_partitions_and_rebalances_lose_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    story = many_stories(60, seed=41)
    asyncio.run(apply_in_batches(settings.database_url, deliver(story)))
    expected = mirror_snapshot(settings.database_url)
    empty_tables(settings.database_url)
    prepare_topics(settings)
    thirds = [story[: len(story) // 3], story[len(story) // 3 : 2 * len(story) // 3],
              story[2 * len(story) // 3 :]]
    url = settings.database_url

    first = WorkerProcess(settings, tmp_path, "first").start()
    second = WorkerProcess(settings, tmp_path, "second")
    try:
        asyncio.run(produce(settings, thirds[0]))
        wait_until(lambda: len(logged_events(url)) == len(thirds[0]), 90,
                   "the first worker alone", [first])
        second.start()
        wait_until(lambda: bool(assigned(first)) and bool(assigned(second))
                   and not assigned(first) & assigned(second), 90,
                   "both workers to hold disjoint partitions", [first, second])
        asyncio.run(produce(settings, thirds[1]))
        wait_until(lambda: len(logged_events(url)) == len(thirds[0]) + len(thirds[1]), 90,
                   "the second third, shared", [first, second])
        shares = (processed(first), processed(second))
        assert first.stop() == 0
        asyncio.run(produce(settings, thirds[2]))
        wait_until(lambda: logged_events(url) >= {e.id for e in story}, 90,
                   "the second worker alone to finish", [second])
    finally:
        first.stop()
        second.stop()

    assert all(share > 0 for share in shares)
    assert mirror_snapshot(url) == expected
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT DISTINCT status FROM ops.event_log").fetchall() == [
            ("processed",)
        ]
        assert conn.execute("SELECT count(*) FROM ops.dead_letters").fetchone() == (0,)
