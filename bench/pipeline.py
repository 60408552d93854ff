"""Throughput and latency of the processing pipeline, against a minimal consumer, same run.

    .venv/bin/python bench/pipeline.py [--events 60000] [--workers 1,2] [--rates 3000,500]
                                       [--duration 20] [--latency-workers 1]
                                       [--latency-repeats 3]

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
  run with the median p99 is reported, with every run's p99.

The machine is shared: ``busy cores`` says how loaded it was during each measurement, and the
latency runs add the CPU each process spent per event applied (gateway, workers, load
generator, and the broker and PostgreSQL when they run on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
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
from streams.app import worker_topics
from streams.codec import decode_event, encode_event
from streams.envelope import EventEnvelope, EventSource
from streams.handlers.registry import load_handlers
from streams.samples import EventFactory
from streams.settings import Secret, Settings
from streams.topics import delete_topics, ensure_topics

SECRET = Secret("whsec_bench_pipeline")
LOG_DIR = Path("/tmp") / "stripe-streams-bench"


@dataclass
class Fill:
    """How fast a table filled: events per second between 10% and 90% of the total."""

    events: int
    seconds: float
    peak_rss_mib: float = 0.0
    busy_cores: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def lifecycle_events(count: int, seed: int) -> list[dict[str, Any]]:
    factory = EventFactory(seed=seed)
    events: list[dict[str, Any]] = []
    while len(events) < count:
        events.extend(factory.customer_lifecycle(periods=2))
    return events[:count]


def envelopes(events: Sequence[dict[str, Any]]) -> list[EventEnvelope]:
    return [
        EventEnvelope.from_event_dict(
            e, payload=json.dumps(e), endpoint="default", source=EventSource.WEBHOOK
        )
        for e in events
    ]


async def append(settings: Settings, log: Sequence[EventEnvelope]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all",
        enable_idempotence=True, linger_ms=10, max_batch_size=262144,
    )
    await producer.start()
    try:
        pending = []
        for envelope in log:
            pending.append(await producer.send(settings.topic(), encode_event(envelope),
                                               key=envelope.key))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


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


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
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


def start(command: Sequence[str], env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
    LOG_DIR.mkdir(exist_ok=True)
    with (LOG_DIR / log_name).open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", *command], env=env, stdout=log,
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


def watch_fill(url: str, total: int, pids: Sequence[int], timeout: float = 600) -> Fill:
    """Poll the event log until it holds ``total`` events; time 10% to 90% of them."""
    marks: dict[float, float] = {}
    peak = 0.0
    cpu_before = busy_ticks()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = logged(url)
        now = time.perf_counter()
        for share in (0.1, 0.9):
            if count >= share * total and share not in marks:
                marks[share] = now
                if share == 0.1:
                    cpu_before = busy_ticks()
        peak = max([peak, *(rss_mib(pid) for pid in pids)])
        if count >= total:
            break
        time.sleep(0.1)
    else:
        raise SystemExit(f"only {logged(url)} of {total} events applied in {timeout:.0f}s")
    return Fill(int(0.8 * total), marks[0.9] - marks[0.1], peak, busy_cores_since(cpu_before))


def measure_workers(settings: Settings, total: int, count: int) -> Fill:
    """Start ``count`` workers in one consumer group on the pre-loaded log; time the fill."""
    workers = [
        start(["worker", "--web-port", str(free_port())], environment(settings),
              f"worker-fill-{count}-{n}.log")
        for n in range(count)
    ]
    try:
        return watch_fill(settings.database_url, total, [w.pid for w in workers])
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


def signed_requests(events: Sequence[dict[str, Any]]) -> list[bytes]:
    requests = []
    for event in events:
        body = json.dumps(event).encode()
        head = (
            "POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\n"
            f"Stripe-Signature: {signature_header(body, SECRET)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        requests.append(head.encode() + body)
    return requests


async def offer(port: int, requests: Sequence[bytes], rate: float, connections: int) -> int:
    """Send the requests at a fixed rate over keep-alive connections; return how many got 200."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000, help="events pre-loaded")
    parser.add_argument("--workers", default="1,2", help="worker counts to measure")
    parser.add_argument("--rates", default="3000,500", help="webhooks/s offered, per run")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of offering")
    parser.add_argument("--latency-workers", type=int, default=1,
                        help="worker processes (one consumer group) in the latency runs")
    parser.add_argument("--latency-repeats", type=int, default=3,
                        help="latency runs per rate; the one with the median p99 is reported")
    parser.add_argument("--batch", type=int, default=500, help="batch size of the limit")
    args = parser.parse_args()
    base = Settings.from_env()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = replace(base, topic_prefix=prefix, topic_partitions=6)
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, worker_topics(settings), 6))
    fills: dict[int, Fill] = {}
    latencies: dict[float, list[dict[str, float]]] = {}
    try:
        print(f"appending {args.events} events to {settings.topic()} ...", flush=True)
        asyncio.run(append(settings, envelopes(lifecycle_events(args.events, seed=3))))
        for count in map(int, args.workers.split(",")):
            with fresh_database(settings) as url:
                print(f"worker: {count} process(es) applying the pre-loaded log ...", flush=True)
                group = replace(settings, database_url=url, consumer_group=f"{prefix}-{count}")
                fills[count] = measure_workers(group, args.events, count)
                print(f"  {fills[count].rate:.0f} ev/s", flush=True)
        with fresh_database(settings) as url:
            print("limit: minimal consumer on the same log ...", flush=True)
            limit = uvloop.run(
                practical_limit(replace(settings, database_url=url), args.events, args.batch)
            )
            print(f"  {limit.rate:.0f} ev/s", flush=True)
        print("faust floor: empty agent on the same log ...", flush=True)
        floor = faust_floor(settings, args.events)
        print(f"  {floor:.0f} msg/s", flush=True)
        for rate in map(float, args.rates.split(",")):
            latencies[rate] = []
            for repeat in range(args.latency_repeats):
                run = replace(settings, topic_prefix=f"{prefix}r{int(rate)}n{repeat}")
                asyncio.run(ensure_topics(run.kafka_bootstrap_servers, worker_topics(run), 6))
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
    report(fills, limit, floor, latencies)


def report(
    fills: dict[int, Fill], limit: Fill, floor: float,
    latencies: dict[float, list[dict[str, float]]],
) -> None:
    print()
    print(f"{'measurement':<40}{'value':>14}  target")
    for count, fill in fills.items():
        name = f"{count} worker(s), log to PostgreSQL"
        print(f"{name:<40}{fill.rate:>9.0f} ev/s  >= 5000 ev/s")
        print(f"{'  ratio to the limit':<40}{fill.rate / limit.rate:>14.2f}")
        print(f"{'  busy cores':<40}{fill.busy_cores:>14.1f}")
        print(f"{'  peak RSS of one worker':<40}{fill.peak_rss_mib:>10.0f} MiB  < 300 MiB")
    print(f"{'limit: aiokafka + COPY, one process':<40}{limit.rate:>9.0f} ev/s")
    print(f"{'  busy cores':<40}{limit.busy_cores:>14.1f}")
    print(f"{'faust floor: empty agent, one hop':<40}{floor:>8.0f} msg/s")
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


if __name__ == "__main__":
    main()
