"""Outages are waited out quietly and shown on /readyz: the real worker and gateway while
PostgreSQL or the Kafka broker is stopped and started again.

Each test stops a private PostgreSQL cluster or broker of its own, never the shared ones.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from projections.migrations import migrate
from streams.devtools.services.kafka import LocalKafka
from streams.devtools.services.postgres import LocalPostgres
from streams.settings import Settings
from tests.conftest import TEST_SECRETS
from tests.integration.worker_support import (
    WorkerProcess,
    environment,
    free_port,
    prepare_topics,
    wait_until,
)

pytestmark = pytest.mark.integration
OUTAGE_SECONDS = 20


def test_a_worker_reports_postgresql_missing_on_readyz_while_it_is_down_and_logs_it_once(
    settings: Settings, private_postgres: LocalPostgres, tmp_path: Path
) -> None:
    private_postgres.up()
    migrate(private_postgres.url)
    private = dataclasses.replace(settings, database_url=private_postgres.url)
    prepare_topics(private)
    with WorkerProcess(private, tmp_path) as worker:
        wait_for_readiness(worker, 200, 60)
        private_postgres.down()
        body = wait_for_readiness(worker, 503, 60)
        assert (body["ready"], body["missing"]) == (False, ["postgres"])
        assert body["postgres"].startswith("unreachable since 20")
        time.sleep(OUTAGE_SECONDS)
        assert worker.process is not None and worker.process.poll() is None
        private_postgres.up()
        wait_for_readiness(worker, 200, 120)
        log = worker.log()

    assert log.count("waiting for PostgreSQL and retrying") == 1
    assert "PostgreSQL answers again after" in log
    # The pool tries to reconnect every few seconds while PostgreSQL is down: one line shows it.
    assert log.count("error connecting in") <= 2


def wait_for_readiness(
    process: WorkerProcess | GatewayProcess, status: int, timeout: float
) -> dict[str, Any]:
    """Poll a process's /readyz until it answers ``status``; return the body it answered."""
    answered: list[dict[str, Any]] = []

    def answers() -> bool:
        try:
            response = httpx.get(f"http://127.0.0.1:{process.port}/readyz", timeout=5)
        except httpx.HTTPError:
            return False
        answered.append(response.json())
        return response.status_code == status

    wait_until(answers, timeout, f"{process.log_path.stem}'s /readyz to answer {status}", [process])
    return answered[-1]


def test_a_broker_outage_is_waited_out_quietly_and_shown_on_readyz(
    settings: Settings, private_kafka: LocalKafka, tmp_path: Path
) -> None:
    private = dataclasses.replace(settings, kafka_bootstrap_servers=private_kafka.address)
    with WorkerProcess(private, tmp_path) as worker:
        time.sleep(5)
        assert worker.process is not None and worker.process.poll() is None, worker.log()
        private_kafka.up()
        wait_for_readiness(worker, 200, 120)
        with gateway_process(private, tmp_path) as gateway:
            wait_for_readiness(gateway, 200, 60)
            processes = (worker, gateway)
            seen = [len(p.log().splitlines()) for p in processes]
            private_kafka.down()
            missing = [wait_for_readiness(p, 503, 60) for p in processes]
            time.sleep(OUTAGE_SECONDS)
            private_kafka.up()
            for process in processes:
                wait_for_readiness(process, 200, 120)
            during = {
                p.log_path.stem: p.log().splitlines()[n:]
                for p, n in zip(processes, seen, strict=True)
            }

    for body in missing:
        assert (body["ready"], body["missing"]) == (False, ["kafka"])
        assert body["kafka"].startswith("unreachable since 20")
    for name, lines in during.items():
        # Unfiltered, the clients log thousands of connection errors in such an outage.
        errors = [line for line in lines if "ERROR" in line]
        assert len(errors) < 40, f"{name}: {len(errors)} error lines\n" + "\n".join(errors)
        assert any("Kafka answers again after" in line for line in lines), name


class GatewayProcess:
    """A `stripe-streams gateway` subprocess logging to a file, with its /readyz port."""

    def __init__(self, port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.port, self.process, self.log_path = port, process, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def gateway_process(settings: Settings, log_dir: Path) -> Iterator[GatewayProcess]:
    """Run `stripe-streams gateway` on these settings until the block ends."""
    port = free_port()
    log_path = log_dir / "gateway.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "gateway", "--host", "127.0.0.1",
             "--port", str(port)],
            env={**environment(settings), **TEST_SECRETS}, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        yield GatewayProcess(port, process, log_path)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
