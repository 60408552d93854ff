"""The worker's and the gateway's metrics, as Prometheus would scrape them."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from prometheus_client import generate_latest

from ingest.metrics import GatewayMetrics
from projections.metrics import WorkerMetrics
from streams.log.consumed import AppliedEvent, ConsumedEvent, Outcome
from tests.unit.test_agents import envelope


def test_a_batch_counts_every_event_by_type_and_outcome() -> None:
    metrics = WorkerMetrics()
    paid, created = envelope("invoice.paid"), envelope("invoice.created")
    applied = [
        AppliedEvent(ConsumedEvent(paid, "s.events.invoices", 0, 0), Outcome.PROCESSED),
        AppliedEvent(ConsumedEvent(paid, "s.events.invoices", 0, 1), Outcome.DUPLICATE),
        AppliedEvent(ConsumedEvent(paid, "s.events.invoices", 0, 2), Outcome.DUPLICATE),
        AppliedEvent(ConsumedEvent(created, "s.events.invoices", 0, 3), Outcome.DEAD_LETTERED),
        AppliedEvent(ConsumedEvent(created, "s.events.invoices", 0, 4), Outcome.PROCESSED),
    ]

    metrics.observe_batch("invoices", applied, now=paid.received_at.timestamp() + 0.2)

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(f"stripe_streams_{name}", labels)

    processed = "events_processed_total"
    assert sample(processed, family="invoices", type="invoice.paid", outcome="duplicate") == 2
    assert sample(processed, family="invoices", type="invoice.paid", outcome="processed") == 1
    assert sample(processed, family="invoices", type="invoice.created",
                  outcome="dead_lettered") == 1
    assert sample("dead_letters_total", family="invoices", type="invoice.created") == 1
    assert sample("event_lag_seconds_count", family="invoices") == 3
    assert sample("batch_size_sum", family="invoices") == 5


def test_a_lag_beyond_a_minute_is_measured_up_to_ten_minutes() -> None:
    metrics = WorkerMetrics()
    late = envelope("invoice.paid")
    applied = [AppliedEvent(ConsumedEvent(late, "s.events.invoices", 0, 0), Outcome.PROCESSED)]

    metrics.observe_batch("invoices", applied, now=late.received_at.timestamp() + 200)

    def below(bound: str) -> float | None:
        return metrics.registry.get_sample_value(
            "stripe_streams_event_lag_seconds_bucket", {"family": "invoices", "le": bound}
        )

    # A quantile over these buckets can say 200 s lies between 120 and 300, not "60 or more".
    assert below("60.0") == 0
    assert below("120.0") == 0
    assert below("300.0") == 1
    assert below("600.0") == 1


def test_the_worker_exports_its_release_and_process() -> None:
    registry = WorkerMetrics().registry

    assert registry.get_sample_value(
        "stripe_streams_build_info", {"version": version("stripe-streams")}
    ) == 1
    start = registry.get_sample_value("process_start_time_seconds")
    assert start is not None and start > 0
    assert registry.get_sample_value("process_resident_memory_bytes")
    assert b"python_info{" in generate_latest(registry)


def test_the_gateway_exports_its_release_and_process() -> None:
    registry = GatewayMetrics(["default"]).registry

    assert registry.get_sample_value(
        "stripe_streams_build_info", {"version": version("stripe-streams")}
    ) == 1
    assert registry.get_sample_value("process_start_time_seconds")


def test_a_gateway_of_several_processes_exports_its_release_but_no_process(
    tmp_path: Path,
) -> None:
    registry = GatewayMetrics(["default"], shared_dir=tmp_path).registry

    assert registry.get_sample_value(
        "stripe_streams_build_info", {"version": version("stripe-streams")}
    ) == 1
    # Whichever process answered a scrape would make its start time jump between scrapes.
    assert registry.get_sample_value("process_start_time_seconds") is None
