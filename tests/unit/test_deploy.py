"""The alert rules use only the metric names the design promises."""

from __future__ import annotations

import re
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMISED = {
    "webhooks_total", "ingest_seconds", "events_processed_total", "event_lag_seconds",
    "dead_letters_total", "dead_letters_open", "batch_size", "consumer_lag", "family_paused",
    "build_info",
}
METRIC = re.compile(r"stripe_streams_([a-z_]+)")


def _referenced(text: str) -> set[str]:
    names = set()
    for name in METRIC.findall(text):
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name.removesuffix(suffix) in PROMISED:
                name = name.removesuffix(suffix)
        names.add(name)
    return names


def test_alert_rules_use_only_promised_metrics() -> None:
    referenced = _referenced((DEPLOY / "alerts.yml").read_text())
    assert referenced
    assert referenced <= PROMISED
