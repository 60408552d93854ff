"""A short soak: a steady stream through the gateway while a worker, the broker and the gateway
fail.

The bench's soak (bench/soak.py) at 300 webhooks/s for two minutes, on a broker of its own so
its faults hit no other test; it asserts correctness only, never speed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from streams.devtools.services.kafka import LocalKafka

# bench/ is a folder of scripts that import each other by name.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from soak import Node, SoakConfig, drop_database, fresh_stack, run_soak

pytestmark = pytest.mark.e2e


class PrivateBroker:
    """The test's own broker, as the soak's broker faults see it."""

    def __init__(self, kafka: LocalKafka) -> None:
        self.kafka = kafka

    def nodes(self) -> list[Node]:
        return [Node(node.name, node.address, node.pid(), node.log_file)
                for node in self.kafka.nodes]

    def start_stopped(self) -> None:
        self.kafka.up()


@pytest.fixture
def broker(private_kafka: LocalKafka) -> PrivateBroker:
    private_kafka.up()
    return PrivateBroker(private_kafka)


@pytest.mark.timeout(900)
def test_nothing_answered_200_is_lost_and_the_mirrors_are_exact_through_faults(
    broker: PrivateBroker, tmp_path: Path
) -> None:
    config = SoakConfig(
        rate=300, duration=120, workers=2,
        faults=("worker-kill", "broker-kill", "gateway-restart"), warmup=20,
        poison=3, drain=300, settle=300, partitions=3, rebuild_timeout=600,
    )
    with fresh_stack(broker, config.partitions) as settings:
        try:
            result = run_soak(config, settings, broker, None, tmp_path / "run", tmp_path)
        finally:
            drop_database(settings.database_url)

    assert [fault.name for fault in result.faults] == list(config.faults)
    assert not result.answers.undelivered, "deliveries never answered 200 after retries"
    assert not result.verdict.lost, f"{len(result.verdict.lost)} events answered 200 and lost"
    failed = [f"{check.name}: {check.failures} failed, e.g. {check.examples}"
              for check in result.verdict.checks if not check.ok]
    assert not failed, failed
    assert result.verdict.statuses.get("dead_lettered") == config.poison
