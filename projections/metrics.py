"""The worker's Prometheus metrics (prefix ``stripe_streams_``), served at ``/metrics``.

Names and labels are part of the external contract: dashboards and alert rules in ``deploy/``
use exactly these.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.log.consumed import AppliedEvent, Outcome
from streams.log.routing import FAMILIES
from streams.version import build_info

LagSource = Callable[[], Mapping[tuple[str, int], int]]
"""Returns the messages not yet processed per (topic, partition) this worker consumes."""

# Outcomes that finish an event for the first time: the ones whose latency users care about.
_FIRST_OUTCOMES = frozenset(
    {Outcome.PROCESSED, Outcome.STALE, Outcome.UNHANDLED, Outcome.DEAD_LETTERED}
)
# Up to ten minutes, so a p99 beyond the one-minute target is measured instead of capped at it.
_LAG_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class WorkerMetrics:
    """Metrics of one worker process, in a registry of their own.

    Beside the ``stripe_streams_`` series the registry holds the process' own (``process_*``,
    ``python_info``) and ``stripe_streams_build_info``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        build_info(self.registry)
        self.events_processed = Counter(
            "stripe_streams_events_processed",
            "Events the family agents finished, by outcome (processed, stale, unhandled, "
            "dead_lettered, duplicate, skipped).",
            ["family", "type", "outcome"],
            registry=self.registry,
        )
        self.event_lag = Histogram(
            "stripe_streams_event_lag_seconds",
            "Seconds from the gateway receiving an event to its batch being committed.",
            ["family"],
            buckets=_LAG_BUCKETS,
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "stripe_streams_dead_letters",
            "Events produced to the dead-letter topic.",
            ["family", "type"],
            registry=self.registry,
        )
        self.dead_letters_open = Gauge(
            "stripe_streams_dead_letters_open",
            "Dead letters waiting for review (ops.dead_letters with status open).",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "stripe_streams_batch_size",
            "Events per batch a family agent applied in one transaction.",
            ["family"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.family_paused = Gauge(
            "stripe_streams_family_paused",
            "1 while a family is paused by the dead-letter circuit breaker, else 0.",
            ["family"],
            registry=self.registry,
        )
        # Every family from the start: an alert on the value needs the series before any pause.
        for family in FAMILIES:
            self.family_paused.labels(family).set(0)

    def observe_batch(
        self, family: str, applied: Sequence[AppliedEvent], now: float | None = None
    ) -> None:
        """Count a committed batch: outcomes, dead letters, its size and each event's lag."""
        now = time.time() if now is None else now
        self.batch_size.labels(family).observe(len(applied))
        # One labelled child per distinct label set of the batch, not one lookup per event.
        outcomes = collections.Counter((item.event.envelope.type, item.outcome) for item in applied)
        for (event_type, outcome), count in outcomes.items():
            self.events_processed.labels(family, event_type, outcome.value).inc(count)
            if outcome is Outcome.DEAD_LETTERED:
                self.dead_letters.labels(family, event_type).inc(count)
        lag = self.event_lag.labels(family)
        for item in applied:
            if item.outcome in _FIRST_OUTCOMES:
                lag.observe(max(0.0, now - item.event.envelope.received_at.timestamp()))

    def track_consumer_lag(self, source: LagSource) -> None:
        """Export ``stripe_streams_consumer_lag`` from ``source``, read at every scrape."""
        self.registry.register(_ConsumerLag(source))

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)


class _ConsumerLag(Collector):
    """Messages not yet processed per partition this worker consumes; revoked ones vanish."""

    def __init__(self, source: LagSource) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "stripe_streams_consumer_lag",
            "Messages in a partition this worker consumes that it has not processed yet.",
            labels=["topic", "partition"],
        )
        for (topic, partition), lag in sorted(self._source().items()):
            family.add_metric([topic, str(partition)], lag)
        yield family
