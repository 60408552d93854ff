"""A real Prometheus scraping the real gateway and worker answers every query of deploy/.

Every alert rule and every Grafana panel reads series that the processes really export, under
the job names of deploy/prometheus.yml; a poison event raises the dead-letter alert, and one
forged request raises nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.signature import signature_header
from streams.devtools.samples import EventFactory
from streams.devtools.services.prometheus import find_prometheus
from streams.errors import ServiceError
from streams.settings import Secret, Settings
from tests.e2e.test_worker_gateway import SECRET, gateway
from tests.integration.test_monitor import running_monitor
from tests.integration.worker_support import (
    WorkerProcess,
    free_port,
    logged_events,
    prepare_topics,
    wait_until,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "alerts.yml"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
# Seconds the whole stream has to show up in Prometheus once the processes run.
SETTLE = 90.0

# Grafana's interval variables, and any dashboard variable inside a label matcher.
_INTERVAL = re.compile(r"\$\{?__(rate_interval|interval|range)\}?")
_VARIABLE_MATCHER = re.compile(r'(\w+)\s*(?:=~|!~|!=|=)\s*"[^"]*\$[^"]*"')
# Comparisons outside label matchers and strings; ``bool`` makes them keep every series.
_QUOTED_OR_MATCHERS = re.compile(r'("(?:[^"\\]|\\.)*"|\{[^}]*\})')
_COMPARISON = re.compile(r"(==|!=|>=|<=|>(?!=)|<(?!=))(?!\s*bool\b)")


@pytest.fixture(scope="module")
def prometheus_binary() -> Path:
    try:
        return find_prometheus().prometheus
    except ServiceError as exc:
        pytest.skip(f"Prometheus is not installed: {exc}")


@contextmanager
def prometheus(
    binary: Path, targets: Mapping[str, Sequence[str]], home: Path
) -> Iterator[httpx.Client]:
    """Run Prometheus scraping ``targets`` (job name -> host:port) every second with the rules
    of deploy/alerts.yml; yield a client of its HTTP API once it is ready."""
    home.mkdir()
    config = home / "prometheus.yml"
    # JSON is YAML, and needs no YAML library.
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(addresses)}]}
            for job, addresses in targets.items()
        ],
    }))
    port = free_port()
    with (home / "prometheus.log").open("ab") as log:
        process = subprocess.Popen(
            [str(binary), f"--config.file={config}", f"--storage.tsdb.path={home / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.get("/-/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, (
                "Prometheus not ready: " + (home / "prometheus.log").read_text()[-2000:]
            )
            time.sleep(0.2)
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=30)


def query(api: httpx.Client, expression: str) -> list[dict[str, Any]]:
    """The series ``expression`` returns now; fail naming it when Prometheus refuses it."""
    answer = api.get("/api/v1/query", params={"query": expression})
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "success", (expression, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def alert_queries(api: httpx.Client) -> dict[str, str]:
    """Each alerting rule Prometheus loaded, by name, with its expression."""
    groups = api.get("/api/v1/rules").json()["data"]["groups"]
    return {
        rule["name"]: rule["query"]
        for group in groups for rule in group["rules"] if rule["type"] == "alerting"
    }


def unfiltered(expression: str) -> str:
    """``expression`` with every comparison turned into ``bool``: 0 or 1 for each series it
    compares, instead of only those that alert now."""
    parts = _QUOTED_OR_MATCHERS.split(expression)
    return "".join(
        part if index % 2 else _COMPARISON.sub(r"\1 bool", part)
        for index, part in enumerate(parts)
    )


def panel_queries() -> list[str]:
    """The expression of every target of every panel (rows included) of the dashboards, with
    Grafana's variables replaced as "All" and a one-minute interval would."""
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    expressions = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in panels(dashboard.get("panels", [])):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    expression = _INTERVAL.sub("1m", target["expr"])
                    expressions.append(_VARIABLE_MATCHER.sub(r'\1=~".*"', expression))
    return expressions


def customer_stream() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A customer's two months (card, subscription, invoices, payments, cancellation), then
    another customer's update that no retry can apply: the poison event, last."""
    factory = EventFactory(seed=31)
    events = list(factory.customer_lifecycle(periods=2))
    customer = factory.customer(created=factory.advance())
    events.append(factory.event("customer.created", customer, created=customer["created"]))
    # The customer handler refuses a balance that is not an integer.
    customer["balance"] = "a lot"
    poison = factory.event("customer.updated", customer)
    return [*events, poison], poison


def post(client: httpx.Client, event: dict[str, Any], secret: Secret) -> int:
    body = json.dumps(event).encode()
    return client.post(
        "/webhooks/stripe", content=body,
        headers={"Stripe-Signature": signature_header(body, secret),
                 "Content-Type": "application/json"},
    ).status_code


def alerting(api: httpx.Client) -> set[str]:
    """Names of the alerts pending or firing now."""
    alerts = api.get("/api/v1/alerts").json()["data"]["alerts"]
    return {alert["labels"]["alertname"] for alert in alerts}


def wait_for(check: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    """Poll ``check`` every second; fail with ``what()``, which says what is missing, at the end."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what()
        time.sleep(1)


def test_every_alert_and_panel_query_reads_series_the_processes_export(
    settings: Settings, tmp_path: Path, prometheus_binary: Path
) -> None:
    events, poison = customer_stream()
    prepare_topics(settings)

    with (
        gateway(settings, tmp_path) as base,
        WorkerProcess(settings, tmp_path) as worker,
        running_monitor(settings, tmp_path) as monitor,
    ):
        targets = {
            "stripe-streams-gateway": [base.removeprefix("http://")],
            "stripe-streams-worker": [f"127.0.0.1:{worker.port}"],
            "stripe-streams-monitor": [f"127.0.0.1:{monitor.port}"],
        }
        with prometheus(prometheus_binary, targets, tmp_path / "prometheus") as api:
            wait_for(
                lambda: {s["metric"]["job"] for s in query(api, "up == 1")} == set(targets),
                60, lambda: f"every target up: {query(api, 'up')}\n{worker.log()[-3000:]}",
            )
            assert httpx.get(f"http://127.0.0.1:{worker.port}/healthz").json() == {
                "status": "ok"
            }
            with httpx.Client(base_url=base, timeout=10) as client:
                assert [post(client, event, SECRET) for event in events] == [200] * len(events)
                assert post(client, events[0], Secret("whsec_forged")) == 400
            wait_until(lambda: logged_events(settings.database_url) >= {e["id"] for e in events},
                       SETTLE, "every event in the event log", [worker])

            rules = alert_queries(api)
            assert set(rules) == set(re.findall(r"- alert: (\w+)", RULES.read_text()))
            for expression in rules.values():
                query(api, expression)
            expressions = [*map(unfiltered, rules.values()), *panel_queries()]
            wait_for(
                lambda: all(query(api, expression) for expression in expressions), SETTLE,
                lambda: "no series for: " + "; ".join(
                    expression for expression in expressions if not query(api, expression)
                ),
            )
            # The worker counts open dead letters every 15 s; the rule evaluates every second.
            wait_for(lambda: "StripeDeadLettersGrowing" in alerting(api), 60,
                     lambda: f"the poison event {poison['id']} raising StripeDeadLettersGrowing;"
                             f" alerts: {alerting(api)}")
            raised = alerting(api)

    assert not raised & {
        "StripeGatewayDown", "StripeWorkerDown", "StripeMonitorDown",
        "StripeWebhookSignaturesFailing",
        "StripeWebhooksUnavailable", "StripeProjectionLagHigh", "StripeFamilyPaused",
    }
