"""Percentiles read off the per-minute latency buckets, as the monitoring API reports them."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

from projections.latency import BOUNDS_MS, add, percentile
from projections.monitor.alerts import RULES

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "alerts.yml"


def counts(**by_bound: int) -> list[int]:
    found = [0] * len(BOUNDS_MS)
    for bound, count in by_bound.items():
        found[BOUNDS_MS.index(float(bound.removeprefix("b")))] = count
    return found


def test_a_percentile_interpolates_inside_its_bucket() -> None:
    # 100 events between 100 and 150 ms: the median is halfway.
    assert percentile(counts(b100=100), 0.5) == 125
    assert percentile(counts(b0=99, b1000=1), 0.99) == 5.0
    assert percentile(counts(b0=98, b1000=2), 0.99) == 1750.0


def test_the_open_ended_bucket_answers_its_lower_bound_and_no_events_answer_none() -> None:
    assert percentile(counts(b600000=3), 0.99) == 600_000
    assert percentile([], 0.5) is None
    assert percentile([0] * len(BOUNDS_MS), 0.5) is None


def test_minutes_add_up_even_when_an_older_minute_has_no_buckets() -> None:
    total: list[int] = []
    add(total, [])
    add(total, [1, 2])
    add(total, [1, 0, 5])
    assert total == [2, 2, 5]


@given(st.lists(st.integers(0, 1000), min_size=len(BOUNDS_MS), max_size=len(BOUNDS_MS)))
def test_percentiles_grow_with_the_quantile_and_stay_within_the_buckets(
    buckets: list[int],
) -> None:
    values = [percentile(buckets, q) for q in (0.5, 0.95, 0.99)]
    if sum(buckets) == 0:
        assert values == [None, None, None]
        return
    assert all(v is not None for v in values)
    p50, p95, p99 = (float(v or 0) for v in values)
    assert 0 <= p50 <= p95 <= p99 <= BOUNDS_MS[-1]


def test_the_api_evaluates_the_rules_prometheus_evaluates() -> None:
    rules = {
        rule["alert"]: rule["labels"]["severity"]
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
    }
    assert {name: rule.severity for name, rule in RULES.items()} == rules
