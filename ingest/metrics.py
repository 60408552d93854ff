"""The gateway's Prometheus metrics, in a registry of their own served at ``/metrics``.

With several worker processes every worker writes its samples to files in a shared directory
(prometheus_client's multiprocess mode, chosen by ``PROMETHEUS_MULTIPROC_DIR`` before the worker
imports the client) and any worker's ``/metrics`` answers with the sum over all of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from streams.version import build_info

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics", "WebhookOutcome"]

# Finer below 10 ms, where a healthy gateway answers, than the client's default buckets.
INGEST_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
)


class WebhookOutcome(StrEnum):
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
    """``stripe_streams_webhooks_total`` and ``stripe_streams_ingest_seconds`` of one gateway.

    Beside them: ``stripe_streams_build_info``, ``python_info`` and, with a single process,
    its ``process_*`` series.
    """

    def __init__(self, endpoints: Iterable[str], shared_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        build_info(self.registry)
        PlatformCollector(registry=self.registry)
        if shared_dir is None:
            ProcessCollector(registry=self.registry)
            own: CollectorRegistry | None = self.registry
        else:
            # No process_* here: they would describe whichever worker answered the scrape, and
            # its start time changing from scrape to scrape would look like restarts.
            MultiProcessCollector(self.registry, path=str(shared_dir))  # type: ignore[no-untyped-call]
            own = None  # The collector reads this worker's samples back from the files.
        webhooks = Counter(
            "stripe_streams_webhooks",
            "Webhook deliveries by endpoint and outcome.",
            ("endpoint", "outcome"),
            registry=own,
        )
        self._ingest = Histogram(
            "stripe_streams_ingest_seconds",
            "Time from receiving a webhook to Kafka's acknowledgement of its event.",
            buckets=INGEST_BUCKETS,
            registry=own,
        )
        # Every series exists from the start, so rates and alerts see zeros instead of gaps.
        self._webhooks = {
            (endpoint, outcome): webhooks.labels(endpoint, outcome.value)
            for endpoint in endpoints
            for outcome in WebhookOutcome
        }

    def count(self, endpoint: str, outcome: WebhookOutcome) -> None:
        """Count one delivery to a known endpoint."""
        self._webhooks[endpoint, outcome].inc()

    def observe_ingest(self, seconds: float) -> None:
        """Record the receive-to-acknowledgement time of one accepted event."""
        self._ingest.observe(seconds)

    def exposition(self) -> bytes:
        """Render every metric in the Prometheus text format."""
        return generate_latest(self.registry)
