"""The alert rules of ``deploy/alerts.yml``, evaluated over the ops tables and the Kafka sample.

For teams without Prometheus. Each rule keeps its name, severity and runbook; its condition is
read from what PostgreSQL and Kafka hold. A rule about a number only the gateway's process
knows (503s, signatures, its own latency) or about scrapes is ``not_evaluated``: the gateway
never writes to PostgreSQL, and only Prometheus sees processes that stopped answering.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection

from projections.latency import add, percentile
from projections.monitor import reads
from projections.monitor.kafka_state import KafkaState


@dataclass(frozen=True)
class Rule:
    name: str
    severity: str
    summary: str

    @property
    def runbook(self) -> str:
        return f"docs/runbooks.md#{self.name.lower()}"


RULES = {
    rule.name: rule
    for rule in (
        Rule("StripeGatewayDown", "critical", "The gateway does not answer scrapes"),
        Rule("StripeWorkerDown", "critical",
             "No family agent committed a batch while events wait in Kafka"),
        Rule("StripeMonitorDown", "warning", "The monitoring API does not answer scrapes"),
        Rule("StripeProcessRestarting", "warning", "A process restarted over and over"),
        Rule("StripeWebhooksUnavailable", "critical",
             "The gateway answers 503: the Kafka log does not acknowledge"),
        Rule("StripeWebhookSignaturesFailing", "warning",
             "Webhooks fail their signature check: a forged sender or a rotated secret"),
        Rule("StripeWebhooksSilent", "warning",
             "An endpoint that had traffic in the past day received nothing for an hour"),
        Rule("StripeIngestSlow", "warning", "p99 from request to Kafka ack above 1 s"),
        Rule("StripeProjectionLagHigh", "warning",
             "Events take over a minute from receipt to the mirror (p99, last 5 minutes)"),
        Rule("StripeConsumerLagGrowing", "warning", "Workers fall further behind the log"),
        Rule("StripeDeadLettersGrowing", "warning", "New dead letters in the last 15 minutes"),
        Rule("StripeDeadLettersOpen", "warning", "Dead letters wait for review for over an hour"),
        Rule("StripeFamilyPaused", "critical",
             "The dead-letter circuit breaker paused a family"),
    )
}
_PROMETHEUS_ONLY = {
    "StripeGatewayDown": "only Prometheus scrapes the gateway",
    "StripeMonitorDown": "only Prometheus scrapes the monitor",
    "StripeProcessRestarting": "only Prometheus sees process restarts",
    "StripeWebhooksUnavailable": "the gateway counts its 503s in its metrics, not in PostgreSQL",
    "StripeWebhookSignaturesFailing":
        "the gateway counts refused signatures in its metrics, not in PostgreSQL",
    "StripeIngestSlow": "the gateway measures its latency in its metrics, not in PostgreSQL",
}
Alerts = AsyncIterator[dict[str, Any]]
LAG_THRESHOLD = 1000
LATENCY_THRESHOLD_MS = 60_000.0
_SILENT_AFTER = timedelta(hours=1)
_LIVE_WITHIN = timedelta(days=1)
_STALLED_AFTER = timedelta(minutes=2)
_GROWTH_WINDOW = timedelta(minutes=15)
_OPEN_FOR = timedelta(hours=1)


class AlertMemory:
    """When each alert without a history in the tables was first seen firing, in this process."""

    def __init__(self) -> None:
        self._since: dict[str, datetime] = {}

    def since(self, key: str, firing: bool, now: datetime) -> datetime | None:
        if not firing:
            self._since.pop(key, None)
            return None
        return self._since.setdefault(key, now)


async def evaluate(
    conn: AsyncConnection[Any], kafka: KafkaState, memory: AlertMemory, now: datetime
) -> list[dict[str, Any]]:
    """Every rule's state (``firing``, ``ok`` or ``not_evaluated``), value, threshold and since."""
    found: list[dict[str, Any]] = []
    for name, reason in _PROMETHEUS_ONLY.items():
        found.append(_alert(name, "not_evaluated", reason=reason))
    for rules in (
        _worker_down(conn, kafka, memory, now), _silent_endpoints(conn, now),
        _projection_lag(conn, now), _dead_letters(conn, now), _paused(conn),
    ):
        found.extend([alert async for alert in rules])
    found.extend(_lag_growing(kafka, memory, now))
    order = list(RULES)
    return sorted(found, key=lambda a: (order.index(a["name"]), str(a.get("labels"))))


def _alert(
    name: str, state: str, *, value: float | None = None, threshold: float | None = None,
    since: datetime | None = None, labels: dict[str, str] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    rule = RULES[name]
    alert: dict[str, Any] = {
        "name": name, "severity": rule.severity, "state": state, "labels": labels or {},
        "value": value, "threshold": threshold, "since": since, "summary": rule.summary,
        "runbook": rule.runbook,
    }
    if reason is not None:
        alert["reason"] = reason
    return alert


async def _worker_down(
    conn: AsyncConnection[Any], kafka: KafkaState, memory: AlertMemory, now: datetime
) -> Alerts:
    name = "StripeWorkerDown"
    if not kafka.ok:
        yield _alert(name, "not_evaluated", reason=f"Kafka not sampled: {kafka.error}")
        return
    newest = await reads.newest_position(conn)
    idle = round((now - newest).total_seconds(), 1) if newest else None
    firing = kafka.total_lag > 0 and (idle is None or idle > _STALLED_AFTER.total_seconds())
    since = (newest + _STALLED_AFTER) if firing and newest else memory.since(name, firing, now)
    yield _alert(
        name, "firing" if firing else "ok", value=idle,
        threshold=_STALLED_AFTER.total_seconds(), since=since,
    )


async def _silent_endpoints(conn: AsyncConnection[Any], now: datetime) -> Alerts:
    for endpoint in await reads.endpoints(conn):
        last: datetime = endpoint["last_received_at"]
        quiet = now - last
        firing = _SILENT_AFTER < quiet < _LIVE_WITHIN + _SILENT_AFTER
        yield _alert(
            "StripeWebhooksSilent", "firing" if firing else "ok",
            value=round(quiet.total_seconds(), 1), threshold=_SILENT_AFTER.total_seconds(),
            since=last + _SILENT_AFTER if firing else None,
            labels={"endpoint": str(endpoint["endpoint"])},
        )


async def _projection_lag(conn: AsyncConnection[Any], now: datetime) -> Alerts:
    """p99 of the last five minutes above the threshold; since the first slow minute of the run."""
    rows = await reads.minutes(conn, timedelta(hours=1))
    recent: list[int] = []
    for minute, _, buckets in rows:
        if minute >= now - timedelta(minutes=5):
            add(recent, buckets)
    p99 = percentile(recent, 0.99)
    firing = p99 is not None and p99 > LATENCY_THRESHOLD_MS
    since = None
    if firing:
        for minute, _, buckets in rows:
            slow = percentile(buckets, 0.99)
            if slow is None or slow <= LATENCY_THRESHOLD_MS:
                break
            since = minute
    yield _alert(
        "StripeProjectionLagHigh", "firing" if firing else "ok",
        value=None if p99 is None else round(p99, 1), threshold=LATENCY_THRESHOLD_MS,
        since=since,
    )


def _lag_growing(kafka: KafkaState, memory: AlertMemory, now: datetime) -> Iterable[dict[str, Any]]:
    name = "StripeConsumerLagGrowing"
    growth = kafka.lag_growth(600)
    if not kafka.ok or growth is None:
        reason = (
            f"Kafka not sampled: {kafka.error}" if not kafka.ok
            else "the monitor has sampled the lag for less than 10 minutes"
        )
        yield _alert(name, "not_evaluated", reason=reason, threshold=LAG_THRESHOLD)
        return
    firing = kafka.total_lag > LAG_THRESHOLD and growth > 0
    yield _alert(
        name, "firing" if firing else "ok", value=kafka.total_lag, threshold=LAG_THRESHOLD,
        since=memory.since(name, firing, now),
    )


async def _dead_letters(conn: AsyncConnection[Any], now: datetime) -> Alerts:
    fresh, first = await reads.dead_letters_since(conn, _GROWTH_WINDOW)
    yield _alert(
        "StripeDeadLettersGrowing", "firing" if fresh else "ok", value=fresh, threshold=0,
        since=first,
    )
    open_count, oldest = await reads.open_dead_letters(conn)
    waiting = oldest is not None and now - oldest > _OPEN_FOR
    yield _alert(
        "StripeDeadLettersOpen", "firing" if waiting else "ok", value=open_count, threshold=0,
        since=oldest + _OPEN_FOR if waiting and oldest else None,
    )


async def _paused(conn: AsyncConnection[Any]) -> Alerts:
    paused = await reads.paused_families(conn)
    if not paused:
        yield _alert("StripeFamilyPaused", "ok", value=0, threshold=0)
    for pause in paused:
        yield _alert(
            "StripeFamilyPaused", "firing", value=1, threshold=0, since=pause["paused_at"],
            labels={"family": str(pause["family"])},
        )

