"""The worker's metrics after a committed batch, as Prometheus would scrape them."""

from __future__ import annotations

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
