"""Rotating the signing secret of the real gateway process through its secret file and SIGHUP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import httpx
import pytest

from ingest.signature import signature_header
from streams.log.topics import delete_topics
from streams.settings import Secret
from tests.integration.worker_support import free_port

OLD = Secret("whsec_test_file_old")
NEW = Secret("whsec_test_file_new")


def deliver(base: str, secret: Secret) -> int:
    """Post a freshly signed event on a new connection; return the status."""
    n = uuid.uuid4().hex[:16]
    body = json.dumps(
        {
            "id": f"evt_{n}", "object": "event", "type": "customer.created",
            "created": int(time.time()),
            "data": {"object": {"id": f"cus_{n}", "object": "customer"}},
        }
    ).encode()
    headers = {"Stripe-Signature": signature_header(body, secret)}
    response = httpx.post(f"{base}/webhooks/stripe", content=body, headers=headers, timeout=30)
    return response.status_code


def write_atomically(path: Path, text: str) -> None:
    """Replace the file in one step, as container platforms update a mounted secret."""
    staged = path.with_suffix(".new")
    staged.write_text(text)
    staged.replace(path)


def lines_with(log: Path, text: str, count: int) -> list[str]:
    """Wait until the log holds ``count`` lines containing ``text``; return them."""
    deadline = time.monotonic() + 15
    while True:
        lines = [line for line in log.read_text().splitlines() if text in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


@pytest.fixture
def prefix(kafka_bootstrap: str) -> Iterator[str]:
    prefix = f"gws{uuid.uuid4().hex[:10]}"
    yield prefix
    with suppress(Exception):
        asyncio.run(delete_topics(kafka_bootstrap, f"{prefix}."))


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_rotates_the_secret_file_and_a_bad_file_keeps_the_old_secrets(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, workers: int
) -> None:
    secrets = tmp_path / "webhook_secrets"
    secrets.write_text(OLD.reveal() + "\n")
    log = tmp_path / "gateway.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STRIPE_WEBHOOK_SECRETS")},
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "STRIPE_STREAMS_TOPIC_PREFIX": prefix,
        "STRIPE_STREAMS_GATEWAY_WORKERS": str(workers),
        "STRIPE_WEBHOOK_SECRETS_FILE": str(secrets),
    }
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "gateway", "--host", "127.0.0.1",
             "--port", str(port)],
            env=environment, stdout=subprocess.DEVNULL, stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 60
        while not _ready(base):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "gateway was not ready within 60 s"
            time.sleep(0.1)
        # With several workers, one may answer before the others are serving.
        assert all(deliver(base, OLD) == 200 for _ in range(2 * workers))

        write_atomically(secrets, NEW.reveal() + "\n")
        process.send_signal(signal.SIGHUP)
        # One line from each process: the supervisor forwarded the signal to every worker.
        reloaded = lines_with(log, "reloaded the signing secrets", workers)
        assert len(reloaded) == workers, log.read_text()[-3000:]
        assert all(line.endswith("secrets: default has 1") for line in reloaded)
        assert [deliver(base, NEW) for _ in range(6)] == [200] * 6
        assert [deliver(base, OLD) for _ in range(6)] == [400] * 6

        write_atomically(secrets, "")
        process.send_signal(signal.SIGHUP)
        lines_with(log, "kept the current signing secrets", workers)
        time.sleep(0.5)  # A second line from a process would show up by now.
        kept = lines_with(log, "kept the current signing secrets", workers)
        why = f"kept the current signing secrets: STRIPE_WEBHOOK_SECRETS_FILE: {secrets} is empty"
        assert len(kept) == workers
        assert all(line.endswith(why) for line in kept)
        assert process.poll() is None
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
        assert [deliver(base, NEW) for _ in range(6)] == [200] * 6

        text = log.read_text()
        assert OLD.reveal() not in text
        assert NEW.reveal() not in text
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _ready(base: str) -> bool:
    with suppress(httpx.HTTPError):
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    return False
