"""Throughput and latency of the ingest gateway against a bare aiokafka producer, same run.

    .venv/bin/python bench/gateway.py [--workers 2] [--duration 15] [--repeats 3] [--rate 3000]

Starts ``stripe-streams gateway`` with ``--workers`` processes on a free port against the broker
of KAFKA_BOOTSTRAP_SERVERS (a fresh topic prefix per run; producer settings from the usual
STRIPE_STREAMS_PRODUCER_* variables), then alternates, ``--repeats`` times:

* bare: one aiokafka producer with the gateway's settings (acks=all, idempotent, same linger,
  batch size and compression) sends the very envelopes the gateway would write, 64 sends in
  flight, each awaited until acknowledged;
* gateway: 64 keep-alive connections post signed events of 3-4 KB built from Stripe's fixtures,
  each waiting for its 200 (which the gateway sends after Kafka's acknowledgement).

Then one open-loop run at ``--rate`` requests/s measures latency from each request's scheduled
send time, so a stall counts against every request it delays. The machine is shared, so medians
and the gateway/bare ratio matter more than any single figure; ``gw us/req`` (CPU the gateway's
processes spent per answered request) and ``busy cores`` (how busy the whole machine was, out of
its core count) tell a slow run caused by the gateway from one caused by a neighbour.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import uvloop
from aiokafka import AIOKafkaProducer

from ingest.signature import signature_header
from streams.log.codec import encode_event
from streams.log.envelope import EventEnvelope, EventSource
from streams.log.topics import MAX_MESSAGE_BYTES
from streams.settings import REPO_ROOT, Secret, Settings

FIXTURES = REPO_ROOT.parent / "shared" / "stripe" / "fixtures3.json"
SECRET = Secret("whsec_bench_gateway")
# Event types of the resources whose events weigh 3-4 KB, as most billing traffic does.
EVENT_MIX = (
    ("charge", "charge.succeeded", "ch"),
    ("checkout.session", "checkout.session.completed", "cs"),
    ("invoice", "invoice.paid", "in"),
    ("credit_note", "credit_note.created", "cn"),
    ("account", "account.updated", "acct"),
)


@dataclass
class Run:
    """What one load run measured."""

    sent: int = 0
    ok: int = 0
    failed: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    gateway_cpu: float = 0.0
    machine_busy: float = 0.0
    gateway_side: tuple[float, float] | None = None

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def stripe_events(count: int, fixtures: Path) -> list[bytes]:
    """Return ``count`` distinct event bodies wrapping Stripe's fixture objects."""
    resources = json.loads(fixtures.read_text())["resources"]
    now = int(time.time())
    bodies = []
    for n in range(count):
        resource, event_type, prefix = EVENT_MIX[n % len(EVENT_MIX)]
        obj = copy.deepcopy(resources[resource])
        obj["id"] = f"{prefix}_bench{n:08d}{uuid.uuid4().hex[:8]}"
        event = {
            "id": f"evt_bench{n:08d}{uuid.uuid4().hex[:8]}",
            "object": "event",
            "api_version": "2026-10-28",
            "created": now,
            "data": {"object": obj, "previous_attributes": {}},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": f"req_{uuid.uuid4().hex[:14]}", "idempotency_key": None},
            "type": event_type,
        }
        bodies.append(json.dumps(event).encode())
    return bodies


def http_requests(bodies: Sequence[bytes], path: str = "/webhooks/stripe") -> list[bytes]:
    """Return ready-to-write HTTP/1.1 requests, each signed now with the bench secret."""
    requests = []
    for body in bodies:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Stripe/1.0\r\n"
            f"Content-Type: application/json; charset=utf-8\r\n"
            f"Stripe-Signature: {signature_header(body, SECRET)}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        requests.append(head.encode() + body)
    return requests


class Connection(asyncio.Protocol):
    """One keep-alive client connection with one request in flight; lean, to leave the CPU to
    the gateway and the broker that share the machine with it."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._answer: asyncio.Future[int] | None = None

    @classmethod
    async def open(cls, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(cls, "127.0.0.1", port)
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self._buffer[:end]).lower()
        length = int(head.partition(b"content-length:")[2].split(b"\r\n")[0] or 0)
        if len(self._buffer) < end + 4 + length:
            return
        del self._buffer[: end + 4 + length]
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ConnectionError("the gateway closed the connection"))

    async def exchange(self, request: bytes) -> int:
        """Send one request and return the status of its answer."""
        assert self._transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return await self._answer

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def closed_loop(
    port: int, requests: Sequence[bytes], concurrency: int, duration: float
) -> Run:
    """Keep ``concurrency`` requests in flight for ``duration`` seconds."""
    run = Run()
    deadline = time.perf_counter() + duration
    counter = iter(range(10**12))

    async def connection() -> None:
        client = await Connection.open(port)
        try:
            while time.perf_counter() < deadline:
                request = requests[next(counter) % len(requests)]
                started = time.perf_counter()
                status = await client.exchange(request)
                _record(run, status, time.perf_counter() - started)
        finally:
            client.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    run.seconds = time.perf_counter() - started
    return run


async def open_loop(
    port: int, requests: Sequence[bytes], concurrency: int, rate: float, duration: float
) -> Run:
    """Send at a fixed ``rate``; latency counts from each request's scheduled time."""
    run = Run()
    total = int(rate * duration)
    # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
    start = time.perf_counter() + 0.2
    counter = iter(range(total))

    async def connection() -> None:
        client = await Connection.open(port)
        try:
            for n in counter:
                scheduled = start + n / rate
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                status = await client.exchange(requests[n % len(requests)])
                _record(run, status, time.perf_counter() - scheduled)
        finally:
            client.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    run.seconds = duration
    return run


def _record(run: Run, status: int, latency: float) -> None:
    run.sent += 1
    if status == 200:
        run.ok += 1
        run.latencies.append(latency)
    else:
        run.failed[status] = run.failed.get(status, 0) + 1


async def bare_producer(
    settings: Settings, messages: Sequence[tuple[bytes, bytes]], concurrency: int,
    duration: float,
) -> Run:
    """The baseline: the gateway's producer settings, no HTTP, same envelopes, same concurrency."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.producer_linger_ms,
        max_batch_size=settings.producer_batch_bytes,
        compression_type=settings.producer_compression,
        max_request_size=MAX_MESSAGE_BYTES,
    )
    await producer.start()
    run = Run()
    topic = settings.topic("bare")
    deadline = time.perf_counter() + duration
    counter = iter(range(10**12))

    async def sender() -> None:
        while time.perf_counter() < deadline:
            key, value = messages[next(counter) % len(messages)]
            started = time.perf_counter()
            await (await producer.send(topic, value, key=key))
            _record(run, 200, time.perf_counter() - started)

    try:
        await producer.send_and_wait(topic, messages[0][1], key=messages[0][0])
        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        run.seconds = time.perf_counter() - started
    finally:
        await producer.stop()
    return run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_gateway(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """Start ``stripe-streams gateway`` and return once it answers /readyz."""
    # A file, not a pipe nobody reads: a full pipe would stall the gateway's logging.
    log_file = Path(tempfile.gettempdir()) / f"stripe-streams-bench-gateway-{port}.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "gateway", "--host", "127.0.0.1",
             "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=log,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gateway exited: {log_file.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
                if sock.recv(100).startswith(b"HTTP/1.1 200"):
                    return process
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("gateway did not become ready within 60 s")


@dataclass
class Memory:
    """Resident memory of a process and its children, MiB; shared pages count once in PSS."""

    rss: float = 0.0
    pss: float = 0.0

    @classmethod
    def of_tree(cls, pid: int) -> Memory:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        fields = {line.split(":")[0]: int(line.split()[1]) / 1024 for line in rollup[1:]}
        total = cls(fields["Rss"], fields["Pss"])
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            below = cls.of_tree(int(child))
            total.rss += below.rss
            total.pss += below.pss
        return total

    def peak(self, other: Memory) -> Memory:
        return Memory(max(self.rss, other.rss), max(self.pss, other.pss))


def ingest_buckets(port: int) -> dict[float, float]:
    """Cumulative counts of the gateway's stripe_streams_ingest_seconds, by upper bound."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = re.findall(r'stripe_streams_ingest_seconds_bucket\{le="([^"]+)"\} (\S+)', text)
    return {float(bound): float(count) for bound, count in found}


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Upper bound, ms, of the bucket holding quantile ``q`` of what was observed in between."""
    total = after[float("inf")] - before.get(float("inf"), 0.0)
    for bound in sorted(after):
        if after[bound] - before.get(bound, 0.0) >= q * total:
            return bound * 1000
    return float("inf")


def cpu_seconds(pid: int) -> float:
    """CPU time a process and its living children have used."""
    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    used = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return used + sum(cpu_seconds(int(child)) for child in children)


def busy_and_total_ticks() -> tuple[int, int]:
    """Ticks the whole machine spent busy, and in all, since boot."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + ticks[4]
    return sum(ticks) - idle, sum(ticks)


async def accounted(pid: int, load: Awaitable[Run]) -> Run:
    """Run ``load`` and note the gateway's CPU and how busy the whole machine was meanwhile."""
    cpu_before, (busy_before, total_before) = cpu_seconds(pid), busy_and_total_ticks()
    run = await load
    busy, total = busy_and_total_ticks()
    run.gateway_cpu = cpu_seconds(pid) - cpu_before
    run.machine_busy = os.cpu_count() or 1
    run.machine_busy *= (busy - busy_before) / max(1, total - total_before)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=float, default=3000.0, help="open-loop requests/s")
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes")
    parser.add_argument("--events", type=int, default=5000, help="distinct events to cycle")
    parser.add_argument("--fixtures", type=Path, default=FIXTURES)
    args = parser.parse_args()

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "STRIPE_WEBHOOK_SECRETS": SECRET.reveal(),
           "STRIPE_STREAMS_TOPIC_PREFIX": prefix,
           "STRIPE_STREAMS_GATEWAY_WORKERS": str(args.workers)}
    settings = Settings.from_env(env)
    bodies = stripe_events(args.events, args.fixtures)
    sizes = [len(b) for b in bodies]
    print(f"{len(bodies)} events of {min(sizes)}-{max(sizes)} bytes "
          f"(mean {statistics.mean(sizes):.0f}); {args.workers} gateway worker(s); "
          f"broker {settings.kafka_bootstrap_servers}; linger {settings.producer_linger_ms} ms, "
          f"batch {settings.producer_batch_bytes} B, "
          f"compression {settings.producer_compression or 'none'}")
    envelopes = [
        EventEnvelope.from_stripe_event(
            b, endpoint="default", source=EventSource.WEBHOOK, received_at=datetime.now(UTC)
        )
        for b in bodies
    ]
    messages = [(e.key, encode_event(e)) for e in envelopes]
    port = free_port()
    gateway = start_gateway(env, port)
    try:
        results = uvloop.run(_measure(args, settings, port, bodies, messages, gateway.pid))
    finally:
        gateway.terminate()
        gateway.wait(timeout=60)
    _report(args, *results)


async def _measure(
    args: argparse.Namespace, settings: Settings, port: int, bodies: list[bytes],
    messages: list[tuple[bytes, bytes]], pid: int,
) -> tuple[list[Run], list[Run], Run, Memory]:
    requests = http_requests(bodies)
    await closed_loop(port, requests, args.concurrency, 3.0)  # warm-up
    await bare_producer(settings, messages, args.concurrency, 2.0)
    bare_runs, gateway_runs, memory = [], [], Memory()
    for _ in range(args.repeats):
        bare_runs.append(await accounted(
            pid, bare_producer(settings, messages, args.concurrency, args.duration)
        ))
        gateway_runs.append(await accounted(
            pid, closed_loop(port, requests, args.concurrency, args.duration)
        ))
        memory = memory.peak(Memory.of_tree(pid))
    before = ingest_buckets(port)
    paced = await accounted(
        pid, open_loop(port, requests, args.concurrency, args.rate, args.duration)
    )
    after = ingest_buckets(port)
    paced.gateway_side = (bucket_quantile(before, after, 0.5), bucket_quantile(before, after, 0.99))
    return bare_runs, gateway_runs, paced, memory.peak(Memory.of_tree(pid))


def _report(
    args: argparse.Namespace, bare_runs: list[Run], gateway_runs: list[Run], paced: Run,
    memory: Memory,
) -> None:
    print(f"\n{'run':<28}{'ok/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
          f"{'gw us/req':>11}{'busy cores':>12}  errors")
    for name, runs in (("bare producer", bare_runs), ("gateway closed loop", gateway_runs)):
        for n, run in enumerate(runs, 1):
            _row(f"{name} #{n}", run)
    _row(f"gateway paced {args.rate:.0f}/s", paced)
    if paced.gateway_side is not None:
        p50, p99 = paced.gateway_side
        print(f"{'  seen by the gateway':<28}{'':>9}{f'<={p50:g}':>9}{f'<={p99:g}':>9}"
              "   (stripe_streams_ingest_seconds buckets: request received to Kafka ack)")
    bare = statistics.median(r.rate for r in bare_runs)
    served = statistics.median(r.rate for r in gateway_runs)
    print(f"\nmedian: gateway {served:.0f}/s, bare producer {bare:.0f}/s, "
          f"ratio {served / bare:.2f}")
    print(f"gateway memory, all processes, at its highest sample: RSS {memory.rss:.0f} MiB, "
          f"PSS {memory.pss:.0f} MiB")


def _row(name: str, run: Run) -> None:
    per_request = f"{run.gateway_cpu / run.ok * 1e6:.0f}" if run.gateway_cpu > 0.05 else "-"
    print(f"{name:<28}{run.rate:>9.0f}{run.percentile(0.5):>9.2f}{run.percentile(0.99):>9.2f}"
          f"{run.percentile(0.999):>10.2f}{per_request:>11}{run.machine_busy:>12.2f}"
          f"  {run.failed or '-'}")


if __name__ == "__main__":
    main()
