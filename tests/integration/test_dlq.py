"""`stripe-streams dlq`: dead letters listed, retried through the log, resolved, and resumed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaProducer

from streams.devtools.samples import EventFactory
from streams.log.envelope import EventEnvelope
from streams.settings import Settings
from tests.integration.log_support import query, run_command
from tests.integration.test_projection_ordering import envelope_of
from tests.integration.worker_support import (
    WorkerProcess,
    prepare_topics,
    produce,
    wait_until,
)

pytestmark = pytest.mark.integration


def customer_named(factory: EventFactory, name: str, **fields: object) -> EventEnvelope:
    customer = dict(factory.customer(created=factory.advance()))
    customer.update(name=name, **fields)
    return envelope_of(factory.event("customer.updated", customer))


def open_dead_letters(url: str) -> int:
    return int(str(query(url, "SELECT count(*) FROM ops.dead_letters WHERE status = 'open'")
                   [0][0]))


def test_retry_applies_what_was_fixed_and_counts_what_still_fails(
    settings: Settings, tmp_path: Path
) -> None:
    factory = EventFactory(seed=31)
    refused = customer_named(factory, "Bob")
    broken = customer_named(factory, "Alice", balance="a lot")
    fine = customer_named(factory, "Carol")
    prepare_topics(settings)
    with psycopg.connect(settings.database_url) as conn:
        # An operator's constraint the database refuses Bob with: fixed by dropping it.
        conn.execute("ALTER TABLE stripe.customers ADD CONSTRAINT no_bob CHECK (name <> 'Bob')")
    asyncio.run(produce(settings, [refused, broken, fine]))

    with WorkerProcess(settings, tmp_path) as worker:
        wait_until(lambda: open_dead_letters(settings.database_url) == 2, 90,
                   "both failures dead-lettered", [worker])
        asyncio.run(_append_garbage(settings))
        wait_until(lambda: open_dead_letters(settings.database_url) == 3, 60,
                   "the garbage dead-lettered", [worker])
        ids = {str(event_id): int(str(i)) for i, event_id in query(
            settings.database_url, "SELECT id, event_id FROM ops.dead_letters")}
        attempts_before = dict(query(settings.database_url,
                                     "SELECT id, attempts FROM ops.dead_letters"))
        with psycopg.connect(settings.database_url) as conn:
            conn.execute("ALTER TABLE stripe.customers DROP CONSTRAINT no_bob")

        one = run_command(settings, tmp_path, "dlq", "retry", str(ids[refused.id]))
        assert one.returncode == 0, one.stdout + one.stderr

        everything = run_command(settings, tmp_path, "dlq", "retry", "--all", "--wait", "60")

    assert everything.returncode == 1
    assert f"dead letter {ids[broken.id]} failed again" in everything.stdout + everything.stderr
    assert "not republished: the message was not an event" in everything.stdout + everything.stderr
    statuses = dict(query(settings.database_url, "SELECT event_id, status FROM ops.dead_letters"))
    assert statuses[refused.id] == "retried"
    assert statuses[broken.id] == "open"
    assert query(settings.database_url, "SELECT count(*) FROM ops.dead_letters") == [(3,)]
    [(attempts,)] = query(settings.database_url,
                          "SELECT attempts FROM ops.dead_letters WHERE event_id = %s", broken.id)
    assert attempts == int(str(attempts_before[ids[broken.id]])) + 2
    logged = dict(query(settings.database_url, "SELECT event_id, status || '/' || source "
                                               "FROM ops.event_log"))
    assert logged[refused.id] == "processed/dlq_retry"
    assert logged[broken.id].startswith("dead_lettered/")
    trail = query(settings.database_url, "SELECT event_id, stage, coalesce(detail, '') "
                  "FROM ops.event_trail ORDER BY at")
    bob = [(stage, detail) for event_id, stage, detail in trail if event_id == refused.id]
    assert [stage for stage, _ in bob] == ["dead_lettered", "retried"]
    assert "no_bob" in bob[0][1] and bob[1][1] == "processed"
    # Alice's first failure, then her retry's: the same dead letter, two stages.
    assert [stage for event_id, stage, _ in trail if event_id == broken.id] == [
        "dead_lettered", "dead_lettered",
    ]
    assert query(settings.database_url, "SELECT name FROM stripe.customers ORDER BY name") == [
        ("Bob",), ("Carol",)
    ]
    jobs = query(settings.database_url,
                 "SELECT kind, status, total, processed, failed FROM ops.batch_jobs ORDER BY id")
    assert jobs == [("dlq_retry", "succeeded", 1, 1, 0), ("dlq_retry", "succeeded", 2, 1, 1)]


async def _append_garbage(settings: Settings) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic("customers"), b"not avro", key=b"cus_x")
    finally:
        await producer.stop()


def seed_dead_letters(url: str, count: int) -> None:
    with psycopg.connect(url) as conn:
        for n in range(count):
            conn.execute(
                "INSERT INTO ops.dead_letters (event_id, type, family, handler, error_type, "
                "error_message, attempts, first_failed_at, last_failed_at, source_topic, "
                "source_partition, source_offset, payload) VALUES (%s, %s, %s, 'h', 'E', "
                "'broken', 1, now() - %s * interval '1 hour', now() - %s * interval '1 hour', "
                "'t', 0, %s, '{}')",
                (f"evt_{n}", "invoice.paid" if n % 2 else "customer.updated",
                 "invoices" if n % 2 else "customers", n, n, n),
            )


def test_list_filters_pages_and_prints_json(settings: Settings, tmp_path: Path) -> None:
    seed_dead_letters(settings.database_url, 7)

    invoices = run_command(settings, tmp_path, "dlq", "list", "--type", "invoice.paid",
                           "--json")
    first = run_command(settings, tmp_path, "dlq", "list", "--json", "--limit", "4")
    page = json.loads(first.stdout)
    second = run_command(settings, tmp_path, "dlq", "list", "--json", "--limit", "4",
                         "--after", str(page["next_after"]))
    old = run_command(settings, tmp_path, "dlq", "list", "--json", "--family", "customers",
                      "--older-than", "3h")
    table = run_command(settings, tmp_path, "dlq", "list")

    assert [r["event_id"] for r in json.loads(invoices.stdout)["dead_letters"]] == [
        "evt_1", "evt_3", "evt_5"
    ]
    assert [r["event_id"] for r in page["dead_letters"]] == ["evt_0", "evt_1", "evt_2", "evt_3"]
    rest = json.loads(second.stdout)
    assert [r["event_id"] for r in rest["dead_letters"]] == ["evt_4", "evt_5", "evt_6"]
    assert rest["next_after"] is None
    assert [r["event_id"] for r in json.loads(old.stdout)["dead_letters"]] == ["evt_4", "evt_6"]
    assert table.returncode == 0 and "7 dead letter(s)" in table.stdout


def test_resolve_closes_a_dead_letter_with_the_note_once(
    settings: Settings, tmp_path: Path
) -> None:
    seed_dead_letters(settings.database_url, 1)
    [(dead_letter,)] = query(settings.database_url, "SELECT id FROM ops.dead_letters")

    done = run_command(settings, tmp_path, "dlq", "resolve", str(dead_letter), "--note",
                       "refunded by hand in the dashboard")
    again = run_command(settings, tmp_path, "dlq", "resolve", str(dead_letter), "--note", "x")
    shown = run_command(settings, tmp_path, "dlq", "show", str(dead_letter), "--json")
    listed = run_command(settings, tmp_path, "dlq", "list", "--json")

    assert done.returncode == 0, done.stderr
    assert query(settings.database_url, "SELECT status, note FROM ops.dead_letters") == [
        ("resolved", "refunded by hand in the dashboard")
    ]
    assert again.returncode == 1
    assert again.stderr.strip() == (
        f"stripe-streams dlq: no dead letter {dead_letter} is left to resolve"
    )
    assert json.loads(shown.stdout)["note"] == "refunded by hand in the dashboard"
    assert json.loads(listed.stdout)["dead_letters"] == []


def test_resume_ends_a_pause_at_once(settings: Settings, tmp_path: Path) -> None:
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("INSERT INTO ops.family_pauses VALUES ('invoices', now(), "
                     "now() + interval '5 minutes', 'test')")

    resumed = run_command(settings, tmp_path, "dlq", "resume", "invoices")
    again = run_command(settings, tmp_path, "dlq", "resume", "invoices")

    assert resumed.returncode == 0 and "invoices resumes" in resumed.stdout
    assert query(settings.database_url, "SELECT count(*) FROM ops.family_pauses") == [(0,)]
    assert "was not paused" in again.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["retry"], "retry takes dead letter IDs, --type T or --all: one of them"),
        (["retry", "1", "--all"], "retry takes dead letter IDs, --type T or --all"),
        (["retry", "42"], "no open dead letter 42"),
        (["show", "42"], "there is no dead letter 42"),
        (["show", "x"], "must be a numeric id"),
        (["list", "--older-than", "soon"], "must be an age such as 30m"),
        (["resume", "nope"], "invalid choice"),
        (["resolve", "1"], "--note"),
    ],
)
def test_a_mistaken_dlq_command_is_refused_in_one_line(
    settings: Settings, tmp_path: Path, args: list[str], message: str
) -> None:
    done = run_command(settings, tmp_path, "dlq", *args)

    assert done.returncode in (1, 2)
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
