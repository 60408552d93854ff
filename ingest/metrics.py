"""The gateway's Prometheus metrics, in a registry of their own served at ``/metrics``."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics", "Outcome"]

# Finer below 10 ms, where a healthy gateway answers, than the client's default buckets.
INGEST_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
)


class Outcome(StrEnum):
    """What became of one webhook delivery (``outcome`` label of webhooks_total)."""

    ACCEPTED = "accepted"
    INVALID_SIGNATURE = "invalid_signature"
    STALE_TIMESTAMP = "stale_timestamp"
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"
    FORBIDDEN = "forbidden"
    THROTTLED = "throttled"


class GatewayMetrics:
    """``stripe_streams_webhooks_total`` and ``stripe_streams_ingest_seconds`` of one gateway."""

    def __init__(self, endpoints: Iterable[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        webhooks = Counter(
            "stripe_streams_webhooks",
            "Webhook deliveries by endpoint and outcome.",
            ("endpoint", "outcome"),
            registry=self.registry,
        )
        self._ingest = Histogram(
            "stripe_streams_ingest_seconds",
            "Time from receiving a webhook to Kafka's acknowledgement of its event.",
            buckets=INGEST_BUCKETS,
            registry=self.registry,
        )
        # Every series exists from the start, so rates and alerts see zeros instead of gaps.
        self._webhooks = {
            (endpoint, outcome): webhooks.labels(endpoint, outcome.value)
            for endpoint in endpoints
            for outcome in Outcome
        }

    def count(self, endpoint: str, outcome: Outcome) -> None:
        """Count one delivery to a known endpoint."""
        self._webhooks[endpoint, outcome].inc()

    def observe_ingest(self, seconds: float) -> None:
        """Record the receive-to-acknowledgement time of one accepted event."""
        self._ingest.observe(seconds)

    def exposition(self) -> bytes:
        """Render every metric in the Prometheus text format."""
        return generate_latest(self.registry)
