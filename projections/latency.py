"""Received-to-projected latency as fixed buckets: counted per minute, read as percentiles.

The workers add each event to a bucket of ``ops.event_stats.lag_buckets`` in the transaction
that applies it; the monitoring API sums the buckets of a window and reads percentiles off them,
never scanning the event log. The bounds reach ten minutes, like the Prometheus histogram's.
"""

from __future__ import annotations

from collections.abc import Sequence

BOUNDS_MS: tuple[float, ...] = (
    0, 5, 10, 25, 50, 100, 150, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
    120_000, 300_000, 600_000,
)
"""Lower bound of each bucket, milliseconds: bucket i holds [BOUNDS_MS[i], BOUNDS_MS[i + 1]),
the last one everything from ten minutes up."""


def add(total: list[int], counts: Sequence[int]) -> None:
    """Add one minute's bucket counts to ``total`` (a shorter list is padded with zeros)."""
    if len(total) < len(counts):
        total.extend([0] * (len(counts) - len(total)))
    for index, count in enumerate(counts):
        total[index] += count


def percentile(counts: Sequence[int], quantile: float) -> float | None:
    """The ``quantile`` (0..1) of the latencies the buckets count, milliseconds, or None if none.

    Interpolates linearly inside the bucket that holds it, as Prometheus's histogram_quantile
    does; in the open-ended last bucket it answers that bucket's lower bound.
    """
    events = sum(counts)
    if events == 0:
        return None
    rank = quantile * events
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            low = BOUNDS_MS[index]
            if index + 1 >= len(BOUNDS_MS):
                return low
            high = BOUNDS_MS[index + 1]
            return low + (high - low) * max(rank - seen, 0) / count
        seen += count
    return BOUNDS_MS[len(counts) - 1]
