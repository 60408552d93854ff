"""Odd but authentic events never stop a worker, and never hold up the events behind them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from streams.settings import Settings
from tests.integration.test_projection_ordering import envelope_of
from tests.integration.test_projection_writer import customer_events
from tests.integration.worker_support import (
    WorkerProcess,
    logged_events,
    prepare_topics,
    produce,
    read_dead_letters,
    wait_until,
)
from tests.odd_events import corpus, logged_envelope

pytestmark = pytest.mark.integration


def test_each_odd_event_ends_applied_or_dead_lettered_and_the_newer_event_behind_it_applied(
    settings: Settings, tmp_path: Path
) -> None:
    cases = corpus()
    odd = [logged_envelope(case.body) for case in cases]
    newer = [envelope_of(case.newer) for case in cases]
    prepare_topics(settings)
    # The log may hold what the gateway refuses today, so the worker is fed every case.
    asyncio.run(produce(settings, [e for pair in zip(odd, newer, strict=True) for e in pair]))

    with WorkerProcess(settings, tmp_path) as worker:
        wait_until(lambda: logged_events(settings.database_url) >= {e.id for e in newer},
                   90, "every newer event logged", [worker])
        dead = sum(case.outcome == "dead_lettered" for case in cases)
        wait_until(lambda: _count(settings, "ops.dead_letters") == dead, 60,
                   f"{dead} dead letters", [worker])
        later_events, later_customer = customer_events(2, seed=99)
        asyncio.run(produce(settings, [envelope_of(e) for e in later_events]))
        wait_until(lambda: logged_events(settings.database_url) >= {e["id"] for e in later_events},
                   60, "events appended afterwards", [worker])
        assert worker.process is not None and worker.process.poll() is None, worker.log()

    with psycopg.connect(settings.database_url) as conn:
        mirrored = dict(conn.execute("SELECT id, last_event_id FROM stripe.customers").fetchall())
        statuses = dict(conn.execute("SELECT event_id, status FROM ops.event_log").fetchall())
    for case, event, behind in zip(cases, odd, newer, strict=True):
        assert mirrored[case.customer_id] == behind.id, case.name
        assert statuses[behind.id] == "processed", case.name
        if case.gateway_status == 200:
            assert statuses[event.id] == case.outcome, case.name
    assert mirrored[later_customer["id"]] == later_events[-1]["id"]
    letters = asyncio.run(read_dead_letters(settings))
    assert sorted(letter.event.id for letter in letters) == sorted(
        event.id for case, event in zip(cases, odd, strict=True)
        if case.outcome == "dead_lettered"
    )
    assert all(letter.error_message for letter in letters)


def _count(settings: Settings, table: str) -> int:
    try:
        with psycopg.connect(settings.database_url, connect_timeout=3) as conn:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    except psycopg.OperationalError:
        return -1
    return int(row[0]) if row else 0
