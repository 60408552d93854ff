"""`stripe-streams monitor` over what a real worker wrote: overview, latency, dead letters,
every stage of an event, jobs and alerts, behind its token and read-only."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from streams.devtools.samples import EventFactory
from streams.settings import Settings
from tests.integration.log_support import query, run_command, start_command
from tests.integration.test_dlq import customer_named
from tests.integration.test_projection_ordering import envelope_of
from tests.integration.worker_support import (
    WorkerProcess,
    free_port,
    logged_events,
    prepare_topics,
    produce,
    wait_until,
)

pytestmark = pytest.mark.integration
TOKEN = "monitor-test-token"


class Monitor:
    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, token: str | None = TOKEN, **params: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(self.base + path, params=params, headers=headers, timeout=10)

    def json(self, path: str, **params: str) -> Any:
        response = self.get(path, **params)
        assert response.status_code == 200, response.text
        return response.json()


@contextmanager
def running_monitor(settings: Settings, tmp_path: Path) -> Iterator[Monitor]:
    """``stripe-streams monitor`` with the test's settings, once it answers ``/healthz``."""
    port = free_port()
    process = start_command(
        settings, tmp_path, "monitor", "--port", str(port),
        STRIPE_STREAMS_MONITOR_TOKEN=TOKEN,
    )
    running = Monitor(process, port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(running.base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the monitor did not answer /healthz"
            time.sleep(0.2)
        yield running
    finally:
        process.terminate()
        process.communicate(timeout=30)


@pytest.fixture
def monitor(settings: Settings, tmp_path: Path) -> Iterator[Monitor]:
    with running_monitor(settings, tmp_path) as running:
        yield running


def stages(trail: dict[str, Any]) -> list[str]:
    return [stage["stage"] for stage in trail["stages"]]


def test_the_monitor_tells_what_happened_to_every_event(
    settings: Settings, tmp_path: Path, monitor: Monitor
) -> None:
    factory = EventFactory(seed=41)
    customer = dict(factory.customer(created=factory.advance()))
    created = envelope_of(factory.event("customer.created", customer))
    updated = envelope_of(factory.event("customer.updated", {**customer, "name": "Renamed"}))
    poison = customer_named(factory, "Alice", balance="a lot")
    prepare_topics(settings)
    asyncio.run(produce(settings, [created, updated, poison]))
    with WorkerProcess(settings, tmp_path) as worker:
        wait_until(lambda: logged_events(settings.database_url) >= {created.id, poison.id,
                                                                    updated.id},
                   90, "the three events", [worker])
        # Stripe delivering the update once more, after it was applied.
        asyncio.run(produce(settings, [updated]))
        wait_until(lambda: query(settings.database_url, "SELECT deliveries FROM ops.event_log "
                                 "WHERE event_id = %s", updated.id) == [(2,)],
                   60, "the second delivery", [worker])
    [(dead_letter,)] = query(settings.database_url, "SELECT id FROM ops.dead_letters")
    resolved = run_command(settings, tmp_path, "dlq", "resolve", str(dead_letter),
                           "--note", "balance fixed in Stripe")
    assert resolved.returncode == 0, resolved.stderr
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("INSERT INTO ops.batch_jobs (kind, total, processed, status) "
                     "VALUES ('replay', 10, 4, 'running')")
    _wait_for_kafka_sample(monitor, after=datetime.now(UTC))
    _check(monitor, created.id, updated.id, poison.id, customer["id"])


def _wait_for_kafka_sample(monitor: Monitor, after: datetime) -> None:
    """Until the monitor sampled Kafka, successfully, after ``after``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        kafka = monitor.json("/api/overview")["health"]["kafka"]
        if kafka["ok"] and datetime.fromisoformat(kafka["sampled_at"]) > after:
            return
        time.sleep(0.5)
    raise AssertionError("the monitor never sampled Kafka")


def _check(monitor: Monitor, created: str, updated: str, poison: str, customer: str) -> None:
    overview = monitor.json("/api/overview")
    assert overview["windows"]["5m"] == {
        "finished": 3, "processed": 2, "stale": 0, "unhandled": 0, "dead_lettered": 1,
    }
    assert overview["dead_letters"]["open"] == 0
    assert overview["consumer_lag"]["total"] == 0
    assert overview["oldest_unprocessed"]["received_at"] is None
    assert [e["endpoint"] for e in overview["endpoints"]] == ["default"]
    assert overview["health"]["postgres"]["ok"] is True
    assert [(j["kind"], j["progress"]) for j in overview["running_jobs"]] == [("replay", 0.4)]

    [customers] = monitor.json("/api/performance", window="15m")["by_family"]
    assert customers["family"] == "customers"
    assert (customers["events"], customers["errors"]) == (3, 1)
    assert 0 <= customers["p50_ms"] <= customers["p95_ms"] <= customers["p99_ms"] < 60_000

    [poisoned] = monitor.json("/api/audit-trail", event_id=poison)["events"]
    assert stages(poisoned) == ["received", "logged", "routed", "dead_lettered", "resolved"]
    assert "balance" in poisoned["stages"][3]["detail"]
    assert poisoned["stages"][4]["detail"] == "balance fixed in Stripe"
    assert "payload" not in poisoned
    [with_payload] = monitor.json("/api/audit-trail", event_id=poison,
                                  include="payload")["events"]
    assert with_payload["payload"]["id"] == poison

    [redelivered] = monitor.json("/api/audit-trail", event_id=updated)["events"]
    assert stages(redelivered) == ["received", "logged", "routed", "applied", "duplicate"]
    assert redelivered["deliveries"] == 2

    first = monitor.json("/api/audit-trail", object_id=customer, limit="1")
    assert [e["event_id"] for e in first["events"]] == [created]
    rest = monitor.json("/api/audit-trail", object_id=customer, cursor=first["next_cursor"])
    assert [e["event_id"] for e in rest["events"]] == [updated]
    assert rest["next_cursor"] is None

    letters = monitor.json("/api/dead-letters", status="resolved")["items"]
    assert [(d["event_id"], d["note"]) for d in letters] == [(poison, "balance fixed in Stripe")]
    assert "payload" not in letters[0]
    assert monitor.json("/api/dead-letters", status="open")["items"] == []

    jobs = monitor.json("/api/batch-jobs", kind="replay")["items"]
    assert [(j["kind"], j["total"], j["processed"]) for j in jobs] == [("replay", 10, 4)]

    states = {
        (a["name"], tuple(sorted(a["labels"].items()))): a
        for a in monitor.json("/api/alerts")["alerts"]
    }
    growing = states[("StripeDeadLettersGrowing", ())]
    assert (growing["state"], growing["value"]) == ("firing", 1)
    assert states[("StripeWorkerDown", ())]["state"] == "ok"
    assert states[("StripeWebhooksUnavailable", ())]["state"] == "not_evaluated"
    assert states[("StripeFamilyPaused", ())]["state"] == "ok"


def test_the_api_wants_its_token_and_names_what_it_refuses(monitor: Monitor) -> None:
    assert monitor.get("/api/overview", token=None).status_code == 401
    wrong = monitor.get("/api/overview", token="guess")
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in wrong.json()["error"]
    assert monitor.get("/healthz", token=None).status_code == 200
    assert b"stripe_streams_build_info" in monitor.get("/metrics", token=None).content

    unknown = monitor.get("/api/dead-letters", statuss="open")
    assert unknown.status_code == 400
    assert unknown.json() == {
        "error": "unknown parameter 'statuss'; known: status, type, family, since, limit, "
                 "cursor, include",
    }
    assert monitor.get("/api/performance", window="2y").status_code == 400
    assert monitor.get("/api/audit-trail").json()["error"] == (
        "give exactly one of event_id and object_id"
    )
    assert monitor.get("/api/dead-letters", family="nope").status_code == 400
    assert monitor.get("/api/batch-jobs", cursor="x").status_code == 400
    assert monitor.get("/api/nothing").status_code == 404


def test_the_monitor_refuses_to_start_without_a_token(settings: Settings, tmp_path: Path) -> None:
    bare = run_command(settings, tmp_path, "monitor", "--port", str(free_port()))
    assert bare.returncode == 1
    assert "set STRIPE_STREAMS_MONITOR_TOKEN" in bare.stderr
    exposed = run_command(settings, tmp_path, "monitor", "--host", "0.0.0.0",
                          "--insecure-no-auth")
    assert exposed.returncode == 1
    assert "--insecure-no-auth serves customer data" in exposed.stderr


def test_the_monitor_cannot_write(settings: Settings) -> None:
    async def write() -> None:
        from projections.database import connection, create_pool

        pool = create_pool(settings, read_only=True)
        await pool.open()
        try:
            async with connection(pool) as conn:
                await conn.execute("DELETE FROM ops.dead_letters")
        finally:
            await pool.close()

    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        asyncio.run(write())
