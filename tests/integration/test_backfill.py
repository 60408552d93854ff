"""`stripe-streams backfill` and `reconcile` against the local double of Stripe's API."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from streams.devtools.stripe_double import StripeDouble, generate_account
from streams.log.envelope import EventEnvelope, EventSource
from streams.settings import Settings
from tests.integration.log_support import query, read_log, run_command, start_command
from tests.integration.worker_support import (
    WorkerProcess,
    logged_events,
    prepare_topics,
    produce,
    wait_until,
)

pytestmark = pytest.mark.integration
SINCE = (datetime.now(UTC) - timedelta(days=29)).isoformat()


@cache
def account() -> list[dict[str, Any]]:
    """The events of the account the double serves, the connected account's among them."""
    return generate_account(6000, seed=41, accounts=("acct_1Connected",))


@pytest.fixture
def double() -> Iterator[StripeDouble]:
    with StripeDouble(account(), accounts=("acct_1Connected",)) as served:
        yield served


def api(double: StripeDouble, **more: str) -> dict[str, str]:
    return {"STRIPE_API_BASE": double.url, "STRIPE_API_KEY": double.api_key,
            "STRIPE_STREAMS_STRIPE_RATE": "1000", **more}


def in_range(double: StripeDouble, connected: str | None = None) -> list[dict[str, Any]]:
    """The events ``double`` lists for the platform (or ``connected``) since SINCE."""
    since = datetime.fromisoformat(SINCE).timestamp()
    return [e for e in account() if e["created"] >= since and e.get("account") == connected]


def summary(done: Any, row: str) -> str:
    found = re.search(rf"{re.escape(row)}\s*│\s*([^│]+?)\s*│", done.stdout + done.stderr)
    assert found, done.stdout + done.stderr
    return found.group(1)


def test_a_backfill_appends_every_event_once_oldest_first_and_again_nothing(
    settings: Settings, tmp_path: Path, double: StripeDouble
) -> None:
    prepare_topics(settings)
    expected = in_range(double)
    assert len(expected) > 1000

    first = run_command(settings, tmp_path, "backfill", "--since", SINCE, **api(double))
    again = run_command(settings, tmp_path, "backfill", "--since", SINCE, **api(double))

    assert first.returncode == 0, first.stderr
    log = read_log(settings)
    ids = [envelope.id for _, _, envelope in log]
    assert Counter(ids) == Counter(e["id"] for e in expected)
    assert {envelope.source for _, _, envelope in log} == {EventSource.BACKFILL}
    for partition in {p for p, _, _ in log}:
        created = [envelope.created for p, _, envelope in log if p == partition]
        assert created == sorted(created), "a partition's events are not oldest first"
    assert int(summary(first, "pages").replace(",", "")) >= len(expected) // 100
    assert again.returncode == 0, again.stderr
    assert summary(again, "appended (holes filled)") == "0"
    assert len(read_log(settings)) == len(expected)


def test_faults_of_stripes_api_are_retried_and_counted(
    settings: Settings, tmp_path: Path, double: StripeDouble
) -> None:
    prepare_topics(settings)
    double.rate_limit_next(3, retry_after=0)
    double.fail_next(2)
    double.drop_next(1)

    done = run_command(settings, tmp_path, "backfill", "--since", SINCE, **api(double))

    assert done.returncode == 0, done.stderr
    assert Counter(e.id for _, _, e in read_log(settings)) == Counter(
        e["id"] for e in in_range(double))
    retries = summary(done, "retries")
    assert "3 429" in retries and "2 5xx" in retries and "1 connection" in retries, retries


def test_types_and_a_connected_account_select_their_events(
    settings: Settings, tmp_path: Path, double: StripeDouble
) -> None:
    prepare_topics(settings)

    done = run_command(settings, tmp_path, "backfill", "--since", SINCE, "--account",
                       "acct_1Connected", "--types", "customer.created,invoice.paid",
                       **api(double))

    assert done.returncode == 0, done.stderr
    expected = [e for e in in_range(double, "acct_1Connected")
                if e["type"] in ("customer.created", "invoice.paid")]
    log = [envelope for _, _, envelope in read_log(settings)]
    assert expected and sorted(e.id for e in log) == sorted(e["id"] for e in expected)
    assert {e.account for e in log} == {"acct_1Connected"}


def test_a_backfill_killed_and_resumed_appends_every_event_once(
    settings: Settings, tmp_path: Path, double: StripeDouble
) -> None:
    prepare_topics(settings)
    double.delay = 0.3
    killed = start_command(settings, tmp_path, "backfill", "--since", SINCE, **api(double))
    deadline = time.monotonic() + 60
    while not query(settings.database_url,
                    "SELECT id FROM ops.batch_jobs WHERE processed >= 300"):
        assert time.monotonic() < deadline and killed.poll() is None
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    [(job, status)] = query(settings.database_url, "SELECT id, status FROM ops.batch_jobs")
    assert status == "running"
    double.delay = 0.0

    resumed = run_command(settings, tmp_path, "backfill", "--resume", str(job), **api(double))

    assert resumed.returncode == 0, resumed.stderr
    assert Counter(e.id for _, _, e in read_log(settings)) == Counter(
        e["id"] for e in in_range(double))


@pytest.mark.parametrize("reached", [True, False], ids=["reached the log", "lost"])
def test_events_a_stopped_backfill_was_appending_are_appended_once_on_resume(
    settings: Settings, tmp_path: Path, double: StripeDouble, reached: bool
) -> None:
    prepare_topics(settings)
    expected = in_range(double)
    sending = [EventEnvelope.from_event_dict(e, payload=json.dumps(e), endpoint="backfill",
                                             source=EventSource.BACKFILL) for e in expected[:3]]
    if reached:
        asyncio.run(produce(settings, sending))
    with psycopg.connect(settings.database_url) as conn:
        params = {"since": SINCE, "until": None, "types": [], "account": None,
                  "undelivered": False}
        [(job,)] = conn.execute(
            "INSERT INTO ops.batch_jobs (kind, params, position) VALUES ('backfill', %s, %s) "
            "RETURNING id", (Jsonb(params), Jsonb({"group": 0, "cursor": None})),
        ).fetchall()
        for envelope in sending:
            conn.execute("INSERT INTO ops.backfilled_events (event_id, job_id) VALUES (%s, %s)",
                         (envelope.id, job))

    resumed = run_command(settings, tmp_path, "backfill", "--resume", str(job), **api(double))

    assert resumed.returncode == 0, resumed.stderr
    assert Counter(e.id for _, _, e in read_log(settings)) == Counter(e["id"] for e in expected)
    assert query(settings.database_url, "SELECT count(*) FROM ops.backfilled_events "
                                        "WHERE NOT appended") == [(0,)]


def test_a_backfill_beside_live_webhooks_leaves_each_event_once_in_the_mirrors(
    settings: Settings, tmp_path: Path, double: StripeDouble
) -> None:
    prepare_topics(settings)
    expected = in_range(double)
    webhooks = [EventEnvelope.from_event_dict(e, payload=json.dumps(e),
                                              endpoint="default", source=EventSource.WEBHOOK)
                for e in expected[::3]]

    with WorkerProcess(settings, tmp_path) as worker:
        asyncio.run(produce(settings, webhooks[: len(webhooks) // 2]))
        backfilling = start_command(settings, tmp_path, "backfill", "--since", SINCE,
                                    **api(double))
        asyncio.run(produce(settings, webhooks[len(webhooks) // 2 :]))
        assert backfilling.wait(timeout=120) == 0, backfilling.communicate()[1]
        wait_until(lambda: logged_events(settings.database_url) >= {e["id"] for e in expected},
                   120, "every event applied", [worker])

    assert query(settings.database_url, "SELECT count(*) FROM ops.event_log") == [
        (len(expected),)]
    newest: dict[str, str] = {}
    for event in sorted(expected, key=lambda e: e["created"]):
        if event["type"].startswith("customer.") and "subscription" not in event["type"] \
                and "discount" not in event["type"]:
            newest[event["data"]["object"]["id"]] = event["id"]
    rows = dict(query(settings.database_url, "SELECT id, last_event_id FROM stripe.customers"))
    assert {i: rows.get(i) for i in newest} == newest


def test_a_since_beyond_the_events_api_is_refused_naming_reconcile(
    settings: Settings, tmp_path: Path, double: StripeDouble
) -> None:
    old = (datetime.now(UTC) - timedelta(days=31)).isoformat()

    done = run_command(settings, tmp_path, "backfill", "--since", old, **api(double))

    assert done.returncode == 1
    assert "older than the 30 days" in done.stderr and "reconcile" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_reconcile_reports_a_clean_account_and_repairs_a_missing_and_a_drifted_row(
    settings: Settings, tmp_path: Path, double: StripeDouble
) -> None:
    prepare_topics(settings)
    with WorkerProcess(settings, tmp_path) as worker:
        assert run_command(settings, tmp_path, "backfill", "--since", SINCE,
                           **api(double)).returncode == 0
        wait_until(lambda: logged_events(settings.database_url)
                   >= {e["id"] for e in in_range(double)}, 120, "the backfill applied",
                   [worker])
        since = (datetime.now(UTC) - timedelta(days=28)).isoformat()

        clean = run_command(settings, tmp_path, "reconcile", "--resource", "customers",
                            "--since", since, **api(double))
        assert clean.returncode == 0, clean.stderr
        assert summary(clean, "repaired (events appended)") == "0", clean.stdout

        [(gone,), (drifted,)] = query(settings.database_url,
                                      "SELECT id FROM stripe.customers WHERE NOT deleted "
                                      "AND created >= %s ORDER BY id LIMIT 2", since)
        with psycopg.connect(settings.database_url) as conn:
            conn.execute("DELETE FROM stripe.customers WHERE id = %s", (gone,))
            conn.execute("UPDATE stripe.customers SET data = jsonb_set(data, '{name}', "
                         "'\"Not the name Stripe has\"'), name = 'wrong' WHERE id = %s",
                         (drifted,))

        repaired = run_command(settings, tmp_path, "reconcile", "--resource", "customers",
                               "--since", since, **api(double))
        assert repaired.returncode == 0, repaired.stderr
        assert summary(repaired, "missing from the mirror") == "1"
        assert summary(repaired, "drifted") == "1"
        assert summary(repaired, "repaired (events appended)") == "2"

        def restored() -> bool:
            rows = dict(query(settings.database_url,
                              "SELECT id, data FROM stripe.customers WHERE id = ANY(%s)",
                              [gone, drifted]))
            return rows == {i: double.stored_object("customers", i) for i in (gone, drifted)}

        wait_until(restored, 60, "the repairs applied", [worker])
    assert query(settings.database_url,
                 "SELECT count(*) FROM ops.event_log WHERE source = 'reconcile' "
                 "AND type = 'customer.reconciled'") == [(2,)]


def test_reconcile_ties_fetches_the_objects_two_same_second_events_wrote(
    settings: Settings, tmp_path: Path, double: StripeDouble
) -> None:
    customer = next(e["data"]["object"] for e in in_range(double)
                    if e["type"] == "customer.created")
    second = int(time.time()) - 5

    def update(event_id: str, name: str) -> dict[str, Any]:
        return {"id": event_id, "object": "event", "type": "customer.updated",
                "created": second, "livemode": False, "pending_webhooks": 0,
                "data": {"object": {**double.stored_object("customers", customer["id"]),
                                    "name": name}}}

    # Stripe emitted First then Second within one second; the webhooks arrived the other way.
    first, last = update("evt_tieFirst", "First"), update("evt_tieSecond", "Second")
    double.add_events([first, last])
    prepare_topics(settings)
    with WorkerProcess(settings, tmp_path) as worker:
        assert run_command(settings, tmp_path, "backfill", "--since", SINCE, "--until",
                           datetime.fromtimestamp(second - 60, UTC).isoformat(),
                           **api(double)).returncode == 0
        asyncio.run(produce(settings, [
            EventEnvelope.from_event_dict(e, payload=json.dumps(e), endpoint="default",
                                          source=EventSource.WEBHOOK) for e in (last, first)
        ]))
        wait_until(lambda: query(settings.database_url,
                                 "SELECT name FROM stripe.customers WHERE id = %s",
                                 customer["id"]) == [("First",)], 120, "the webhooks applied",
                   [worker])
        assert query(settings.database_url, "SELECT \"table\", object_id, event_ids "
                                            "FROM ops.ties") == [
            ("customers", customer["id"], ["evt_tieFirst", "evt_tieSecond"])]

        done = run_command(settings, tmp_path, "reconcile", "--ties", **api(double))

        assert done.returncode == 0, done.stderr
        assert summary(done, "found in Stripe") == "1"
        assert summary(done, "drifted") == "1"
        wait_until(lambda: query(settings.database_url,
                                 "SELECT name FROM stripe.customers WHERE id = %s",
                                 customer["id"]) == [("Second",)], 60, "the repair applied",
                   [worker])
    assert query(settings.database_url, "SELECT count(*) FROM ops.ties") == [(0,)]
