"""`stripe-streams rebuild`: the log projected anew beside the live tables, swapped in live."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from streams.devtools.samples import EventFactory
from streams.log.envelope import EventEnvelope
from streams.settings import Settings
from tests.integration.log_support import log_positions, query, run_command, start_command
from tests.integration.test_projection_ordering import (
    apply_in_batches,
    deliver,
    empty_tables,
    envelope_of,
    item_churn,
    mirror_snapshot,
)
from tests.integration.test_worker_crash import count_logged
from tests.integration.worker_support import (
    WorkerProcess,
    logged_events,
    prepare_topics,
    produce,
    wait_until,
)

pytestmark = pytest.mark.integration
SMALL_BATCHES = {"STRIPE_STREAMS_BATCH_SIZE": "20", "STRIPE_STREAMS_BATCH_TIMEOUT_MS": "20"}


def a_bad_day(customers: int, seed: int) -> tuple[list[EventEnvelope], list[EventEnvelope]]:
    """Lifecycles delivered with duplicates and out of order, and the poison events among them.

    Returns the log in arrival order and the poison events it holds.
    """
    factory = EventFactory(seed=seed)
    log: list[EventEnvelope] = []
    poison: list[EventEnvelope] = []
    for n in range(customers):
        story = [envelope_of(e) for e in (
            factory.customer_lifecycle(periods=2) if n % 3 else item_churn(factory)
        )]
        if n % 4 == 1 and len(story) > 3:
            story[2], story[3] = story[3], story[2]
        if n % 5 == 2:
            story.append(story[1])
        if n % 7 == 3:
            customer = dict(factory.customer(created=factory.advance()))
            customer["balance"] = "a lot"
            bad = envelope_of(factory.event("customer.updated", customer))
            poison.append(bad)
            story.insert(1, bad)
        log.extend(story)
    return log, poison


def first_offsets(settings: Settings) -> dict[str, int]:
    offsets: dict[str, int] = {}
    for _, offset, event_id in log_positions(settings):
        offsets.setdefault(event_id, offset)
    return offsets


def rows_at_their_first_position(settings: Settings) -> bool:
    """Whether every mirror row's last_event_offset is the log offset of its event's first copy.

    Live processing records that position; a rebuild must record the same.
    """
    first = first_offsets(settings)
    with psycopg.connect(settings.database_url) as conn:
        tables = [t for (t,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'stripe'"
        )]
        for table in tables:
            for event_id, offset in conn.execute(
                f'SELECT last_event_id, last_event_offset FROM stripe."{table}"'
            ):
                if first[event_id] != offset:
                    return False
    return True


class Reader(threading.Thread):
    """Reads the mirror tables all along, as a user's dashboard would."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.counts: list[int] = []
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stopping.is_set():
                try:
                    row = conn.execute(
                        "SELECT (SELECT count(*) FROM stripe.customers) "
                        "+ (SELECT count(*) FROM stripe.subscriptions)"
                    ).fetchone()
                    self.counts.append(int(row[0]) if row else 0)
                except psycopg.Error as exc:
                    self.errors.append(exc)
                time.sleep(0.02)


def event_log_of(url: str, ids: set[str]) -> list[tuple[Any, ...]]:
    """The event log's records of ``ids``, but for deliveries, which live processing may count
    meanwhile (a worker killed before it committed forwards some events twice)."""
    return sorted(
        row for row in query(url, "SELECT event_id, status, source, topic, \"partition\", "
                                  "\"offset\" FROM ops.event_log")
        if row[0] in ids
    )


def dead_letters_of(url: str, ids: set[str]) -> list[tuple[Any, ...]]:
    return [row for row in query(url, "SELECT event_id, * FROM ops.dead_letters ORDER BY id")
            if row[0] in ids]


def quiet(url: str, seconds: float = 3.0) -> Callable[[], bool]:
    """A check that holds once the event log has not changed for ``seconds``."""
    last: list[Any] = [None, time.monotonic()]

    def check() -> bool:
        now = query(url, "SELECT count(*), sum(deliveries), max(processed_at) "
                         "FROM ops.event_log")
        if now != last[0]:
            last[:] = [now, time.monotonic()]
        return bool(time.monotonic() - last[1] >= seconds)

    return check


def test_a_rebuild_under_live_traffic_equals_live_processing_row_for_row(
    settings: Settings, tmp_path: Path
) -> None:
    log, poison = a_bad_day(45, seed=71)
    applied = [e for e in log if e not in poison]
    asyncio.run(apply_in_batches(settings.database_url, deliver(applied)))
    expected = mirror_snapshot(settings.database_url)
    empty_tables(settings.database_url)
    prepare_topics(settings)
    cut = len(log) * 2 // 3
    before, during = log[:cut], log[cut:]
    asyncio.run(produce(settings, before))

    worker = WorkerProcess(settings, tmp_path, "worker-killed", **SMALL_BATCHES).start()
    wait_until(lambda: count_logged(settings.database_url) >= len(before) // 3, 120,
               "a third of the events applied", [worker])
    worker.kill()
    with WorkerProcess(settings, tmp_path, "worker", **SMALL_BATCHES) as worker:
        wait_until(lambda: logged_events(settings.database_url) >= {e.id for e in before},
                   120, "every event before the rebuild", [worker])
        # Events the killed worker forwarded twice may still arrive: let them settle first.
        wait_until(quiet(settings.database_url), 60, "the event log to settle", [worker])
        # Events delivered again meanwhile count a delivery, whatever the rebuild does.
        settled = {e.id for e in before} - {e.id for e in during}
        logged_before = event_log_of(settings.database_url, settled)
        dead_before = dead_letters_of(settings.database_url, settled)
        reader = Reader(settings.database_url)
        reader.start()

        def arrive() -> None:
            for start in range(0, len(during), 4):
                asyncio.run(produce(settings, during[start:start + 4]))
                time.sleep(0.1)

        arriving = threading.Thread(target=arrive)
        arriving.start()
        time.sleep(0.5)
        rebuilding = start_command(settings, tmp_path, "rebuild",
                                   STRIPE_STREAMS_JOB_BATCH_SIZE="50")
        out, err = rebuilding.communicate(timeout=180)
        still_arriving = arriving.is_alive()
        arriving.join()
        wait_until(lambda: logged_events(settings.database_url) >= {e.id for e in log}, 120,
                   "every event after the rebuild", [worker])
        reader.stopping.set()
        reader.join()

    # The poison events failed again, as they did live: the rebuild says so and switches.
    assert rebuilding.returncode == 1, err
    assert "switched" in out + err, out + err
    assert still_arriving, "the events stopped arriving before the rebuild ended"
    assert mirror_snapshot(settings.database_url) == expected
    assert rows_at_their_first_position(settings)
    assert event_log_of(settings.database_url, settled) == logged_before
    assert dead_letters_of(settings.database_url, settled) == dead_before
    assert reader.errors == []
    assert reader.counts == sorted(reader.counts), "a reader saw rows vanish"
    # Poison events arriving after the switch are live processing's to settle.
    [(kind, status, failed)] = query(settings.database_url,
                                     "SELECT kind, status, failed FROM ops.batch_jobs")
    assert (kind, status) == ("rebuild", "succeeded")
    assert 0 < int(str(failed)) <= len(poison)
    assert query(settings.database_url, "SELECT nspname FROM pg_namespace "
                                        "WHERE starts_with(nspname, 'stripe_rebuild')") == []


def table_oids(url: str) -> dict[str, int]:
    return {str(name): int(str(oid)) for name, oid in query(
        url, "SELECT relname, oid::int FROM pg_class WHERE relnamespace = 'stripe'::regnamespace "
             "AND relkind = 'r'"
    )}


def test_a_rebuild_of_one_family_swaps_only_its_own_tables(
    settings: Settings, tmp_path: Path
) -> None:
    log, _ = a_bad_day(6, seed=5)
    prepare_topics(settings)
    asyncio.run(produce(settings, log[:20]))
    before = table_oids(settings.database_url)
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("GRANT SELECT ON stripe.customers TO PUBLIC")

    done = run_command(settings, tmp_path, "rebuild", "--family", "customers")

    assert done.returncode == 0, done.stderr
    after = table_oids(settings.database_url)
    assert after["customers"] != before["customers"]
    assert {t: o for t, o in after.items() if t != "customers"} == {
        t: o for t, o in before.items() if t != "customers"
    }
    customers = {e.object_id for e in log[:20] if e.type.startswith("customer.")
                 and not e.type.startswith("customer.subscription")}
    assert {str(i) for (i,) in query(settings.database_url, "SELECT id FROM stripe.customers")} \
        == customers
    assert query(settings.database_url,
                 "SELECT privilege_type FROM information_schema.role_table_grants "
                 "WHERE table_schema = 'stripe' AND table_name = 'customers' "
                 "AND grantee = 'PUBLIC'") == [("SELECT",)]
    assert query(settings.database_url,
                 "SELECT indexname FROM pg_indexes WHERE tablename = 'customers' "
                 "ORDER BY 1") == [("customers_email_idx",), ("customers_pkey",)]


def test_a_rebuild_that_would_lose_what_live_processing_applied_keeps_the_live_tables(
    settings: Settings, tmp_path: Path
) -> None:
    factory = EventFactory(seed=9)
    customer = dict(factory.customer(created=factory.advance()))
    good = envelope_of(factory.event("customer.created", customer))
    customer["balance"] = "a lot"
    failing = envelope_of(factory.event("customer.updated", customer))
    prepare_topics(settings)
    asyncio.run(produce(settings, [good, failing]))
    # As if a handler that accepted the event then was changed since to refuse it.
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(
            "INSERT INTO ops.event_log (event_id, type, family, object_id, livemode, created, "
            "received_at, processed_at, status, source, topic, \"partition\", \"offset\") "
            "VALUES (%s, 'customer.updated', 'customers', %s, false, now(), now(), now(), "
            "'processed', 'webhook', 't', 0, 0)",
            (failing.id, failing.object_id),
        )
    before = table_oids(settings.database_url)

    done = run_command(settings, tmp_path, "rebuild")

    assert done.returncode == 1
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("stripe-streams rebuild: 1 event(s) that live processing applied "
                            "fail now, so the live tables are kept"), done.stderr
    assert failing.id in error
    assert table_oids(settings.database_url) == before
    assert query(settings.database_url, "SELECT status FROM ops.batch_jobs") == [("failed",)]
    assert query(settings.database_url, "SELECT nspname FROM pg_namespace "
                                        "WHERE starts_with(nspname, 'stripe_rebuild')") == []


def test_a_rebuild_refuses_to_drop_the_views_of_users(settings: Settings, tmp_path: Path) -> None:
    prepare_topics(settings)
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("CREATE VIEW public.paying AS SELECT id FROM stripe.customers")

    done = run_command(settings, tmp_path, "rebuild", "--family", "customers")

    assert done.returncode == 1
    assert "views paying depend on the tables to rebuild" in done.stderr
    assert query(settings.database_url, "SELECT count(*) FROM public.paying") == [(0,)]
