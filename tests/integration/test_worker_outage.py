"""PostgreSQL down for 20 s during a stream: no dead letters, no loss, and the worker catches up.

The worker writes to a private PostgreSQL cluster of this test, which is stopped and started
again while events keep arriving; the shared one only holds the in-order reference tables.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path

import psycopg
import pytest

from projections.migrations import migrate
from streams.devtools.services.postgres import LocalPostgres
from streams.settings import Settings
from tests.integration.test_projection_ordering import (
    apply_in_batches,
    deliver,
    mirror_snapshot,
)
from tests.integration.test_worker_crash import many_stories
from tests.integration.worker_support import (
    WorkerProcess,
    logged_events,
    prepare_topics,
    produce,
    read_dead_letters,
    wait_until,
)

pytestmark = pytest.mark.integration
OUTAGE_SECONDS = 20


def test_a_postgresql_outage_is_waited_out_without_dead_letters_or_loss(
    settings: Settings, private_postgres: LocalPostgres, tmp_path: Path
) -> None:
    story = many_stories(40, seed=31)
    asyncio.run(apply_in_batches(settings.database_url, deliver(story)))
    expected = mirror_snapshot(settings.database_url)
    private_postgres.up()
    migrate(private_postgres.url)
    private = dataclasses.replace(settings, database_url=private_postgres.url)
    prepare_topics(private)
    chunks = [story[i : i + 20] for i in range(0, len(story), 20)]
    outage = threading.Event()

    def stream_events() -> None:
        """Keep appending events before, during and after the outage."""
        for n, chunk in enumerate(chunks):
            if n == len(chunks) // 4:
                outage.set()
            asyncio.run(produce(private, chunk))
            time.sleep(40 / len(chunks))

    with WorkerProcess(private, tmp_path) as worker:
        appender = threading.Thread(target=stream_events)
        appender.start()
        try:
            outage.wait(timeout=60)
            wait_until(lambda: bool(logged_events(private.database_url)), 60,
                       "the worker to start applying", [worker])
            private_postgres.down()
            time.sleep(OUTAGE_SECONDS)
            assert worker.process is not None and worker.process.poll() is None
            private_postgres.up()
        finally:
            appender.join()
        wait_until(lambda: logged_events(private.database_url) >= {e.id for e in story}, 180,
                   "the worker to catch up after the outage", [worker])
        log = worker.log()

    assert "PostgreSQL unavailable" in log
    assert mirror_snapshot(private.database_url) == expected
    assert asyncio.run(read_dead_letters(private)) == []
    with psycopg.connect(private.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM ops.dead_letters").fetchone() == (0,)
        assert conn.execute(
            "SELECT DISTINCT status FROM ops.event_log"
        ).fetchall() == [("processed",)]
