"""Latency of ``stripe-streams monitor`` over a large event log, every endpoint interleaved.

    .venv/bin/python bench/monitor.py [--events 5000000] [--objects 200000] [--months 6]
                                      [--stats-days 7] [--requests 200] [--repeats 3]
                                      [--warmup 20] [--budget 60] [--keep] [--no-topics]
                                      [--database stripe_streams_bench_monitor]

Uses the PostgreSQL server of DATABASE_URL and the Kafka broker of KAFKA_BOOTSTRAP_SERVERS.

* fill: the database ``--database`` is dropped, created and migrated (``stripe-streams
  migrate``); the monthly partitions of the ``--months`` before are created
  (``maintain_partitions`` for a moment in each month); then, by SQL run in the server
  (``INSERT ... SELECT`` over ``generate_series``, nothing row by row from Python):
  ``--events`` rows of ``ops.event_log`` spread evenly over the ``--months`` up to now, on
  ``--objects`` objects (an object is picked with a skew, so a few hundred have hundreds of
  events, the least busy about 15), typed by the event types of
  ``tests/data/stripe_event_types.txt`` weighted like a subscription business (invoices,
  charges, payment intents and subscriptions most), routed to their family by
  ``route_event``; outcomes: ``unhandled`` for the types no handler takes, about 2 % of the
  rest ``stale``, 0.1 % ``dead_lettered``, 0.05 % dead-lettered then retried; 1 % delivered
  twice; 10 % from a Connect endpoint; received 0.3-2.3 s after ``created`` (backfilled
  events up to 12 h after), processed 20 ms to seconds after receipt. One ``ops.event_trail``
  row per event by outcome, plus one per duplicate delivery and two per retried dead letter;
  ``ops.event_stats`` per minute, family, type and outcome of the last ``--stats-days`` (0: of
  every event), counted from those rows with the workers' latency buckets; a dead letter per
  dead-lettered or retried event with a sample payload of its type; a few hundred batch jobs;
  each endpoint's newest event per family; a position per family partition. Then
  ``VACUUM (ANALYZE)``, so no autovacuum runs during the measurement.
  ``--keep`` reuses a database filled before, moving the per-minute rows, dead letters,
  endpoint activity and positions forward by the time since the fill (the event log and the
  trail are read by id and object only, not by time).
* measure: ``stripe-streams monitor`` starts on a free port with its token, its own topic
  prefix (its topics created empty, so the Kafka sample every 5 s does what it does in
  production; ``--no-topics`` leaves them out, and the sample finds none) and the bench
  database. After ``--warmup`` requests per endpoint, ``--repeats`` times ``--requests``
  rounds, each sending one request to every endpoint in a shuffled order on one keep-alive
  connection, so whatever else runs on the machine slows them all alike. An endpoint that
  has taken ``--budget`` seconds in a repeat sits out its later rounds (fewer requests, so
  the run stays short however slow it is). Latency is measured in the client: request sent
  to body read.
* reported per endpoint: requests, p50, p95, p99 and max over every repeat, each repeat's p99,
  the monitor's CPU per request (read from /proc before and after each request), the
  response size, answers other than 200, and whether p99 < 100 ms; per repeat, the monitor's
  and PostgreSQL's CPU per request (PostgreSQL: the backends of the bench's database and the
  server's shared processes), ``busy cores`` (2.00 = both cores of this machine busy) and
  the load average; the same machine figures for the 3 s before the run.

The database is left in place for the next ``--keep`` run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import orjson
import psycopg
from pipeline import LOG_DIR, busy_cores_since, busy_ticks, free_port, percentile, start, stop
from psycopg import sql
from psycopg.types.json import Jsonb
from replay import PostgresCpu
from rich.console import Console
from rich.table import Table

from projections.latency import BOUNDS_MS
from projections.partitions import maintain_partitions, month_start
from streams.devtools.samples import EventFactory
from streams.handlers.registry import load_handlers
from streams.log.routing import FAMILIES, route_event
from streams.log.topics import delete_topics, ensure_topics, topic_name, worker_topics
from streams.settings import Settings

DATABASE = "stripe_streams_bench_monitor"
TOKEN = "bench-monitor-token"
PREFIX = "benchmonitor"
PARTITIONS = 6
TARGET_MS = 100.0
IDLE_SECONDS = 10.0
"""How long the monitor's CPU is measured with no request, before the repeats."""
CHUNK = 250_000
"""Events inserted per statement (one transaction each)."""
EVENT_TYPES = Path(__file__).resolve().parent.parent / "tests" / "data" / "stripe_event_types.txt"
WEIGHTS = {
    "invoice.updated": 8.0, "invoice.created": 5.0, "invoice.finalized": 5.0,
    "invoice.paid": 5.0, "invoice.payment_succeeded": 5.0, "invoice.upcoming": 2.0,
    "invoice.payment_failed": 0.5, "invoiceitem.created": 2.0,
    "charge.succeeded": 8.0, "charge.updated": 3.0, "charge.failed": 0.5,
    "charge.refunded": 0.3, "payment_intent.created": 8.0, "payment_intent.succeeded": 8.0,
    "payment_intent.payment_failed": 0.5, "payment_method.attached": 2.0,
    "refund.created": 0.3, "customer.created": 2.0, "customer.updated": 4.0,
    "customer.subscription.created": 1.0, "customer.subscription.updated": 6.0,
    "customer.subscription.deleted": 0.5, "customer.subscription.trial_will_end": 0.3,
    "checkout.session.completed": 2.0, "balance.available": 1.0, "payout.created": 0.3,
    "payout.paid": 0.3, "charge.dispute.created": 0.05,
}
"""Relative frequency of the common event types; every other type gets ``RARE``."""
RARE = 0.02
PREFIXES = {
    "customer": "cus_", "customer.subscription": "sub_1", "subscription_schedule": "sub_sched_1",
    "invoice": "in_1", "invoiceitem": "ii_1", "credit_note": "cn_1", "payment_intent": "pi_1",
    "charge": "ch_1", "charge.refund": "re_1", "refund": "re_1", "charge.dispute": "dp_1",
    "payment_method": "pm_1", "setup_intent": "seti_1", "checkout.session": "cs_live_a1",
    "product": "prod_", "price": "price_1", "plan": "plan_", "promotion_code": "promo_1",
    "payout": "po_1", "balance": "bal_",
}
"""Id prefix of each resource's objects, as Stripe shapes them; others get ``<name>_``."""
ERRORS = (
    ("HandlerError", "amount_due is not an integer: '12.50'"),
    ("KeyError", "'customer'"),
    ("HandlerError", "unexpected object type 'deleted_object'"),
    ("ValueError", "invalid isoformat string: ''"),
)
console = Console(width=170)


# Filling the database.

@dataclass
class Step:
    name: str
    rows: int
    seconds: float


def database_url(base: str, name: str) -> str:
    return urlunsplit(urlsplit(base)._replace(path=f"/{name}"))


def recreate(base: str, name: str) -> str:
    """Drop and create the bench database; its URL."""
    admin = database_url(base, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return database_url(base, name)


def migrate(url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "streams.cli", "migrate"],
        env={**os.environ, "DATABASE_URL": url}, check=True, stdout=subprocess.DEVNULL,
    )


def months_between(first: datetime, last: datetime) -> Iterator[datetime]:
    month = month_start(first)
    while month <= last:
        yield month
        month = month_start(month, 1)


def event_types() -> list[tuple[str, str, str, str | None, int]]:
    """(type, resource, family, handler, weight in hundredths) of every known event type."""
    registry = load_handlers()
    found = []
    for line in EVENT_TYPES.read_text().splitlines():
        event_type = line.strip()
        if not event_type:
            continue
        handler = registry.lookup(event_type)
        weight = round(WEIGHTS.get(event_type, RARE) * 100)
        found.append((
            event_type, event_type.rsplit(".", 1)[0], route_event(event_type),
            handler.name if handler else None, weight,
        ))
    return found


def payload_samples(types: Sequence[str]) -> list[tuple[str, Jsonb]]:
    """A realistic event of each type the samples can build, as a dead letter's payload."""
    factory = EventFactory(seed=7, livemode=True)
    samples = []
    for event_type in types:
        try:
            samples.append((event_type, Jsonb(factory.sample_event(event_type))))
        except ValueError:
            continue
    return samples


@contextmanager
def timed(steps: list[Step], name: str) -> Iterator[list[int]]:
    """Time a step; the caller appends the rows it wrote to the yielded list."""
    rows: list[int] = []
    console.print(f"  {name} ...", end="")
    began = time.perf_counter()
    yield rows
    steps.append(Step(name, sum(rows), time.perf_counter() - began))
    console.print(f" {sum(rows):,} rows in {steps[-1].seconds:.1f} s")


def fill(url: str, events: int, objects: int, months: int, stats_days: int) -> list[Step]:
    """Fill the bench database by SQL run in the server; the time and rows of each step."""
    steps: list[Step] = []
    now = datetime.now(UTC).replace(microsecond=0)
    first = now - timedelta(days=30.44 * months)
    span = (now - first).total_seconds()
    types = event_types()
    handled = sorted({t for t, _, _, handler, _ in types if handler})
    params: dict[str, Any] = {
        "start": first.timestamp(), "step": span / max(1, events), "now": now,
        "objects": objects, "prefix": PREFIX,
    }
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET work_mem = '256MB'")
        conn.execute("SET maintenance_work_mem = '512MB'")
        with timed(steps, "monthly partitions") as rows:
            for month in months_between(first, now):
                done = maintain_partitions(conn, now=month)
                rows.append(len(done.created) if done else 0)
        with timed(steps, "objects and types") as rows:
            rows.append(define_objects(conn, types, objects, handled))
        conn.execute("SELECT setseed(0.42)")
        with timed(steps, "ops.event_log") as rows:
            for low in range(0, events, CHUNK):
                rows.append(conn.execute(EVENTS, {
                    **params, "low": low, "high": min(events, low + CHUNK),
                }).rowcount)
                console.print(f" {low + rows[-1]:,}", end="")
        with timed(steps, "ops.event_trail") as rows:
            for month in months_between(first, now):
                rows.append(conn.execute(TRAIL, {
                    "start": month, "end": month_start(month, 1),
                    "dlq": topic_name(PREFIX, "dlq"),
                }).rowcount)
        with timed(steps, "ops.event_stats") as rows:
            since = now - timedelta(days=stats_days) if stats_days else first
            rows.append(conn.execute(stats_query(), {"since": since}).rowcount)
        with timed(steps, "ops.dead_letters") as rows:
            rows.append(conn.execute(DEAD_LETTERS, {}).rowcount)
        with timed(steps, "batch jobs, endpoints, positions") as rows:
            rows.append(conn.execute(BATCH_JOBS, {"now": now}).rowcount)
            rows.append(conn.execute(ENDPOINTS, {"since": now - timedelta(days=2)}).rowcount)
            rows.append(conn.execute(POSITIONS, {
                "since": now - timedelta(days=2), "families": list(FAMILIES),
            }).rowcount)
        with timed(steps, "VACUUM (ANALYZE)") as rows:
            conn.execute("VACUUM (ANALYZE)")
            rows.append(0)
    return steps


def define_objects(
    conn: psycopg.Connection[Any], types: Sequence[tuple[str, str, str, str | None, int]],
    objects: int, handled: Sequence[str],
) -> int:
    """Tables of schema bench: the weighted types, the resources and the objects."""
    conn.execute("DROP SCHEMA IF EXISTS bench CASCADE")
    conn.execute("CREATE SCHEMA bench")
    conn.execute(
        "CREATE TABLE bench.types (resource text, n int, type text, family text, handler text, "
        "PRIMARY KEY (resource, n))"
    )
    conn.execute(
        "CREATE TABLE bench.resources (resource text PRIMARY KEY, prefix text, lo int, hi int, "
        "types int)"
    )
    conn.execute(
        "CREATE TABLE bench.objects (k int PRIMARY KEY, object_id text, resource text, types int)"
    )
    conn.execute("CREATE TABLE bench.payloads (type text PRIMARY KEY, payload jsonb)")
    by_resource: dict[str, list[tuple[str, str, str | None, int]]] = {}
    for event_type, resource, family, handler, weight in types:
        by_resource.setdefault(resource, []).append((event_type, family, handler, weight))
    expanded: list[tuple[str, int, str, str, str | None]] = []
    resources: list[tuple[str, str, int, int, int]] = []
    low = 0
    for resource, entries in sorted(by_resource.items()):
        total = 0
        for event_type, family, handler, weight in entries:
            expanded.extend(
                (resource, total + n, event_type, family, handler) for n in range(weight)
            )
            total += weight
        prefix = PREFIXES.get(resource, resource.rsplit(".", 1)[-1][:5] + "_")
        resources.append((resource, prefix, low, low + total, total))
        low += total
    with conn.cursor() as cursor:
        with cursor.copy("COPY bench.types FROM STDIN") as copy:
            for row in expanded:
                copy.write_row(row)
        with cursor.copy("COPY bench.resources FROM STDIN") as copy:
            for resource_row in resources:
                copy.write_row(resource_row)
        cursor.executemany(
            "INSERT INTO bench.payloads VALUES (%s, %s)", payload_samples(handled)
        )
    conn.execute(OBJECTS, {"objects": objects, "weights": low})
    conn.execute("ANALYZE bench.types, bench.resources, bench.objects")
    return objects


OBJECTS = """
INSERT INTO bench.objects
SELECT k, r.prefix || substr(md5('object' || k), 1, 24), r.resource, r.types
FROM generate_series(0, %(objects)s - 1) AS k
JOIN bench.resources AS r
  ON (hashint4(k)::bigint + 2147483648) %% %(weights)s >= r.lo
 AND (hashint4(k)::bigint + 2147483648) %% %(weights)s < r.hi
"""

# One event per i: an object (skewed towards low k: power 1.5 gives the busiest objects
# hundreds of events), a type of its resource by weight, an outcome, a source and a latency.
EVENTS = """
INSERT INTO ops.event_log (
    event_id, type, family, object_id, account, livemode, created, received_at, processed_at,
    status, deliveries, attempts, source, topic, "partition", "offset", endpoint,
    log_partition, log_offset
)
SELECT e.event_id, t.type, t.family, o.object_id,
       CASE WHEN e.u_endpoint < 0.1 THEN 'acct_1' || substr(md5('account' || e.i %% 40), 1, 16)
       END,
       true, e.created, r.received_at,
       CASE WHEN s.source = 'replay'
                THEN least(r.received_at + make_interval(days => 1 + e.i %% 5), %(now)s)
            WHEN s.source = 'dlq_retry'
                THEN least(r.received_at + make_interval(hours => 1 + e.i %% 24), %(now)s)
            ELSE least(r.received_at + make_interval(secs => e.lag_ms / 1000), %(now)s)
       END,
       s.status, CASE WHEN e.u_duplicate < 0.01 THEN 2 ELSE 1 END,
       CASE WHEN s.status = 'dead_lettered' THEN 3 ELSE 1 END,
       s.source, %(prefix)s || '.events.' || t.family,
       (hashtext(o.object_id) & 2147483647) %% 6, e.i,
       CASE WHEN s.source = 'backfill' THEN NULL
            WHEN e.u_endpoint < 0.1 THEN 'connect' ELSE 'default' END,
       (hashtext(o.object_id) & 2147483647) %% 6, e.i
FROM (
    SELECT i, 'evt_1' || substr(md5('event' || i), 1, 24) AS event_id,
           to_timestamp(floor(%(start)s + (i + random()) * %(step)s)) AS created,
           floor(%(objects)s * power(random(), 1.5))::int AS k,
           random() AS u_type, random() AS u_status, random() AS u_source,
           random() AS u_endpoint, random() AS u_duplicate, random() AS u_delay,
           CASE WHEN random() < 0.003 THEN 1000 + random() * 60000
                ELSE 20 - 120 * ln(1 - random()) END AS lag_ms
    FROM generate_series(%(low)s::int, %(high)s::int - 1) AS i
) AS e
JOIN bench.objects AS o ON o.k = e.k
JOIN bench.types AS t ON t.resource = o.resource AND t.n = floor(e.u_type * o.types)::int
CROSS JOIN LATERAL (
    SELECT CASE WHEN t.handler IS NULL THEN 'unhandled'
                WHEN e.u_status < 0.0012 THEN 'dead_lettered'
                WHEN e.u_status < 0.0218 THEN 'stale'
                ELSE 'processed' END AS status,
           CASE WHEN t.handler IS NOT NULL AND e.u_status >= 0.9994 THEN 'dlq_retry'
                WHEN e.u_source < 0.01 THEN 'backfill'
                WHEN e.u_source < 0.0125 THEN 'replay'
                ELSE 'webhook' END AS source
) AS s
CROSS JOIN LATERAL (
    SELECT least(
        e.created + CASE WHEN s.source = 'backfill'
                         THEN make_interval(secs => e.u_source * 4320000)
                         ELSE make_interval(secs => 0.3 + e.u_delay * 2) END,
        %(now)s
    ) AS received_at
) AS r
"""

TRAIL = """
INSERT INTO ops.event_trail (
    event_id, at, stage, source, topic, "partition", "offset", deliveries, detail
)
SELECT event_id, processed_at, CASE status WHEN 'processed' THEN 'applied' ELSE status END,
       source, topic, "partition", "offset", 1,
       CASE WHEN status = 'dead_lettered'
            THEN 'HandlerError: amount_due is not an integer (in ' || family
                 || ' handler, after 3 attempts)' END
FROM ops.event_log WHERE created >= %(start)s AND created < %(end)s
UNION ALL
SELECT event_id, processed_at + make_interval(secs => 5 + (hashtext(event_id) & 1023)),
       'duplicate', source, topic, "partition", "offset" + 7, 2, NULL
FROM ops.event_log WHERE created >= %(start)s AND created < %(end)s AND deliveries > 1
UNION ALL
SELECT event_id, received_at + interval '0.2 seconds', 'dead_lettered', 'webhook', topic,
       "partition", "offset", 1,
       'HandlerError: amount_due is not an integer (in ' || family || ' handler, after 3 '
       || 'attempts)'
FROM ops.event_log WHERE created >= %(start)s AND created < %(end)s AND source = 'dlq_retry'
UNION ALL
SELECT event_id, processed_at - interval '1 second', 'retried', 'dlq_retry', %(dlq)s, 0,
       "offset", 1, NULL
FROM ops.event_log WHERE created >= %(start)s AND created < %(end)s AND source = 'dlq_retry'
"""


def stats_query() -> str:
    """Per minute processed, family, type and outcome: events, latency and bucket counts."""
    counts = ", ".join(
        f"count(*) FILTER (WHERE b = {n})" for n in range(1, len(BOUNDS_MS) + 1)
    )
    bounds = "ARRAY[" + ", ".join(f"{bound:g}" for bound in BOUNDS_MS) + "]::float8[]"
    return f"""
INSERT INTO ops.event_stats (
    minute, family, type, status, events, lag_ms_total, lag_ms_max, lag_buckets
)
SELECT minute, family, type, status, count(*), sum(lag_ms), max(lag_ms), ARRAY[{counts}]
FROM (
    SELECT date_trunc('minute', processed_at) AS minute, family, type, status, lag_ms,
           width_bucket(lag_ms, {bounds}) AS b
    FROM (
        SELECT processed_at, family, type, status,
               greatest(0, extract(epoch FROM processed_at - received_at) * 1000) AS lag_ms
        FROM ops.event_log
        WHERE processed_at >= %(since)s
    ) AS l
) AS m
GROUP BY minute, family, type, status
"""


DEAD_LETTERS = f"""
INSERT INTO ops.dead_letters (
    event_id, type, family, handler, error_type, error_message, attempts, first_failed_at,
    last_failed_at, status, note, source_topic, source_partition, source_offset, payload,
    updated_at, endpoint, received_at
)
SELECT l.event_id, l.type, l.family, t.handler, x.error_type, x.error_message, 3,
       l.received_at + interval '0.2 seconds', l.received_at + interval '2.5 seconds',
       CASE WHEN l.source <> 'dlq_retry' THEN 'open'
            WHEN hashtext(l.event_id) %% 3 = 0 THEN 'resolved' ELSE 'retried' END,
       CASE WHEN l.source = 'dlq_retry' AND hashtext(l.event_id) %% 3 = 0
            THEN 'fixed upstream, applied by hand' END,
       l.topic, l."partition", l."offset",
       jsonb_set(
           p.payload || jsonb_build_object(
               'id', l.event_id, 'created', extract(epoch FROM l.created)::bigint
           ),
           '{{data,object,id}}', to_jsonb(l.object_id)
       ),
       coalesce(l.processed_at, l.received_at), l.endpoint, l.received_at
FROM ops.event_log AS l
JOIN (SELECT DISTINCT type, handler FROM bench.types) AS t ON t.type = l.type
JOIN bench.payloads AS p ON p.type = l.type
CROSS JOIN LATERAL (
    SELECT * FROM (VALUES {", ".join(f"({n}, '{a}', $${b}$$)" for n, (a, b) in enumerate(ERRORS))})
        AS v(n, error_type, error_message)
    WHERE v.n = (hashtext(l.event_id) & 2147483647) %% {len(ERRORS)}
) AS x
WHERE l.status = 'dead_lettered' OR l.source = 'dlq_retry'
ORDER BY l.received_at
"""

BATCH_JOBS = """
INSERT INTO ops.batch_jobs (
    kind, params, total, processed, failed, status, error, started_at, updated_at,
    finished_at, position
)
SELECT j.kind,
       jsonb_build_object('family', (ARRAY['invoices', 'payments', 'customers'])[1 + n %% 3],
                          'since', %(now)s - make_interval(days => n %% 30)),
       total, CASE WHEN j.status = 'running' THEN total / 3 ELSE total END,
       CASE WHEN j.status = 'failed' THEN 1 + n %% 7 ELSE 0 END, j.status,
       CASE WHEN j.status = 'failed' THEN 'DependencyUnavailable: Kafka did not answer' END,
       started, CASE WHEN j.status = 'running' THEN %(now)s
                     ELSE started + make_interval(secs => 30 + n %% 900) END,
       CASE WHEN j.status <> 'running' THEN started + make_interval(secs => 30 + n %% 900) END,
       jsonb_build_object('offsets', jsonb_build_object('0', total / 6, '1', total / 6))
FROM generate_series(1, 300) AS n
CROSS JOIN LATERAL (
    SELECT (ARRAY['replay', 'rebuild', 'dlq_retry', 'backfill', 'reconcile',
                  'dlq_retry', 'reconcile', 'reconcile'])[1 + n %% 8] AS kind,
           CASE WHEN n = 300 THEN 'running' WHEN n %% 13 = 0 THEN 'failed'
                WHEN n %% 19 = 0 THEN 'cancelled' ELSE 'succeeded' END AS status,
           %(now)s - make_interval(hours => (300 - n) * 14, mins => n %% 60) AS started,
           (1000 + (hashint4(n)::bigint & 65535) * 8)::bigint AS total
) AS j
ORDER BY n
"""

ENDPOINTS = """
INSERT INTO ops.endpoint_activity (endpoint, family, last_received_at)
SELECT endpoint, family, max(received_at) FROM ops.event_log
WHERE created >= %(since)s AND endpoint IS NOT NULL
GROUP BY endpoint, family
"""

POSITIONS = """
INSERT INTO ops.projection_offsets (projection, topic, "partition", "offset", updated_at)
SELECT family, topic, "partition", max("offset"), max(processed_at) FROM ops.event_log
WHERE created >= %(since)s AND family = ANY(%(families)s)
GROUP BY family, topic, "partition"
"""

SHIFTED = {
    # Moving every minute forward in place could meet a minute not yet moved: copy, then swap.
    "ops.event_stats": (
        "CREATE TEMPORARY TABLE moved ON COMMIT DROP AS "
        "SELECT minute + %(shift)s AS minute, family, type, status, events, lag_ms_total, "
        "lag_ms_max, lag_buckets FROM ops.event_stats",
        "DELETE FROM ops.event_stats",
        "INSERT INTO ops.event_stats SELECT * FROM moved",
    ),
    "ops.dead_letters": (
        "UPDATE ops.dead_letters SET first_failed_at = first_failed_at + %(shift)s, "
        "last_failed_at = last_failed_at + %(shift)s, updated_at = updated_at + %(shift)s",
    ),
    "ops.endpoint_activity": (
        "UPDATE ops.endpoint_activity SET last_received_at = last_received_at + %(shift)s",
    ),
    "ops.projection_offsets": (
        "UPDATE ops.projection_offsets SET updated_at = updated_at + %(shift)s",
    ),
    "ops.batch_jobs": (
        "UPDATE ops.batch_jobs SET updated_at = updated_at + %(shift)s WHERE status = 'running'",
    ),
}


def refresh(url: str) -> tuple[int, timedelta]:
    """Move the time-windowed rows of a database filled before up to now: (events, shift)."""
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            row = conn.execute(
                "SELECT date_trunc('minute', now()) - max(minute), "
                "(SELECT count(*) FROM ops.event_log) FROM ops.event_stats"
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            raise SystemExit(f"--keep: {url} holds no filled bench database") from None
        if row is None or row[0] is None or not row[1]:
            raise SystemExit(f"--keep: {url} holds no filled bench database")
        shift, events = row[0], int(row[1])
        if shift > timedelta(0):
            with conn.transaction():
                for statements in SHIFTED.values():
                    for statement in statements:
                        conn.execute(statement, {"shift": shift})
            # Rewritten whole, the per-minute table would otherwise hold every row twice.
            conn.execute("VACUUM (FULL, ANALYZE) ops.event_stats")
            conn.execute("VACUUM (ANALYZE) " + ", ".join(t for t in SHIFTED if "stats" not in t))
    return events, shift


# Measuring.

@dataclass
class Endpoint:
    """One kind of request: its name and how to build each request's path."""

    name: str
    path: Callable[[random.Random], str]
    times_ms: list[list[float]] = field(default_factory=list)
    """Each repeat's latencies, milliseconds."""
    sizes: list[int] = field(default_factory=list)
    cpu_seconds: float = 0.0
    """The monitor's CPU between sending each request and reading its answer, summed."""
    failures: dict[int, int] = field(default_factory=dict)
    """Answers other than 200, by status."""

    def all_ms(self) -> list[float]:
        return [ms for repeat in self.times_ms for ms in repeat]

    def send(self, client: httpx.Client, rng: random.Random, pid: int) -> None:
        path = self.path(rng)
        cpu = process_cpu(pid)
        sent = time.perf_counter()
        try:
            answer = client.get(path)
            status, text = answer.status_code, answer.text
            if status == 200:
                self.sizes.append(len(answer.content))
        except httpx.TransportError as exc:
            # The server closes a connection after a 500; the next request opens another.
            status, text = 0, repr(exc)
        self.times_ms[-1].append((time.perf_counter() - sent) * 1000)
        self.cpu_seconds += process_cpu(pid) - cpu
        if status != 200:
            self.failures[status] = self.failures.get(status, 0) + 1
            if self.failures[status] == 1:
                console.print(f"\nGET {path}: {status or 'no answer'} {text[:200]}")


@dataclass
class Repeat:
    seconds: float
    busy_cores: float
    monitor_cpu: float
    postgres_cpu: float
    requests: int
    load: tuple[float, float, float]


@dataclass
class Samples:
    """What the requests ask for: existing events, busy objects, pages of dead letters."""

    event_ids: list[str]
    busy_objects: list[str]
    typical_objects: list[str]
    object_cursors: list[tuple[str, str]]
    dead_letter_cursors: list[str]
    dead_letter_type: str
    events_per_busy_object: list[int]


def pick_samples(url: str, client: httpx.Client, rng: random.Random, objects: int) -> Samples:
    with psycopg.connect(url) as conn:
        event_ids = [str(r[0]) for r in conn.execute(
            "SELECT event_id FROM ops.event_log TABLESAMPLE SYSTEM (0.2) REPEATABLE (7)"
        )]
        busy = [str(r[0]) for r in conn.execute(
            "SELECT object_id FROM bench.objects WHERE k < %s ORDER BY k", (min(1000, objects),)
        )]
        typical = [str(r[0]) for r in conn.execute(
            "SELECT object_id FROM bench.objects TABLESAMPLE SYSTEM (5) REPEATABLE (7) LIMIT 2000"
        )]
        counts = [int(r[0]) for r in conn.execute(
            "SELECT count(*) FROM ops.event_log WHERE object_id = ANY(%s) GROUP BY object_id",
            (busy,),
        )]
        row = conn.execute(
            "SELECT type FROM ops.dead_letters WHERE status = 'open' GROUP BY type "
            "ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
    rng.shuffle(event_ids)
    cursors: list[str] = []
    cursor: str | None = None
    while True:
        page = get(client, "/api/dead-letters" + (f"?cursor={cursor}" if cursor else ""))
        cursor = page["next_cursor"]
        if cursor is None:
            break
        cursors.append(cursor)
    object_cursors = []
    for object_id in busy[:200]:
        page = get(client, f"/api/audit-trail?object_id={object_id}")
        if page["next_cursor"]:
            object_cursors.append((object_id, str(page["next_cursor"])))
    return Samples(
        event_ids[:5000], busy, typical, object_cursors, cursors[len(cursors) // 10:] or cursors,
        str(row[0]) if row else "invoice.paid", counts,
    )


def get(client: httpx.Client, path: str) -> Any:
    answer = client.get(path)
    if answer.status_code != 200:
        raise SystemExit(f"GET {path}: {answer.status_code} {answer.text[:300]}")
    return orjson.loads(answer.content)


def endpoints(samples: Samples, now: datetime) -> list[Endpoint]:
    since = (now - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def fixed(path: str) -> Callable[[random.Random], str]:
        return lambda rng: path

    def query(path: str, **params: str) -> str:
        return f"{path}?{urlencode(params)}"

    kinds = [
        Endpoint("overview", fixed("/api/overview")),
        Endpoint("performance 1h", fixed("/api/performance?window=1h")),
        Endpoint("performance 24h", fixed("/api/performance?window=24h")),
        Endpoint("performance 7d", fixed("/api/performance?window=7d")),
        Endpoint("dead-letters, first page", fixed("/api/dead-letters")),
        Endpoint("dead-letters, status+family+since", fixed(query(
            "/api/dead-letters", status="open", family="invoices", since=since
        ))),
        Endpoint("dead-letters, include=payload", fixed("/api/dead-letters?include=payload")),
        Endpoint("audit-trail, event_id", lambda rng: query(
            "/api/audit-trail", event_id=rng.choice(samples.event_ids)
        )),
        Endpoint("audit-trail, busy object", lambda rng: query(
            "/api/audit-trail", object_id=rng.choice(samples.busy_objects)
        )),
        Endpoint("audit-trail, any object", lambda rng: query(
            "/api/audit-trail", object_id=rng.choice(samples.typical_objects)
        )),
        Endpoint("batch-jobs", fixed("/api/batch-jobs")),
        Endpoint("alerts", fixed("/api/alerts")),
    ]
    if samples.dead_letter_cursors:
        kinds[5:5] = [
            Endpoint("dead-letters, later page (cursor)", lambda rng: query(
                "/api/dead-letters", cursor=rng.choice(samples.dead_letter_cursors)
            )),
            Endpoint("dead-letters, type, later page", lambda rng: query(
                "/api/dead-letters", type=samples.dead_letter_type,
                cursor=rng.choice(samples.dead_letter_cursors),
            )),
        ]
    if samples.object_cursors:
        kinds.insert(-3, Endpoint("audit-trail, busy object, page 2", lambda rng: query(
            "/api/audit-trail", **dict(zip(("object_id", "cursor"),
                                           rng.choice(samples.object_cursors), strict=True))
        )))
    return kinds


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_serving(client: httpx.Client, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the monitor exited; see its log in {LOG_DIR}")
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the monitor did not answer /healthz within 60 s")


def kafka_health(client: httpx.Client, wait: float = 20.0) -> dict[str, Any]:
    """The overview's Kafka health once the sampler tried at least once."""
    deadline = time.monotonic() + wait
    while True:
        health: dict[str, Any] = get(client, "/api/overview")["health"]["kafka"]
        if health["error"] != "not sampled yet" or time.monotonic() > deadline:
            return health
        time.sleep(0.5)


def measure(
    url: str, objects: int, requests: int, repeats: int, warmup: int, budget: float, seed: int,
    topics: bool,
) -> tuple[list[Endpoint], list[Repeat], dict[str, Any]]:
    port = free_port()
    settings = Settings.from_env()
    if topics:
        asyncio.run(ensure_topics(
            settings.kafka_bootstrap_servers, worker_topics(PREFIX), PARTITIONS
        ))
    env = {
        **os.environ, "DATABASE_URL": url, "STRIPE_STREAMS_MONITOR_TOKEN": TOKEN,
        "STRIPE_STREAMS_TOPIC_PREFIX": PREFIX,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
    }
    process = start(["monitor", "--port", str(port)], env, "monitor.log")
    rng = random.Random(seed)
    info: dict[str, Any] = {"topics": topics}
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30.0,
        ) as client:
            wait_until_serving(client, process)
            info["kafka"] = kafka_health(client)
            samples = pick_samples(url, client, rng, objects)
            info["samples"] = samples
            kinds = endpoints(samples, datetime.now(UTC))
            console.print(f"warm-up: {warmup} requests per endpoint ...")
            for kind in kinds:
                kind.times_ms.append([])
                for _ in range(warmup):
                    kind.send(client, rng, process.pid)
                kind.times_ms, kind.cpu_seconds, kind.failures = [], 0.0, {}
            idle_before = process_cpu(process.pid)
            time.sleep(IDLE_SECONDS)
            info["idle_cpu_per_s"] = (process_cpu(process.pid) - idle_before) / IDLE_SECONDS
            runs: list[Repeat] = []
            for repeat in range(repeats):
                console.print(f"repeat {repeat + 1}: {requests} rounds of {len(kinds)} "
                              "requests ...", end="")
                for kind in kinds:
                    kind.times_ms.append([])
                ticks, cpu, began = busy_ticks(), process_cpu(process.pid), time.perf_counter()
                with PostgresCpu(url) as postgres:
                    for _ in range(requests):
                        # An endpoint past its budget sits out the rest of the repeat.
                        within = [k for k in kinds if sum(k.times_ms[-1]) < budget * 1000]
                        for kind in rng.sample(within, len(within)):
                            kind.send(client, rng, process.pid)
                runs.append(Repeat(
                    time.perf_counter() - began, busy_cores_since(ticks),
                    process_cpu(process.pid) - cpu, postgres.seconds,
                    sum(len(k.times_ms[-1]) for k in kinds), os.getloadavg(),
                ))
                console.print(f" {runs[-1].seconds:.1f} s, {runs[-1].busy_cores:.2f} busy cores")
            info["kafka after"] = kafka_health(client, 0)
    finally:
        stop(process)
    return kinds, runs, info


# Report.

def report(
    command: str, machine: dict[str, str], steps: list[Step], kinds: list[Endpoint],
    runs: list[Repeat], info: dict[str, Any],
) -> None:
    console.print(f"\n[bold]{command}[/bold]")
    table = Table(title="database", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in machine.items():
        table.add_row(name, value)
    console.print(table)
    if steps:
        table = Table(title="fill, SQL run in the server")
        for name in ("step", "rows", "seconds"):
            table.add_column(name, justify="right")
        for step in steps:
            table.add_row(step.name, f"{step.rows:,}", f"{step.seconds:.1f}")
        table.add_row("all", "", f"{sum(s.seconds for s in steps):.1f}")
        console.print(table)
    table = Table(title=f"client-side latency, ms: {len(runs)} repeat(s) interleaved, "
                        "one keep-alive connection")
    for name in ("endpoint", "requests", "p50", "p95", "p99", "max", "p99 each repeat",
                 "monitor CPU ms/req", "bytes", "not 200", f"p99 < {TARGET_MS:.0f} ms"):
        table.add_column(name, justify="right")
    for kind in kinds:
        times = kind.all_ms()
        p99 = percentile(times, 0.99)
        table.add_row(
            kind.name, f"{len(times):,}", f"{percentile(times, 0.5):.1f}",
            f"{percentile(times, 0.95):.1f}", f"{p99:.1f}", f"{max(times):.1f}",
            " / ".join(f"{percentile(r, 0.99):.0f}" for r in kind.times_ms if r),
            f"{kind.cpu_seconds * 1000 / len(times):.2f}",
            f"{statistics.median(kind.sizes):,.0f}" if kind.sizes else "-",
            ", ".join(f"{n} x {status or 'reset'}" for status, n in kind.failures.items())
            or "0",
            "yes" if p99 < TARGET_MS and not kind.failures else "[bold red]NO[/bold red]",
        )
    console.print(table)
    table = Table(title="each repeat")
    for name in ("repeat", "seconds", "requests", "monitor CPU ms/request",
                 "PostgreSQL CPU ms/request", "busy cores", "load average after"):
        table.add_column(name, justify="right")
    for n, run in enumerate(runs):
        table.add_row(
            str(n + 1), f"{run.seconds:.1f}", f"{run.requests:,}",
            f"{run.monitor_cpu * 1000 / run.requests:.2f}",
            f"{run.postgres_cpu * 1000 / run.requests:.2f}", f"{run.busy_cores:.2f}",
            " / ".join(f"{load:.1f}" for load in run.load),
        )
    console.print(table)
    kafka = info["kafka after"]
    console.print(
        f"monitor CPU when idle (the Kafka sample every 5 s): "
        f"{info['idle_cpu_per_s'] * 1000:.1f} ms/s; "
        f"Kafka health in the overview: ok={kafka['ok']}, error={kafka['error']!r} "
        f"(topic prefix {PREFIX!r}, its topics "
        f"{'created, empty' if info['topics'] else 'not created'})"
    )
    samples: Samples = info["samples"]
    counts = samples.events_per_busy_object
    if counts:
        console.print(
            f"busy objects: {len(counts)}, events each {min(counts)}-{max(counts)} "
            f"(median {statistics.median(counts):.0f}); dead-letter pages after the 10th: "
            f"{len(samples.dead_letter_cursors)}; type filter {samples.dead_letter_type!r}"
        )


def describe(url: str) -> dict[str, str]:
    """Rows and size of each filled table, rows per month of the event log, stats by outcome."""
    tables = ("event_log", "event_trail", "event_stats", "dead_letters", "batch_jobs",
              "endpoint_activity", "projection_offsets")
    described = {}
    with psycopg.connect(url) as conn:
        for name in tables:
            table = sql.Identifier("ops", name)
            [(rows, size)] = conn.execute(
                sql.SQL(
                    "SELECT (SELECT count(*) FROM {table}), coalesce(("
                    "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
                    "WHERE inhparent = {name}::regclass), pg_total_relation_size({name}))"
                ).format(table=table, name=sql.Literal(f"ops.{name}"))
            ).fetchall()
            described[f"ops.{name}"] = f"{int(rows):,} rows, {int(size) / 2**20:,.0f} MiB"
        months = conn.execute(
            "SELECT c.relname, c.reltuples::bigint FROM pg_inherits AS i "
            "JOIN pg_class AS c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'ops.event_log'::regclass ORDER BY c.relname"
        ).fetchall()
        outcomes = conn.execute(
            "SELECT status, sum(events)::bigint FROM ops.event_stats GROUP BY status ORDER BY 1"
        ).fetchall()
        [(objects,)] = conn.execute(
            "SELECT count(DISTINCT object_id) FROM ops.event_log"
        ).fetchall()
    described["distinct object ids"] = f"{int(objects):,}"
    described["event log rows per partition (estimated)"] = ", ".join(
        f"{str(name).removeprefix('event_log_')} {int(n):,}" for name, n in months if n > 0
    )
    described["event_stats: events by outcome"] = ", ".join(
        f"{status} {int(n):,}" for status, n in outcomes
    )
    return described


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000, help="rows of ops.event_log")
    parser.add_argument("--objects", type=int, default=200_000, help="distinct object ids")
    parser.add_argument("--months", type=int, default=6, help="months the events span")
    parser.add_argument("--stats-days", type=int, default=7,
                        help="days of ops.event_stats before now (0: every event's)")
    parser.add_argument("--requests", type=int, default=200,
                        help="requests per endpoint in each repeat")
    parser.add_argument("--repeats", type=int, default=3, help="repeats, one after the other")
    parser.add_argument("--warmup", type=int, default=20,
                        help="requests per endpoint before measuring (not counted)")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds of requests per endpoint and repeat; a slower endpoint "
                             "sits out the repeat's later rounds")
    parser.add_argument("--database", default=DATABASE, help="the bench's database")
    parser.add_argument("--no-topics", action="store_true",
                        help="leave the prefix's topics uncreated (the Kafka sample then finds "
                             "none)")
    parser.add_argument("--keep", action="store_true",
                        help="reuse the database filled by an earlier run")
    parser.add_argument("--seed", type=int, default=1, help="seed of the requests' choices")
    args = parser.parse_args()
    command = "bench/monitor.py " + " ".join(sys.argv[1:])
    base = Settings.from_env().database_url
    ticks = busy_ticks()
    time.sleep(3)
    machine = {
        "machine before the run": f"{busy_cores_since(ticks):.2f} busy cores over 3 s, "
                                  f"{os.cpu_count()} CPUs, load average "
                                  f"{' / '.join(f'{n:.1f}' for n in os.getloadavg())}",
    }
    steps: list[Step] = []
    url = database_url(base, args.database)
    if args.keep:
        events, shift = refresh(url)
        machine["reused"] = (f"{args.database}: {events:,} events; per-minute rows moved "
                             f"forward by {shift}")
    else:
        console.print(f"filling {args.database}: {args.events:,} events over {args.months} "
                      f"months, {args.objects:,} objects ...")
        began = time.perf_counter()
        recreate(base, args.database)
        migrate(url)
        steps.append(Step("create and migrate", 0, time.perf_counter() - began))
        steps.extend(fill(url, args.events, args.objects, args.months, args.stats_days))
        _, shift = refresh(url)
        machine["per-minute rows moved forward by"] = f"{shift} (the time the fill took)"
    machine.update(describe(url))
    try:
        kinds, runs, info = measure(
            url, args.objects, args.requests, args.repeats, args.warmup, args.budget, args.seed,
            not args.no_topics,
        )
    finally:
        asyncio.run(delete_topics(Settings.from_env().kafka_bootstrap_servers, f"{PREFIX}."))
    report(command, machine, steps, kinds, runs, info)
    console.print(f"database {args.database} left in place: rerun with --keep to measure again")


if __name__ == "__main__":
    main()
