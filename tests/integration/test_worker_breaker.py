"""A family whose events all fail pauses instead of dead-lettering them; other families go on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from projections.pauses import resume_family
from streams.devtools.samples import EventFactory
from streams.settings import Settings
from tests.integration.test_projection_ordering import envelope_of
from tests.integration.worker_support import (
    WorkerProcess,
    logged_events,
    prepare_topics,
    produce,
    read_dead_letters,
    wait_until,
)

pytestmark = pytest.mark.integration
MIN_EVENTS = 5
# A long back-off: only the resume, as `stripe-streams dlq resume` does it, lets the family go on.
BREAKER = {
    "STRIPE_STREAMS_PAUSE_MIN_EVENTS": str(MIN_EVENTS), "STRIPE_STREAMS_PAUSE_BACKOFF": "600",
}
PAUSED = 'stripe_streams_family_paused{family="customers"} 1.0'
RESUMED = 'stripe_streams_family_paused{family="customers"} 0.0'


def _query(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query.encode(), params).fetchall()


def _metrics(worker: WorkerProcess) -> str:
    """The worker's metrics, or nothing while its web server is not listening yet."""
    try:
        return worker.metrics()
    except httpx.HTTPError:
        return ""


async def _resume(url: str, family: str) -> bool:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await resume_family(conn, family)


def test_a_broken_family_pauses_while_others_go_on_and_continues_once_resumed(
    settings: Settings, tmp_path: Path
) -> None:
    url = settings.database_url
    factory = EventFactory(seed=41)
    customers = [
        envelope_of(factory.event("customer.created", factory.customer(email=f"c{n}@broken.test")))
        for n in range(12)
    ]
    products = [envelope_of(factory.event("product.created", factory.product())) for _ in range(5)]
    # A deploy that breaks the customers family: PostgreSQL refuses every one of its rows.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE stripe.customers ADD CONSTRAINT broken_by_deploy "
            "CHECK (email NOT LIKE '%@broken.test')"
        )
    prepare_topics(settings)
    asyncio.run(produce(settings, customers))

    with WorkerProcess(settings, tmp_path, **BREAKER) as worker:
        wait_until(lambda: PAUSED in _metrics(worker), 60, "customers paused", [worker])
        [(reason,)] = _query(url, "SELECT reason FROM ops.family_pauses WHERE family = 'customers'")
        assert reason.startswith(f"{MIN_EVENTS} of {MIN_EVENTS} events failed every attempt")
        assert 'stripe_streams_family_paused{family="catalog"} 0.0' in worker.metrics()

        asyncio.run(produce(settings, products))
        wait_until(lambda: logged_events(url) >= {e.id for e in products}, 60,
                   "the catalog's events applied while customers are paused", [worker])
        assert _query(url, "SELECT count(*) FROM ops.dead_letters") == [(MIN_EVENTS - 1,)]
        assert _query(url, "SELECT count(*) FROM stripe.customers") == [(0,)]
        assert PAUSED in worker.metrics()

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE stripe.customers DROP CONSTRAINT broken_by_deploy")
        assert asyncio.run(_resume(url, "customers"))
        wait_until(lambda: logged_events(url) >= {e.id for e in customers}, 30,
                   "the customers' events applied once resumed", [worker])
        wait_until(lambda: RESUMED in worker.metrics(), 10, "customers resumed", [worker])
        log = worker.log()

    statuses = dict(_query(url, "SELECT event_id, status FROM ops.event_log"))
    dead = [e.id for e in customers if statuses[e.id] == "dead_lettered"]
    assert len(dead) == MIN_EVENTS - 1
    # The event that paused the family, and those behind it, were applied once it resumed.
    assert [statuses[e.id] for e in customers if e.id not in dead] == ["processed"] * (
        len(customers) - len(dead)
    )
    assert sorted(letter.event.id for letter in asyncio.run(read_dead_letters(settings))) == sorted(
        dead
    )
    assert _query(url, "SELECT count(*) FROM ops.family_pauses") == [(0,)]
    assert log.count("customers: paused until") == 1
    assert "'stripe-streams dlq resume customers'" in log
    assert "customers: resumed: its pause was lifted" in log
