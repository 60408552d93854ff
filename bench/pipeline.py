"""Throughput and latency of the processing pipeline, against a minimal consumer, same run.

    .venv/bin/python bench/pipeline.py [--events 60000] [--workers 1,2] [--rates 3000,500]
                                       [--duration 20] [--latency-workers 1]
                                       [--latency-repeats 3] [--large-events 2000]
                                       [--large-lines 955] [--large-updates 8]
                                       [--only workers,limit,floor,latency,large]

Uses the Kafka broker of KAFKA_BOOTSTRAP_SERVERS and the PostgreSQL server of DATABASE_URL,
with fresh topics and fresh databases (dropped afterwards). Measures:

* worker: ``--events`` events of customer lifecycles (2-4 KB each) are appended to the log
  first; then ``stripe-streams worker`` processes (one consumer group) start and the rate at
  which ``ops.event_log`` fills (events committed to PostgreSQL per second, between 10% and
  90% of the total) is measured, with the workers' peak resident memory;
* limit: the same log, read by a minimal hand-written aiokafka consumer that decodes, runs the
  same handlers and upserts the same mirror tables and event log with COPY, one transaction per
  batch: the practical limit of this machine, and the worker's ratio to it;
* faust floor: an empty Faust agent that only takes and acknowledges the same log, the cost
  of one Faust hop (the worker makes two: router, then family agent);
* latency: the gateway and ``--latency-workers`` workers run, and signed webhooks are offered
  at each of ``--rates`` per second for ``--duration`` seconds (open loop); received-to-projected
  is each event's ``processed_at - received_at`` in ``ops.event_log`` (gateway receipt to the
  end of its batch's writes). Each rate runs ``--latency-repeats`` times on fresh topics; the
  run with the median p99 is reported, with every run's p99;
* large backlog: ``--large-events`` ``invoice.updated`` events of invoices with
  ``--large-lines`` line items (955 make 877 KB a body, the order of Stripe's largest
  objects), ``--large-updates`` per invoice, are appended to the log of a fresh prefix while
  no worker runs; then ONE worker starts on that backlog: seconds until all are in
  ``ops.event_log``, events/s, MB/s, and the worker's peak resident memory (``VmHWM`` at the
  end and ``VmRSS`` sampled every 0.1 s).

``--only`` runs a subset (``--only large`` repeats the large backlog alone); a count of 0 or an
empty list (``--events 0``, ``--workers ''``, ``--rates ''``, ``--large-events 0``) skips a
measurement too.

The machine is shared: ``busy cores`` says how loaded it was during each measurement, and the
latency runs add the CPU each process spent per event applied (gateway, workers, load
generator, and the broker and PostgreSQL when they run on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from psycopg import sql
from psycopg.types.json import Jsonb

from ingest.signature import signature_header
from projections.migrations import migrate
from streams.devtools.samples import EventFactory
from streams.handlers.registry import load_handlers
from streams.log.codec import decode_event, encode_event
from streams.log.envelope import EventEnvelope, EventSource
from streams.log.topics import MAX_MESSAGE_BYTES, delete_topics, ensure_topics, worker_topics
from streams.settings import Secret, Settings

SECRET = Secret("whsec_bench_pipeline")
LOG_DIR = Path("/tmp") / "stripe-streams-bench"
MEASUREMENTS = ("workers", "limit", "floor", "latency", "large")
OPEN_INVOICES = 32
"""Invoices a large backlog updates at once: a backlog mixes many invoices' updates, and the
bench holds each open invoice (about 2 MB as Python objects) in memory."""
LATE_SHARE = 0.1
"""Share of a large backlog's events delivered after the next event of their invoice."""


@dataclass
class Fill:
    """How fast a table filled: events per second between 10% and 90% of the total.

    ``applied`` and ``elapsed`` cover the whole run: every event, from the workers' start
    until the last one is in the table; ``peak_hwm_mib`` is the largest ``VmHWM`` of one worker
    read just before they stop, ``peak_rss_mib`` the largest ``VmRSS`` sampled meanwhile;
    ``cpu_seconds`` what the workers, the broker(s) and PostgreSQL spent over the whole run, and
    ``worker_cpu_us`` the workers' CPU per event between 10% and 90%, which a busy neighbour
    changes far less than the rate.
    """

    events: int
    seconds: float
    peak_rss_mib: float = 0.0
    busy_cores: float = 0.0
    applied: int = 0
    elapsed: float = 0.0
    peak_hwm_mib: float = 0.0
    elapsed_busy_cores: float = 0.0
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    worker_cpu_us: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def elapsed_rate(self) -> float:
        return self.applied / self.elapsed if self.elapsed else 0.0


@dataclass
class Backlog:
    """The large backlog's run: its fill, what was appended, and the events' outcomes."""

    fill: Fill
    appended_bytes: int
    invoices: int
    outcomes: dict[str, int] = field(default_factory=dict)


def lifecycle_events(
    count: int, seed: int, periods: int = 2, concurrent: int = 1
) -> list[dict[str, Any]]:
    return list(itertools.islice(lifecycle_stream(seed, periods, concurrent), count))


def lifecycle_stream(
    seed: int, periods: int = 2, concurrent: int = 1
) -> Iterator[dict[str, Any]]:
    """Endless customer lifecycles of ``periods`` billing periods each.

    With ``concurrent`` above 1 that many customers live at once, as in a real account: each
    next event comes from one of them picked at random, so the events of one object lie far
    apart in the log (a new customer takes the place of one whose life ended).
    """
    factory = EventFactory(seed=seed)
    if concurrent <= 1:
        while True:
            yield from factory.customer_lifecycle(periods=periods)
    pick = random.Random(seed)
    lives = [factory.customer_lifecycle(periods=periods) for _ in range(concurrent)]
    while True:
        n = pick.randrange(concurrent)
        event = next(lives[n], None)
        if event is None:
            lives[n] = factory.customer_lifecycle(periods=periods)
            continue
        yield event


def envelope_of(event: dict[str, Any]) -> EventEnvelope:
    return EventEnvelope.from_event_dict(
        event, payload=json.dumps(event), endpoint="default", source=EventSource.WEBHOOK
    )


def envelopes(events: Iterable[dict[str, Any]]) -> Iterator[EventEnvelope]:
    return map(envelope_of, events)


@dataclass
class OpenInvoice:
    invoice: dict[str, Any]
    updates_left: int
    held: EventEnvelope | None = None


def large_backlog(count: int, lines: int, updates: int, seed: int) -> Iterator[EventEnvelope]:
    """``count`` ``invoice.updated`` events of invoices with ``lines`` line items.

    Each invoice gets ``updates`` events (usage raising the quantities of a few lines, and the
    totals); the next event comes from a random one of ``OPEN_INVOICES`` open invoices, and
    ``LATE_SHARE`` of the events are delivered after their invoice's next one, as Stripe does
    not guarantee order, so that the worker sees inserts, upserts and stale events.
    """
    factory = EventFactory(seed=seed)
    price = factory.default_price()
    late = random.Random(seed)
    invoices: list[OpenInvoice] = []
    made = opened = 0
    while made < count:
        while len(invoices) < OPEN_INVOICES and opened * updates < count:
            customer = factory.customer()
            subscription = factory.subscription(customer, price, status="active")
            invoices.append(OpenInvoice(factory.invoice(
                customer, subscription, billing_reason="subscription_cycle", lines=lines,
            ), updates))
            opened += 1
        current = late.choice(invoices)
        event = envelope_of(invoice_updated(factory, current.invoice))
        made += 1
        current.updates_left -= 1
        if current.held is None and current.updates_left and late.random() < LATE_SHARE:
            current.held = event
            continue
        yield event
        if current.held is not None:
            yield current.held
            current.held = None
        if not current.updates_left:
            invoices.remove(current)
    yield from (open_.held for open_ in invoices if open_.held is not None)


def invoice_updated(factory: EventFactory, invoice: dict[str, Any]) -> dict[str, Any]:
    """Raise the quantities of a few lines and the totals; return the ``invoice.updated``."""
    totals = ("amount_due", "amount_remaining", "subtotal", "subtotal_excluding_tax", "total",
              "total_excluding_tax")
    previous = {name: invoice[name] for name in totals}
    lines = invoice["lines"]["data"]
    for line in factory.random.sample(lines, min(3, len(lines))):
        unit = line["amount"] // line["quantity"]
        line["quantity"] += factory.random.randint(1, 5)
        line["amount"] = line["subtotal"] = unit * line["quantity"]
    invoice.update(dict.fromkeys(totals, sum(line["amount"] for line in lines)))
    head = {name: value for name, value in invoice.items() if name != "lines"}
    event = factory.event("invoice.updated", head, previous_attributes=previous)
    # event() copies the object it carries, which for a thousand lines would be most of the
    # time of building the backlog; the event is serialised before the lines change again.
    event["data"]["object"]["lines"] = invoice["lines"]
    return event


async def append(settings: Settings, log: Iterable[EventEnvelope]) -> int:
    """Append the envelopes to the log, as the gateway writes them; return the bytes written."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all",
        enable_idempotence=True, linger_ms=10, max_batch_size=262144,
        # A 1 MiB body, the largest the gateway accepts, exceeds aiokafka's default 1 MiB
        # request once in its envelope.
        max_request_size=MAX_MESSAGE_BYTES,
    )
    await producer.start()
    written = 0
    try:
        pending = []
        for envelope in log:
            message = encode_event(envelope)
            written += len(message)
            pending.append(await producer.send(settings.topic(), message, key=envelope.key))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return written


@contextmanager
def fresh_database(settings: Settings) -> Iterator[str]:
    """A new, migrated database on the server of DATABASE_URL; dropped afterwards."""
    parts = urlsplit(settings.database_url)
    admin = urlunsplit(parts._replace(path="/postgres"))
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(parts._replace(path=f"/{name}"))
    try:
        migrate(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def logged(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM ops.event_log").fetchone()
    return int(row[0]) if row else 0


def outcomes(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT status, count(*) FROM ops.event_log GROUP BY status")
        return {str(status): int(count) for status, count in rows}


def rss_mib(pid: int, entry: str = "VmRSS") -> float:
    """A memory figure of /proc/<pid>/status: VmRSS (resident now) or VmHWM (its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{entry}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def busy_ticks() -> tuple[int, int]:
    ticks = [int(n) for n in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def busy_cores_since(before: tuple[int, int]) -> float:
    busy, total = busy_ticks()
    return (os.cpu_count() or 1) * (busy - before[0]) / max(1, total - before[1])


def cpu_ticks(roles: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """CPU ticks (user + system) spent so far by each role's processes.

    The broker and PostgreSQL are found by their command lines, so services given by the
    environment on this machine are counted too; on another host they count as zero.
    """
    ticks = dict.fromkeys([*roles, "broker", "postgres"], 0)
    owner = {pid: role for role, pids in roles.items() for pid in pids}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        role = owner.get(int(entry.name))
        if role is None and b"kafka.Kafka" in command:
            role = "broker"
        elif role is None and command[0].startswith(b"postgres"):
            role = "postgres"
        if role is not None:
            ticks[role] += int(fields[11]) + int(fields[12])
    return ticks


def start(
    command: Sequence[str], env: dict[str, str], log_name: str,
    launcher: Sequence[str] = ("-m", "streams.cli"),
) -> subprocess.Popen[bytes]:
    """Start ``python <launcher> <command>`` (``stripe-streams <command>`` by default)."""
    LOG_DIR.mkdir(exist_ok=True)
    with (LOG_DIR / log_name).open("wb") as log:
        return subprocess.Popen(
            [sys.executable, *launcher, *command], env=env, stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def environment(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": settings.database_url,
        "STRIPE_STREAMS_TOPIC_PREFIX": settings.topic_prefix,
        "STRIPE_STREAMS_PARTITIONS": str(settings.topic_partitions),
        "STRIPE_WEBHOOK_SECRETS": SECRET.reveal(),
        "STRIPE_STREAMS_CONSUMER_GROUP": settings.group_id,
    }


def watch_fill(
    url: str, total: int, workers: Sequence[subprocess.Popen[bytes]], timeout: float = 600
) -> Fill:
    """Poll the event log until it holds ``total`` events; time 10% to 90% of them, and all."""
    marks: dict[float, float] = {}
    peak = 0.0
    began = time.perf_counter()
    cpu_began = cpu_before = busy_ticks()
    roles = {"worker": [worker.pid for worker in workers]}
    ticks_began = ticks_before = cpu_ticks(roles)
    ticks_after = ticks_began
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(worker.poll() is not None for worker in workers):
            raise SystemExit(f"a worker exited after {logged(url)} of {total} events; "
                             f"see its log in {LOG_DIR}")
        count = logged(url)
        now = time.perf_counter()
        for share in (0.1, 0.9):
            if count >= share * total and share not in marks:
                marks[share] = now
                if share == 0.1:
                    cpu_before, ticks_before = busy_ticks(), cpu_ticks(roles)
                else:
                    ticks_after = cpu_ticks(roles)
        peak = max([peak, *(rss_mib(worker.pid) for worker in workers)])
        if count >= total:
            break
        time.sleep(0.1)
    else:
        raise SystemExit(f"only {logged(url)} of {total} events applied in {timeout:.0f}s")
    busy = busy_cores_since(cpu_before)
    ticks = cpu_ticks(roles)
    hertz = os.sysconf("SC_CLK_TCK")
    return Fill(
        int(0.8 * total), marks[0.9] - marks[0.1], peak, busy, applied=total, elapsed=now - began,
        peak_hwm_mib=max(rss_mib(worker.pid, "VmHWM") for worker in workers),
        elapsed_busy_cores=busy_cores_since(cpu_began),
        cpu_seconds={role: (ticks[role] - ticks_began[role]) / hertz for role in ticks},
        worker_cpu_us=(ticks_after["worker"] - ticks_before["worker"]) / hertz * 1e6
        / max(1, int(0.8 * total)),
    )


def measure_workers(settings: Settings, total: int, count: int, label: str = "fill") -> Fill:
    """Start ``count`` workers in one consumer group on the pre-loaded log; time the fill."""
    workers = [
        start(["worker", "--web-port", str(free_port())], environment(settings),
              f"worker-{label}-{count}-{n}.log")
        for n in range(count)
    ]
    try:
        return watch_fill(settings.database_url, total, workers)
    finally:
        for worker in workers:
            stop(worker)


FLOOR_APP = """
import os, sys, time
import faust
bootstrap, topic, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
app = faust.App(f"{topic}-floor", broker=f"kafka://{bootstrap}", store="memory://",
                autodiscover=False, topic_disable_leader=True, web_enabled=False,
                consumer_auto_offset_reset="earliest", datadir="/tmp/stripe-streams-worker")
seen, marks = 0, {}

@app.agent(app.topic(topic, key_serializer="raw", value_serializer="raw"))
async def empty(stream):
    global seen
    async for events in stream.noack_take(500, within=0.05):
        for event in events:
            await stream.ack(event)
        seen += len(events)
        for share in (0.1, 0.9):
            if seen >= share * total and share not in marks:
                marks[share] = time.perf_counter()
        if seen >= total:
            print(f"FLOOR {0.8 * total / (marks[0.9] - marks[0.1])}", flush=True)
            os._exit(0)

faust.Worker(app, loglevel="error", quiet=True, redirect_stdouts=False).execute_from_commandline()
"""


def faust_floor(settings: Settings, total: int) -> float:
    """Messages/s an empty Faust agent takes and acknowledges from the pre-loaded log."""
    done = subprocess.run(
        [sys.executable, "-c", FLOOR_APP, settings.kafka_bootstrap_servers, settings.topic(),
         str(total)],
        capture_output=True, text=True, timeout=600, check=True,
    )
    found = re.search(r"FLOOR ([0-9.]+)", done.stdout)
    if found is None:
        raise SystemExit(f"the Faust floor run printed no result: {done.stdout[-500:]!r}")
    return float(found.group(1))


async def practical_limit(settings: Settings, total: int, batch: int) -> Fill:
    """The same log into the same tables with the least code: one consumer, COPY, upserts."""
    registry = load_handlers()
    consumer = AIOKafkaConsumer(
        settings.topic(), bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"{settings.topic_prefix}-limit", auto_offset_reset="earliest",
        enable_auto_commit=False, max_poll_records=batch, fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    conn = await psycopg.AsyncConnection.connect(settings.database_url)
    columns = {name: ["id", "data", "deleted", "livemode", "account", "last_event_id",
                      "last_event_created", "last_event_offset", *table.columns]
               for name, table in registry.tables.items()}
    staged: set[str] = set()
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE s_log (LIKE ops.event_log) ON COMMIT DELETE ROWS"
        )
    await consumer.start()
    done, marks = 0, {}
    cpu_before = busy_ticks()
    try:
        while done < total:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=batch)
            messages = [m for records in fetched.values() for m in records]
            if not messages:
                continue
            newest: dict[tuple[str, str], tuple[Any, ...]] = {}
            log_rows = []
            for message in messages:
                envelope = decode_event(message.value or b"")
                registered = registry.lookup(envelope.type)
                status = "unhandled"
                if registered is not None:
                    status = "processed"
                    for row in registered.handle(json.loads(envelope.payload)).rows:
                        values = (
                            row.id, Jsonb(row.data), row.deleted, envelope.livemode,
                            envelope.account, envelope.id,
                            datetime.fromtimestamp(envelope.created, UTC), message.offset,
                            *(row.columns.get(c) for c in columns[row.table][8:]),
                        )
                        newest[(row.table, row.id)] = values
                log_rows.append((
                    envelope.id, envelope.type, "limit", envelope.object_id, envelope.account,
                    envelope.livemode, datetime.fromtimestamp(envelope.created, UTC),
                    envelope.received_at, datetime.now(UTC), status, 1, 1, envelope.source.value,
                    message.topic, message.partition, message.offset,
                ))
            # Staging tables only for the tables in use: a commit truncates every one.
            for name in {table for table, _ in newest} - staged:
                async with conn.transaction():
                    await conn.execute(sql.SQL(
                        "CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DELETE ROWS"
                    ).format(sql.Identifier(f"s_{name}"), sql.Identifier("stripe", name)))
                staged.add(name)
            async with conn.transaction(), conn.cursor() as cursor:
                for name in {table for table, _ in newest}:
                    names = sql.SQL(", ").join(map(sql.Identifier, columns[name]))
                    async with cursor.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
                        sql.Identifier(f"s_{name}"), names)) as copy:
                        for (table, _), values in newest.items():
                            if table == name:
                                await copy.write_row(values)
                    await cursor.execute(sql.SQL(
                        "INSERT INTO {target} AS t ({names}) SELECT {names} FROM {stage} "
                        "ON CONFLICT (id) DO UPDATE SET {sets} WHERE "
                        "(t.last_event_created, t.last_event_offset) < "
                        "(excluded.last_event_created, excluded.last_event_offset)"
                    ).format(
                        target=sql.Identifier("stripe", name), names=names,
                        stage=sql.Identifier(f"s_{name}"),
                        sets=sql.SQL(", ").join(
                            sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c))
                            for c in columns[name][1:]
                        ),
                    ))
                async with cursor.copy(
                    "COPY s_log (event_id, type, family, object_id, account, livemode, created, "
                    "received_at, processed_at, status, deliveries, attempts, source, topic, "
                    "\"partition\", \"offset\") FROM STDIN"
                ) as copy:
                    for log_row in log_rows:
                        await copy.write_row(log_row)
                await cursor.execute(
                    "INSERT INTO ops.event_log SELECT * FROM s_log ON CONFLICT DO NOTHING"
                )
            await consumer.commit()
            done += len(messages)
            for share in (0.1, 0.9):
                if done >= share * total and share not in marks:
                    marks[share] = time.perf_counter()
                    if share == 0.1:
                        cpu_before = busy_ticks()
    finally:
        await consumer.stop()
        await conn.close()
    return Fill(int(0.8 * total), marks[0.9] - marks[0.1], 0.0, busy_cores_since(cpu_before))


def signed_requests(events: Iterable[dict[str, Any]]) -> list[bytes]:
    return [signed_request(json.dumps(event).encode()) for event in events]


def signed_request(body: bytes) -> bytes:
    """The HTTP request of a webhook of ``body``, signed now."""
    head = (
        "POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\n"
        f"Stripe-Signature: {signature_header(body, SECRET)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def offer(
    port: int, requests: Sequence[bytes], rate: float, connections: int,
    stop: asyncio.Event | None = None,
) -> int:
    """Send the requests at a fixed rate over keep-alive connections; return how many got 200.

    Once ``stop`` is set, no further request is sent.
    """
    start_at = time.perf_counter() + 0.2
    queue = iter(range(len(requests)))
    accepted = 0

    async def connection() -> None:
        nonlocal accepted
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for n in queue:
                delay = start_at + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if stop is not None and stop.is_set():
                    break
                writer.write(requests[n])
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(line[15:]) for line in head.split(b"\r\n")
                     if line[:15].lower() == b"content-length:"), 0,
                )
                await reader.readexactly(length)
                accepted += head[9:12] == b"200"
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return accepted


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("gateway exited; see its log in " + str(LOG_DIR))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
                if probe.recv(100).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("gateway not ready within 60 s")


def wait_for_worker(port: int) -> None:
    """Wait until the worker reports a consumer lag: it holds its partitions."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := probe.recv(65536):
                    answer += chunk
            if b"stripe_streams_consumer_lag{" in answer:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("the worker got no partitions within 90 s")


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure_latency(
    settings: Settings, rate: float, duration: float, workers: int
) -> dict[str, float]:
    events = lifecycle_events(int(rate * duration), seed=7)
    requests = signed_requests(events)
    port = free_port()
    env = environment(settings)
    gateway = start(["gateway", "--host", "127.0.0.1", "--port", str(port)], env, "gateway.log")
    worker_ports = [free_port() for _ in range(workers)]
    running = [
        start(["worker", "--web-port", str(worker_port)], env, f"worker-latency-{n}.log")
        for n, worker_port in enumerate(worker_ports)
    ]
    peak = 0.0
    try:
        wait_for_port(port, gateway)
        for worker_port in worker_ports:
            wait_for_worker(worker_port)
        roles = {"gateway": [gateway.pid], "worker": [worker.pid for worker in running],
                 "load generator": [os.getpid()]}
        ticks_before = cpu_ticks(roles)
        cpu_before = busy_ticks()
        began = time.perf_counter()
        accepted = uvloop.run(offer(port, requests, rate, connections=48))
        offered_for = time.perf_counter() - began
        deadline = time.monotonic() + 120
        while logged(settings.database_url) < accepted and time.monotonic() < deadline:
            peak = max([peak, *(rss_mib(worker.pid) for worker in running)])
            time.sleep(0.2)
        peak = max([peak, *(rss_mib(worker.pid) for worker in running)])
        busy = busy_cores_since(cpu_before)
        ticks = cpu_ticks(roles)
    finally:
        for worker in running:
            stop(worker)
        stop(gateway)
    with psycopg.connect(settings.database_url) as conn:
        lags = [row[0] * 1000 for row in conn.execute(
            "SELECT extract(epoch FROM processed_at - received_at)::float FROM ops.event_log "
            "ORDER BY received_at"
        )]
    second_half = lags[len(lags) // 2 :]
    return {
        "offered": len(requests), "accepted": accepted, "applied": len(lags),
        "achieved_rate": len(requests) / offered_for,
        "p50": statistics.median(lags), "p95": percentile(lags, 0.95),
        "p99": percentile(lags, 0.99), "max": max(lags), "peak_rss": peak, "busy": busy,
        "p99 of the second half": percentile(second_half, 0.99),
        **{f"cpu {role}": (ticks[role] - ticks_before[role]) / os.sysconf("SC_CLK_TCK")
           * 1e6 / max(1, len(lags)) for role in ticks},
    }


def measure_large_backlog(settings: Settings, count: int, lines: int, updates: int) -> Backlog:
    """Append the large backlog to the log of a fresh prefix, then start ONE worker on it."""
    run = replace(settings, topic_prefix=f"{settings.topic_prefix}large")
    asyncio.run(ensure_topics(run.kafka_bootstrap_servers, worker_topics(run.topic_prefix),
                              run.topic_partitions))
    print(f"appending {count} invoice.updated events of {lines} lines to {run.topic()} ...",
          flush=True)
    appended = asyncio.run(append(run, large_backlog(count, lines, updates, seed=11)))
    with fresh_database(run) as url:
        print("large backlog: one worker applying it ...", flush=True)
        group = replace(run, database_url=url, consumer_group=f"{run.topic_prefix}-1")
        fill = measure_workers(group, count, 1, "large")
        print(f"  {fill.elapsed:.1f} s, peak RSS {fill.peak_hwm_mib:.0f} MiB", flush=True)
        return Backlog(fill, appended, -(-count // updates), outcomes(url))


def listed(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000,
                        help="events pre-loaded for workers, limit and floor (0 skips them)")
    parser.add_argument("--workers", default="1,2", help="worker counts to measure")
    parser.add_argument("--rates", default="3000,500",
                        help="webhooks/s offered, per run ('' skips the latency runs)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of offering")
    parser.add_argument("--latency-workers", type=int, default=1,
                        help="worker processes (one consumer group) in the latency runs")
    parser.add_argument("--latency-repeats", type=int, default=3,
                        help="latency runs per rate; the one with the median p99 is reported")
    parser.add_argument("--batch", type=int, default=500, help="batch size of the limit")
    parser.add_argument("--large-events", type=int, default=2000,
                        help="invoice.updated events of the large backlog (0 skips it)")
    parser.add_argument("--large-lines", type=int, default=955,
                        help="line items of each invoice of the large backlog (955: 877 KB)")
    parser.add_argument("--large-updates", type=int, default=8,
                        help="events of each invoice of the large backlog")
    parser.add_argument("--only", default=",".join(MEASUREMENTS),
                        help=f"measurements to run, of {','.join(MEASUREMENTS)}")
    args = parser.parse_args()
    only = set(listed(args.only))
    if only - set(MEASUREMENTS):
        parser.error(f"--only: unknown {','.join(sorted(only - set(MEASUREMENTS)))}")
    if args.large_lines < 1 or args.large_updates < 1:
        parser.error("--large-lines and --large-updates must be at least 1")
    worker_counts = [int(n) for n in listed(args.workers)] if "workers" in only else []
    rates = [float(r) for r in listed(args.rates)] if "latency" in only else []
    preloaded = args.events if only & {"workers", "limit", "floor"} else 0
    base = Settings.from_env()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = replace(base, topic_prefix=prefix, topic_partitions=6)
    fills: dict[int, Fill] = {}
    limit: Fill | None = None
    floor: float | None = None
    large: Backlog | None = None
    latencies: dict[float, list[dict[str, float]]] = {}
    try:
        if preloaded:
            asyncio.run(ensure_topics(
                settings.kafka_bootstrap_servers, worker_topics(settings.topic_prefix), 6
            ))
            print(f"appending {preloaded} events to {settings.topic()} ...", flush=True)
            asyncio.run(append(settings, envelopes(lifecycle_events(preloaded, seed=3))))
        for count in worker_counts if preloaded else []:
            with fresh_database(settings) as url:
                print(f"worker: {count} process(es) applying the pre-loaded log ...", flush=True)
                group = replace(settings, database_url=url, consumer_group=f"{prefix}-{count}")
                fills[count] = measure_workers(group, preloaded, count)
                print(f"  {fills[count].rate:.0f} ev/s", flush=True)
        if preloaded and "limit" in only:
            with fresh_database(settings) as url:
                print("limit: minimal consumer on the same log ...", flush=True)
                limit = uvloop.run(
                    practical_limit(replace(settings, database_url=url), preloaded, args.batch)
                )
                print(f"  {limit.rate:.0f} ev/s", flush=True)
        if preloaded and "floor" in only:
            print("faust floor: empty agent on the same log ...", flush=True)
            floor = faust_floor(settings, preloaded)
            print(f"  {floor:.0f} msg/s", flush=True)
        if args.large_events and "large" in only:
            large = measure_large_backlog(settings, args.large_events, args.large_lines,
                                          args.large_updates)
        for rate in rates:
            latencies[rate] = []
            for repeat in range(args.latency_repeats):
                run = replace(settings, topic_prefix=f"{prefix}r{int(rate)}n{repeat}")
                asyncio.run(ensure_topics(
                    run.kafka_bootstrap_servers, worker_topics(run.topic_prefix), 6
                ))
                with fresh_database(run) as url:
                    print(f"latency: {rate:.0f} webhooks/s for {args.duration:.0f}s, "
                          f"{args.latency_workers} worker(s), run {repeat + 1} ...", flush=True)
                    latencies[rate].append(measure_latency(
                        replace(run, database_url=url), rate, args.duration,
                        args.latency_workers,
                    ))
                    print(f"  p99 {latencies[rate][-1]['p99']:.0f} ms", flush=True)
    finally:
        asyncio.run(delete_topics(settings.kafka_bootstrap_servers, prefix))
    report(fills, limit, floor, large, latencies)


def report(
    fills: dict[int, Fill], limit: Fill | None, floor: float | None, large: Backlog | None,
    latencies: dict[float, list[dict[str, float]]],
) -> None:
    print()
    print(f"{'measurement':<40}{'value':>14}  target")
    for count, fill in fills.items():
        name = f"{count} worker(s), log to PostgreSQL"
        print(f"{name:<40}{fill.rate:>9.0f} ev/s  >= 5000 ev/s")
        if limit is not None:
            print(f"{'  ratio to the limit':<40}{fill.rate / limit.rate:>14.2f}")
        print(f"{'  busy cores':<40}{fill.busy_cores:>14.1f}")
        print(f"{'  CPU per event, workers':<40}{fill.worker_cpu_us:>11.0f} us")
        print(f"{'  peak RSS of one worker':<40}{fill.peak_rss_mib:>10.0f} MiB  < 300 MiB")
        print(f"{'  peak RSS of one worker, VmHWM':<40}{fill.peak_hwm_mib:>10.0f} MiB")
    if limit is not None:
        print(f"{'limit: aiokafka + COPY, one process':<40}{limit.rate:>9.0f} ev/s")
        print(f"{'  busy cores':<40}{limit.busy_cores:>14.1f}")
    if floor is not None:
        print(f"{'faust floor: empty agent, one hop':<40}{floor:>8.0f} msg/s")
    if large is not None:
        report_large(large)
    for rate, runs in latencies.items():
        latency = sorted(runs, key=lambda run: run["p99"])[len(runs) // 2]
        print(f"offered {rate:.0f} webhooks/s: the run with the median p99 of {len(runs)}")
        every = " / ".join(f"{run['p99']:.0f}" for run in runs)
        print(f"{'  p99 of every run':<40}{every:>11} ms")
        print(f"{'  achieved rate / answered 200':<40}{latency['achieved_rate']:>7.0f} / "
              f"{latency['accepted']:.0f} of {latency['offered']:.0f}")
        print(f"{'  events applied':<40}{latency['applied']:>14.0f}")
        for name in ("p50", "p95", "p99", "max"):
            target = "  < 250 ms" if name == "p99" else ""
            print(f"{'  received-to-projected ' + name:<40}{latency[name]:>11.0f} ms{target}")
        print(f"{'  p99 of the later half of the events':<40}"
              f"{latency['p99 of the second half']:>11.0f} ms")
        print(f"{'  peak RSS of one worker':<40}{latency['peak_rss']:>10.0f} MiB  < 300 MiB")
        print(f"{'  busy cores':<40}{latency['busy']:>14.1f}")
        for name, value in latency.items():
            if name.startswith("cpu "):
                print(f"{'  CPU per event, ' + name[4:]:<40}{value:>11.0f} us")


def report_large(large: Backlog) -> None:
    fill = large.fill
    mean_kb = large.appended_bytes / max(1, fill.applied) / 1000
    print(f"large backlog: {fill.applied} invoice.updated of {mean_kb:.0f} KB "
          f"({large.invoices} invoices), one worker")
    print(f"{'  seconds until all in ops.event_log':<40}{fill.elapsed:>12.1f} s")
    print(f"{'  events/s, all / 10% to 90%':<40}{fill.elapsed_rate:>7.0f} / {fill.rate:.0f}")
    mb_per_s = large.appended_bytes / fill.elapsed / 1e6 if fill.elapsed else 0.0
    print(f"{'  MB/s of the log, all':<40}{mb_per_s:>9.0f} MB/s")
    print(f"{'  peak RSS of the worker, VmHWM':<40}{fill.peak_hwm_mib:>10.0f} MiB  < 400 MiB")
    print(f"{'  peak RSS sampled (VmRSS every 0.1 s)':<40}{fill.peak_rss_mib:>10.0f} MiB")
    print(f"{'  busy cores, all / 10% to 90%':<40}{fill.elapsed_busy_cores:>9.1f} / "
          f"{fill.busy_cores:.1f}")
    print(f"{'  CPU per event, worker, 10% to 90%':<40}{fill.worker_cpu_us / 1000:>11.1f} ms")
    cpu = " / ".join(f"{fill.cpu_seconds.get(role, 0.0):.0f}"
                     for role in ("worker", "broker", "postgres"))
    print(f"{'  CPU s: worker / broker(s) / PostgreSQL':<40}{cpu:>14}")
    counted = ", ".join(f"{status} {count}" for status, count in sorted(large.outcomes.items()))
    print(f"{'  outcomes in ops.event_log':<40}  {counted}")


if __name__ == "__main__":
    main()
