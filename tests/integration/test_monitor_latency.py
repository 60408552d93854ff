"""Latency over long windows: past hours summed once and kept, the current one read each time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from projections.latency import BOUNDS_MS
from projections.monitor.reads import HourlyLatency

pytestmark = pytest.mark.integration
NOW = datetime(2026, 12, 2, 10, 25, 30, tzinfo=UTC)


def stats(url: str, rows: list[tuple[datetime, str, str, int, list[int]]]) -> None:
    with psycopg.connect(url) as conn:
        for minute, event_type, status, events, buckets in rows:
            conn.execute(
                "INSERT INTO ops.event_stats (minute, family, type, status, events, lag_buckets) "
                "VALUES (%s, 'invoices', %s, %s, %s, %s)",
                (minute, event_type, status, events, buckets),
            )


def bucket(index: int, count: int) -> list[int]:
    counts = [0] * len(BOUNDS_MS)
    counts[index] = count
    return counts


async def report(url: str, latency: HourlyLatency, hours: float) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await latency.performance(conn, NOW - timedelta(hours=hours), NOW)


def test_a_day_long_window_counts_every_minute_once_and_sees_the_current_hour_grow(
    database_url: str,
) -> None:
    stats(database_url, [
        # Before the window: left out.
        (NOW - timedelta(hours=30), "invoice.paid", "processed", 1000, bucket(17, 1000)),
        # The window's first, partial hour, inside and outside it.
        (NOW - timedelta(hours=24, minutes=-5), "invoice.paid", "processed", 10, bucket(3, 10)),
        (NOW - timedelta(hours=24, minutes=5), "invoice.paid", "processed", 500, bucket(17, 500)),
        # Whole hours in between.
        (NOW - timedelta(hours=5), "invoice.paid", "processed", 80, bucket(5, 80)),
        (NOW - timedelta(hours=5), "invoice.paid", "dead_lettered", 2, bucket(5, 2)),
        (NOW - timedelta(hours=3), "invoice.created", "processed", 8, bucket(9, 8)),
        # The current hour.
        (NOW - timedelta(minutes=10), "invoice.paid", "processed", 8, bucket(5, 8)),
    ])
    latency = HourlyLatency()

    first = asyncio.run(report(database_url, latency, 24))
    by_type = {t["type"]: t for t in first["by_type"]}
    assert (by_type["invoice.paid"]["events"], by_type["invoice.paid"]["errors"]) == (100, 2)
    assert by_type["invoice.created"]["events"] == 8
    [invoices] = first["by_family"]
    assert (invoices["events"], invoices["errors"]) == (108, 2)
    # 10 events at 25-50 ms, 90 at 100-150 ms, 8 at 1-2.5 s: the median is in 100-150 ms.
    assert 100 <= invoices["p50_ms"] <= 150
    assert 1000 <= invoices["p99_ms"] <= 2500

    stats(database_url, [
        (NOW - timedelta(minutes=1), "invoice.paid", "processed", 4, bucket(5, 4)),
    ])
    again = asyncio.run(report(database_url, latency, 24))
    assert {t["type"]: t["events"] for t in again["by_type"]} == {
        "invoice.created": 8, "invoice.paid": 104,
    }
    assert asyncio.run(report(database_url, HourlyLatency(), 24)) == again
