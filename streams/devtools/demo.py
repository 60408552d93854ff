"""The main job end to end on local services: ``make demo``.

Starts the gateway and a worker, sends a realistic signed event stream (customers through
subscription lifecycles with invoices and payments, plus a duplicate delivery, an out-of-order
pair and one poison event), waits until every event is accounted for, then shows what landed in
the mirror tables, the event log and the dead letters, and where to look next.
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from ingest.signature import signature_header
from streams.devtools.samples import EventFactory
from streams.settings import Secret, Settings

DEMO_SECRET = "whsec_stripe_streams_local_demo"
SETTLE_TIMEOUT = 180.0
console = Console(highlight=False)


@dataclass(frozen=True)
class DemoStream:
    """The events to deliver, in delivery order, and the ones the story points at."""

    deliveries: list[dict[str, Any]]
    duplicate_id: str
    stale_id: str
    poison_id: str

    @property
    def event_ids(self) -> set[str]:
        return {event["id"] for event in self.deliveries}


def build_stream(customers: int, seed: int | None = None) -> DemoStream:
    """Build customer lifecycles and the three bad-day deliveries."""
    factory = EventFactory(seed)
    deliveries: list[dict[str, Any]] = []
    for _ in range(customers):
        deliveries.extend(factory.customer_lifecycle(periods=2))
    duplicate = deliveries[len(deliveries) // 2]
    deliveries.append(copy.deepcopy(duplicate))

    customer = factory.customer(created=factory.advance())
    deliveries.append(factory.event("customer.created", customer, created=customer["created"]))
    older = factory.event("customer.updated", {**customer, "email": "old@example.com"})
    newer = factory.event("customer.updated", {**customer, "email": "new@example.com"})
    deliveries.extend([newer, older])

    poison = factory.sample_event("charge.succeeded")
    poison["data"]["object"]["amount"] = "twenty dollars"
    deliveries.append(poison)
    return DemoStream(deliveries, duplicate["id"], older["id"], poison["id"])


@contextmanager
def running(
    name: str, argv: list[str], env: dict[str, str], log_path: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Run one stripe-streams command in the background for the duration of the block."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", *argv],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        console.print(f"[dim]{name} stopped (log {log_path})[/dim]")


def wait_until_ready(url: str, timeout: float = 90.0) -> None:
    """Poll an HTTP URL until it answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: {url} did not become ready within {timeout:.0f}s")
        time.sleep(0.5)


def deliver(events: Sequence[dict[str, Any]], port: int, secret: Secret) -> list[int]:
    """Sign and POST each event to the gateway as Stripe would; return the statuses."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    statuses = []
    for event in events:
        body = json.dumps(event).encode()
        connection.request(
            "POST", "/webhooks/stripe", body=body,
            headers={
                "Content-Type": "application/json",
                "Stripe-Signature": signature_header(body, secret),
            },
        )
        response = connection.getresponse()
        response.read()
        statuses.append(response.status)
    connection.close()
    return statuses


def wait_until_settled(
    database_url: str, event_ids: set[str], worker: subprocess.Popen[bytes]
) -> None:
    """Wait until every delivered event has a final status in the event log."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    with console.status("waiting for the worker to project every event") as status:
        while True:
            with psycopg.connect(database_url) as conn:
                settled = conn.execute(
                    "SELECT count(*) FROM ops.event_log WHERE event_id = ANY(%s)",
                    (list(event_ids),),
                ).fetchone()
            done = settled[0] if settled else 0
            status.update(f"waiting for the worker: {done}/{len(event_ids)} events settled")
            if done >= len(event_ids):
                return
            if worker.poll() is not None:
                raise SystemExit(f"demo: the worker exited ({worker.returncode}); see its log")
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"demo: only {done} of {len(event_ids)} events settled in "
                    f"{SETTLE_TIMEOUT:.0f}s; see the worker log"
                )
            time.sleep(0.5)


def _table(title: str, conn: psycopg.Connection[Any], query: str, *params: Any) -> Table:
    cursor = conn.execute(query, params)
    table = Table(*(column.name for column in cursor.description or ()), title=title)
    for row in cursor.fetchall():
        table.add_row(*("" if value is None else str(value) for value in row))
    return table


def report(database_url: str, stream: DemoStream) -> None:
    """Show what landed in the mirror tables, the event log and the dead letters."""
    ids = list(stream.event_ids)
    with psycopg.connect(database_url) as conn:
        counts = " UNION ALL ".join(
            f"SELECT '{name}' AS mirror_table, count(*) AS rows, "
            f"count(*) FILTER (WHERE deleted) AS deleted FROM stripe.{name}"
            for name in (
                "customers", "subscriptions", "subscription_items", "invoices",
                "payment_intents", "charges", "payment_methods",
            )
        )
        console.print(_table("Mirror tables (schema stripe)", conn, counts))
        console.print(_table(
            "stripe.subscriptions (newest first)", conn,
            "SELECT id, customer, status, current_period_end, deleted FROM stripe.subscriptions"
            " ORDER BY last_event_created DESC LIMIT 5",
        ))
        console.print(_table(
            "stripe.invoices (newest first)", conn,
            "SELECT id, customer, status, amount_paid, currency FROM stripe.invoices"
            " ORDER BY last_event_created DESC LIMIT 5",
        ))
        console.print(_table(
            "ops.event_log by status", conn,
            "SELECT status, count(*) AS events, sum(deliveries) AS deliveries"
            " FROM ops.event_log WHERE event_id = ANY(%s) GROUP BY status ORDER BY status", ids,
        ))
        console.print(_table(
            "The bad day: a duplicate, an out-of-order pair, a poison event", conn,
            "SELECT e.event_id, e.type, e.status, e.deliveries, c.email AS customer_email_now"
            " FROM ops.event_log e LEFT JOIN stripe.customers c ON c.id = e.object_id"
            " WHERE e.event_id IN (%s, %s, %s)",
            stream.duplicate_id, stream.stale_id, stream.poison_id,
        ))
        console.print(_table(
            "ops.dead_letters", conn,
            "SELECT id, event_id, type, error_type, left(error_message, 60) AS error, attempts,"
            " status FROM ops.dead_letters WHERE event_id = ANY(%s)", ids,
        ))


def worker_metrics(port: int) -> Table:
    """Summarise the worker's own Prometheus counters by family and outcome."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        exposition = response.read().decode()
    totals: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(exposition):
        if family.name == "stripe_streams_events_processed":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = (sample.labels["family"], sample.labels["outcome"])
                    totals[key] += int(sample.value)
    table = Table("family", "outcome", "events", title="stripe_streams_events_processed_total")
    for (family_name, outcome), count in sorted(totals.items()):
        table.add_row(family_name, outcome, str(count))
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo on local defaults."""
    parser = argparse.ArgumentParser(prog="stripe-streams-demo", description=__doc__)
    parser.add_argument("--customers", type=int, default=3)
    parser.add_argument("--gateway-port", type=int, default=8080)
    parser.add_argument("--worker-port", type=int, default=6066)
    args = parser.parse_args(argv)

    env = {**os.environ}
    env.setdefault("STRIPE_WEBHOOK_SECRETS", DEMO_SECRET)
    env.setdefault("STRIPE_STREAMS_MAX_ATTEMPTS", "3")
    settings = Settings.from_env(env)
    secret = settings.webhook_secrets["default"][0]
    logs = settings.state_dir
    logs.mkdir(parents=True, exist_ok=True)
    stream = build_stream(args.customers)

    gateway = ["gateway", "--host", "127.0.0.1", "--port", str(args.gateway_port)]
    worker = ["worker", "--web-port", str(args.worker_port)]
    with (
        running("gateway", gateway, env, str(logs / "demo-gateway.log")),
        running("worker", worker, env, str(logs / "demo-worker.log")) as worker_process,
    ):
        wait_until_ready(f"http://127.0.0.1:{args.gateway_port}/readyz")
        wait_until_ready(f"http://127.0.0.1:{args.worker_port}/metrics")
        console.print(f"delivering {len(stream.deliveries)} signed events to the gateway")
        statuses = deliver(stream.deliveries, args.gateway_port, secret)
        accepted = sum(status == 200 for status in statuses)
        console.print(f"gateway answered 200 to {accepted} of {len(statuses)} deliveries")
        wait_until_settled(settings.database_url, stream.event_ids, worker_process)
        report(settings.database_url, stream)
        console.print(worker_metrics(args.worker_port))

    console.print(
        "\nWhere to look next:\n"
        "  run the pipeline:  STRIPE_WEBHOOK_SECRETS=whsec_... stripe-streams gateway\n"
        "                     stripe-streams worker\n"
        f"  gateway metrics:   http://127.0.0.1:{args.gateway_port}/metrics\n"
        f"  worker metrics:    http://127.0.0.1:{args.worker_port}/metrics\n"
        f"  the tables:        psql {settings.database_url}\n"
        "                     stripe.customers, stripe.subscriptions, stripe.invoices,\n"
        "                     ops.event_log, ops.dead_letters\n"
        "  dashboards:        deploy/ (Prometheus scrape config, alert rules, Grafana)\n"
        f"  logs of this run:  {logs}/demo-gateway.log, {logs}/demo-worker.log"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
