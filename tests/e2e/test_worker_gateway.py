"""Signed webhooks through the real gateway and worker processes into the PostgreSQL mirrors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest

from ingest.signature import signature_header
from streams.settings import Secret, Settings
from tests.integration.test_projection_ordering import (
    apply_in_batches,
    deliver,
    empty_tables,
    envelope_of,
    mirror_snapshot,
    stories,
)
from tests.integration.worker_support import (
    WorkerProcess,
    environment,
    free_port,
    logged_events,
    prepare_topics,
    wait_until,
)

pytestmark = pytest.mark.e2e
SECRET = Secret("whsec_test_default")


@contextmanager
def gateway(settings: Settings, log_dir: Path) -> Iterator[str]:
    """Run `stripe-streams gateway` until the block ends; yield its base URL once ready."""
    port = free_port()
    with (log_dir / "gateway.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "gateway", "--host", "127.0.0.1",
             "--port", str(port)],
            env=environment(settings, STRIPE_WEBHOOK_SECRETS=SECRET.reveal()),
            stdout=log, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "gateway not ready"
            time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_webhooks_answered_200_end_up_in_the_mirrors(settings: Settings, tmp_path: Path) -> None:
    events = stories(seed=13, customers=2)
    asyncio.run(apply_in_batches(settings.database_url, deliver(map(envelope_of, events))))
    expected = mirror_snapshot(settings.database_url)
    empty_tables(settings.database_url)
    prepare_topics(settings)

    with gateway(settings, tmp_path) as base, WorkerProcess(settings, tmp_path) as worker:
        with httpx.Client(base_url=base, timeout=10) as client:
            # Stripe retries a delivery it did not see answered: the first event comes twice.
            for event in [*events, events[0]]:
                body = json.dumps(event).encode()
                answer = client.post(
                    "/webhooks/stripe", content=body,
                    headers={"Stripe-Signature": signature_header(body, SECRET),
                             "Content-Type": "application/json"},
                )
                assert answer.status_code == 200, answer.text
        wait_until(lambda: logged_events(settings.database_url) >= {e["id"] for e in events},
                   90, "every webhook in the event log", [worker])

    assert mirror_snapshot(settings.database_url) == expected
    with psycopg.connect(settings.database_url) as conn:
        sources = conn.execute("SELECT DISTINCT source FROM ops.event_log").fetchall()
        lag = conn.execute("SELECT max(lag_ms_max) FROM ops.event_stats").fetchone()
    assert sources == [("webhook",)]
    assert lag is not None and lag[0] is not None and lag[0] > 0
