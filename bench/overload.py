"""Overload: three times what the gateway sustains, for a minute, with and without its queue bound.

    .venv/bin/python bench/overload.py [--duration 60] [--repeats 2] [--factor 3]
                                       [--sizes 300,700] [--pause 0.5] [--period 1.0]
                                       [--shared-broker]

"More offered than the broker acknowledges" is made real on two fronts, since a Python load
generator on a shared 2-core machine cannot offer three times what a fast gateway answers:

* the broker is throttled: a small process sends it SIGSTOP for ``--pause`` seconds of every
  ``--period``, so it acknowledges in bursts and not at all in between (that process, and this
  one in a ``finally``, send SIGCONT however the bench ends, even on Ctrl-C or when this process
  is killed);
* the events are invoices of many line items, ``--sizes`` KB (300-700 KB, under the 1 MiB
  limit), so bytes, not requests, are the load, and 32 MiB is some 65 deliveries.

By default the bench runs a broker of its own (the project's local Kafka, under a temporary
directory, on free ports), so pausing it disturbs no one else's run; ``--shared-broker`` uses
and pauses the broker(s) ``stripe-streams services status`` reports instead.

Steps: the sustainable rate is a closed-loop run (``--concurrency`` keep-alive connections,
``--closed-duration`` seconds, broker throttled) of one gateway: the requests/s answered 200
(the same run with the broker never stopped comes first, for reference).
Then, ``--repeats`` times and interleaved (A B, B A, ...), a fresh ``stripe-streams gateway``
(one process, a fresh topic prefix) with the default bound (``STRIPE_STREAMS_GATEWAY_QUEUE_BYTES``
unset: 32 MiB) or with it effectively off (100 GB), gets ``--factor`` times the sustainable rate
for ``--duration`` seconds, open loop: each request is sent at its scheduled time on an idle
connection or a new one (at most ``--connections``), and a connection the gateway closes after
its 503 is simply not reused. Every answer's status, Retry-After and latency from the scheduled
time are recorded; after the offering, requests still waiting get ``--drain`` seconds.

Every ``--sample`` seconds the gateway's VmRSS is read from ``/proc/<pid>/status``, and its
VmHWM after the drain; CPU of the gateway, the broker and this load generator comes from
``/proc``, ``busy cores`` is the whole machine (2.00 = both cores) and ``others`` what
processes other than those three used of it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import cast

import orjson
import uvloop
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway import (
    SECRET,
    busy_and_total_ticks,
    cpu_seconds,
    free_port,
    http_requests,
    start_gateway,
)

from streams.devtools.samples import EventFactory
from streams.devtools.services.kafka import LocalKafka, free_port_pair
from streams.log.topics import delete_topics
from streams.settings import Settings

console = Console(width=160)

UNBOUNDED = 100_000_000_000
"""STRIPE_STREAMS_GATEWAY_QUEUE_BYTES that no run reaches: the bound effectively off."""
VARIANTS = (("bound 32 MiB (default)", None), ("bound off (100 GB)", UNBOUNDED))
SHED_BODY = b"does not keep up"
"""In the body of the 503 the bound answers; a 503 for Kafka's timeout says otherwise."""
STATUS_LINE = re.compile(r"^(?P<name>kafka\S*)\s+\S+\s+pid (?P<pid>\d+)\s+running", re.MULTILINE)

# Runs apart from this process, so the broker runs again even when this one is killed: its
# stdin reaches end of file when this process ends, however it ends.
THROTTLE = """
import os, select, signal, sys
stopped, running = float(sys.argv[1]), float(sys.argv[2])
pids = [int(pid) for pid in sys.argv[3:]]
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

def send(sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

try:
    while True:
        send(signal.SIGSTOP)
        if select.select([sys.stdin], [], [], stopped)[0]:
            break
        send(signal.SIGCONT)
        if select.select([sys.stdin], [], [], running)[0]:
            break
finally:
    send(signal.SIGCONT)
"""


def large_events(count: int, smallest: int, largest: int, seed: int = 7) -> list[bytes]:
    """``count`` ``invoice.finalized`` events of invoices whose lines make them ``smallest`` to
    ``largest`` bytes, evenly spread: the shape of Stripe's largest events."""
    factory = EventFactory(seed=seed)
    price = factory.default_price()

    def event(lines: int) -> bytes:
        customer = factory.customer()
        subscription = factory.subscription(customer, price, status="active")
        invoice = factory.invoice(
            customer, subscription, billing_reason="subscription_cycle", lines=lines
        )
        return orjson.dumps(factory.event("invoice.finalized", invoice))

    base, per_line = len(event(1)), (len(event(101)) - len(event(1))) / 100
    bodies = []
    for n in range(count):
        target = smallest + (largest - smallest) * n / max(1, count - 1)
        bodies.append(event(max(1, round((target - base) / per_line) + 1)))
    return bodies


@dataclass(frozen=True, slots=True)
class Answer:
    """What the gateway answered one request."""

    status: int
    retry_after: bool
    closes: bool
    body: bytes


class Client(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._answer: asyncio.Future[Answer] | None = None
        self.usable = True

    @classmethod
    async def open(cls, port: int) -> Client:
        _, client = await asyncio.get_running_loop().create_connection(cls, "127.0.0.1", port)
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(self._buffer[:end]).lower().split(b"\r\n")
        headers = dict(line.partition(b":")[::2] for line in lines[1:])
        length = int(headers.get(b"content-length", b"0"))
        if len(self._buffer) < end + 4 + length:
            return
        body = bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        closes = headers.get(b"connection", b"").strip() == b"close"
        if closes:
            self.usable = False
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(
                Answer(int(lines[0][9:12]), b"retry-after" in headers, closes, body)
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ConnectionError(f"closed before an answer: {exc!r}"))

    async def exchange(self, request: bytes) -> Answer:
        """Send one request and return its answer; ConnectionError if the connection ends."""
        if self._transport is None or self._transport.is_closing():
            raise ConnectionError("the connection is closed")
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return await self._answer

    def close(self) -> None:
        self.usable = False
        if self._transport is not None:
            self._transport.close()


@dataclass
class Tally:
    """Every answer of one load run, by kind, with latencies from each request's scheduled time."""

    offered: int = 0
    ok: int = 0
    shed: int = 0
    timed_out: int = 0
    without_retry_after: int = 0
    shed_kept_open: int = 0
    other: Counter[int] = field(default_factory=Counter)
    lost: int = 0
    lost_reasons: Counter[str] = field(default_factory=Counter)
    connect_failed: int = 0
    waited_for_connection: int = 0
    unanswered: int = 0
    ok_latencies: list[float] = field(default_factory=list)
    unavailable_latencies: list[float] = field(default_factory=list)
    connections_opened: int = 0
    most_connections: int = 0

    def record(self, answer: Answer, latency: float) -> None:
        if answer.status == 200:
            self.ok += 1
            self.ok_latencies.append(latency)
            return
        if answer.status != 503:
            self.other[answer.status] += 1
            return
        self.unavailable_latencies.append(latency)
        if not answer.retry_after:
            self.without_retry_after += 1
        if SHED_BODY in answer.body:
            self.shed += 1
            if not answer.closes:
                self.shed_kept_open += 1
        else:
            self.timed_out += 1

    @property
    def answered(self) -> int:
        return self.ok + self.shed + self.timed_out + sum(self.other.values())


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` in ms, NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


async def closed_loop(
    port: int, requests: Sequence[bytes], concurrency: int, duration: float
) -> Tally:
    """Keep ``concurrency`` requests in flight for ``duration`` s, reconnecting when closed."""
    tally = Tally()
    deadline = time.perf_counter() + duration
    counter = iter(range(10**12))

    async def connection() -> None:
        client: Client | None = None
        while time.perf_counter() < deadline:
            if client is None or not client.usable:
                client = await Client.open(port)
                tally.connections_opened += 1
            n = next(counter)
            started = time.perf_counter()
            tally.offered += 1
            try:
                answer = await client.exchange(requests[n % len(requests)])
            except ConnectionError as exc:
                tally.lost += 1
                tally.lost_reasons[str(exc)] += 1
                continue
            tally.record(answer, time.perf_counter() - started)
        if client is not None:
            client.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return tally


async def open_loop(
    port: int, requests: Sequence[bytes], rate: float, duration: float, connections: int,
    drain: float,
) -> Tally:
    """Send at ``rate`` for ``duration`` s whatever the answers; wait ``drain`` s for the last."""
    tally = Tally()
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(connections)
    idle: list[Client] = []
    in_use = 0
    pending: set[asyncio.Task[None]] = set()

    async def deliver(n: int, scheduled: float) -> None:
        nonlocal in_use
        if slots.locked():
            tally.waited_for_connection += 1
        async with slots:
            client: Client | None = None
            while idle and client is None:
                candidate = idle.pop()
                client = candidate if candidate.usable else None
            if client is None:
                try:
                    client = await Client.open(port)
                except OSError:
                    tally.connect_failed += 1
                    return
                tally.connections_opened += 1
            in_use += 1
            tally.most_connections = max(tally.most_connections, in_use + len(idle))
            try:
                answer = await client.exchange(requests[n % len(requests)])
            except ConnectionError as exc:
                tally.lost += 1
                tally.lost_reasons[str(exc)] += 1
                return
            finally:
                in_use -= 1
            tally.record(answer, time.perf_counter() - scheduled)
            if client.usable:
                idle.append(client)
            else:
                client.close()

    total = int(rate * duration)
    # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
    start = time.perf_counter() + 0.1
    n = 0
    while n < total:
        now = time.perf_counter()
        while n < total and start + n / rate <= now:
            task = loop.create_task(deliver(n, start + n / rate))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
        if n < total:
            await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
    tally.offered = total
    if pending:
        _, late = await asyncio.wait(set(pending), timeout=drain)
        tally.unanswered = len(late)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    for client in idle:
        client.close()
    return tally


def memory_mib(pid: int, name: str) -> float:
    """``name`` (VmRSS, VmHWM) of a process from ``/proc/<pid>/status``, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """Reads a process's VmRSS every ``interval`` s in a thread of its own, from start to stop."""

    def __init__(self, pid: int, interval: float) -> None:
        self.samples: list[tuple[float, float]] = []
        self._pid, self._interval = pid, interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        started = time.perf_counter()
        while True:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                self.samples.append(
                    (time.perf_counter() - started, memory_mib(self._pid, "VmRSS"))
                )
            if self._done.wait(self._interval):
                return


@dataclass
class Usage:
    """What the processes and the machine spent over one run."""

    seconds: float = 0.0
    gateway_cpu: float = 0.0
    broker_cpu: float = 0.0
    generator_cpu: float = 0.0
    busy_cores: float = 0.0
    load_average: float = 0.0

    @property
    def others(self) -> float:
        """Cores busy with anything but the gateway, the broker and the load generator."""
        ours = self.gateway_cpu + self.broker_cpu + self.generator_cpu
        return max(0.0, self.busy_cores - ours / self.seconds) if self.seconds else 0.0


class Meter:
    """Notes CPU of the gateway, the broker(s) and this process, and the machine, in between."""

    def __init__(self, gateway: int, brokers: Sequence[int]) -> None:
        self._gateway, self._brokers = gateway, brokers

    def _cpu(self) -> tuple[float, float, float]:
        return (
            _cpu_or_nan(self._gateway),
            sum(_cpu_or_nan(pid) for pid in self._brokers),
            time.process_time(),
        )

    def __enter__(self) -> Meter:
        self._started = time.perf_counter()
        self._before = self._cpu()
        self._ticks = busy_and_total_ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        self.usage = self.read()

    def read(self) -> Usage:
        after, (busy, total) = self._cpu(), busy_and_total_ticks()
        gateway, broker, generator = (a - b for a, b in zip(after, self._before, strict=True))
        share = (busy - self._ticks[0]) / max(1, total - self._ticks[1])
        return Usage(
            time.perf_counter() - self._started, gateway, broker, generator,
            (os.cpu_count() or 1) * share,
            float(Path("/proc/loadavg").read_text().split()[0]),
        )


def _cpu_or_nan(pid: int) -> float:
    """CPU seconds of a process, NaN once it has ended (a crash is reported, not raised)."""
    try:
        return cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError):
        return float("nan")


@dataclass
class Run:
    """One overload run of one variant."""

    variant: str
    rate: float
    duration: float
    tally: Tally
    usage: Usage
    rss: list[tuple[float, float]]
    hwm: float
    shedding_started: int
    error_lines: int
    exit_note: str | None

    def rss_in(self, until: float) -> list[float]:
        return [rss for at, rss in self.rss if at <= until] or [float("nan")]


@contextlib.contextmanager
def throttled(pids: Sequence[int], stopped: float, period: float) -> Iterator[None]:
    """Pause ``pids`` ``stopped`` s of every ``period`` s; they run again however this ends."""
    if stopped <= 0:
        yield
        return
    child = subprocess.Popen(
        [sys.executable, "-c", THROTTLE, str(stopped), str(period - stopped),
         *(str(pid) for pid in pids)],
        stdin=subprocess.PIPE,
    )
    try:
        yield
    finally:
        resume(child, pids)


def resume(child: subprocess.Popen[bytes], pids: Sequence[int]) -> None:
    """End the throttle and make sure every paused process runs."""
    if child.stdin is not None:
        with contextlib.suppress(OSError):
            child.stdin.close()
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def own_broker(settings: Settings) -> Iterator[tuple[str, list[int]]]:
    """A single-node Kafka of the bench's own, under a temporary directory, on free ports."""
    home = Path(tempfile.mkdtemp(prefix="stripe-streams-overload-"))
    # Reuse the jars 'services up' resolved, rather than resolving them again.
    (home / "kafka-jars").symlink_to(settings.state_dir / "kafka-jars")
    kafka = LocalKafka(version=settings.kafka_version, home=home / "kafka", port=free_port_pair())
    pids: list[int] = []
    try:
        pids = kafka.up()
        yield kafka.bootstrap_servers, pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        kafka.down()
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def shared_broker(settings: Settings) -> Iterator[tuple[str, list[int]]]:
    """The broker(s) of ``stripe-streams services``, found by ``services status``."""
    status = subprocess.run(
        [sys.executable, "-m", "streams.cli", "services", "status"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    pids = [int(found["pid"]) for found in STATUS_LINE.finditer(status)]
    if not pids:
        raise SystemExit(f"no running broker in 'stripe-streams services status':\n{status}")
    try:
        yield settings.kafka_bootstrap_servers, pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def gateway_env(bootstrap: str, prefix: str, queue_bytes: int | None) -> dict[str, str]:
    env = {**os.environ, "STRIPE_WEBHOOK_SECRETS": SECRET.reveal(),
           "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "STRIPE_STREAMS_TOPIC_PREFIX": prefix,
           "STRIPE_STREAMS_GATEWAY_WORKERS": "1"}
    env.pop("STRIPE_STREAMS_GATEWAY_QUEUE_BYTES", None)
    if queue_bytes is not None:
        env["STRIPE_STREAMS_GATEWAY_QUEUE_BYTES"] = str(queue_bytes)
    return env


def gateway_log(port: int) -> Path:
    """Where bench/gateway.py's ``start_gateway`` writes the gateway's log."""
    return Path(tempfile.gettempdir()) / f"stripe-streams-bench-gateway-{port}.log"


def stop_gateway(process: subprocess.Popen[bytes]) -> str | None:
    """SIGTERM and wait; say how it ended if it had already ended by itself."""
    code = process.poll()
    if code is not None:
        return f"exited with {code} during the run"
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return "did not stop within 60 s of SIGTERM; killed"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of overload")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each variant")
    parser.add_argument("--factor", type=float, default=3.0, help="times the sustainable rate")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="offer this many requests/s instead of factor x sustainable")
    parser.add_argument("--sizes", default="300,700", help="smallest,largest event, KB")
    parser.add_argument("--events", type=int, default=40, help="distinct events to cycle")
    parser.add_argument("--pause", type=float, default=0.5,
                        help="seconds the broker is stopped in each period (0: no throttle)")
    parser.add_argument("--period", type=float, default=1.0, help="seconds of a throttle cycle")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="connections of the closed-loop run")
    parser.add_argument("--closed-duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=4000,
                        help="most connections of the open-loop runs")
    parser.add_argument("--drain", type=float, default=15.0)
    parser.add_argument("--sample", type=float, default=1.0, help="seconds between RSS samples")
    parser.add_argument("--shared-broker", action="store_true",
                        help="pause the broker of 'stripe-streams services' instead of one of "
                        "the bench's own")
    args = parser.parse_args()
    if not 0 <= args.pause < args.period:
        parser.error("--pause must be at least 0 and less than --period")

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # So that a SIGTERM, like Ctrl-C, runs every finally (the broker is resumed there).
    signal.signal(signal.SIGTERM, interrupted)
    smallest, largest = (int(kb) * 1000 for kb in args.sizes.split(","))
    bodies = large_events(args.events, smallest, largest)
    sizes = [len(body) for body in bodies]
    settings = Settings.from_env()
    broker = shared_broker if args.shared_broker else own_broker
    with broker(settings) as (bootstrap, pids):
        console.print(
            f"{len(bodies)} invoice.finalized events of {min(sizes) / 1000:.0f}-"
            f"{max(sizes) / 1000:.0f} KB (mean {statistics.mean(sizes) / 1000:.0f} KB); broker "
            f"{bootstrap} (pid {', '.join(map(str, pids))}, "
            f"{'shared' if args.shared_broker else 'of the bench alone'}), stopped "
            f"{args.pause:g} s of every {args.period:g} s during the runs"
        )
        sustainable, closed = measure_sustainable(args, bodies, bootstrap, pids)
        rate = args.rate or args.factor * sustainable
        console.print(f"offering {rate:,.0f} requests/s ({rate / sustainable:.1f} x "
                      f"{sustainable:,.0f}/s) for {args.duration:g} s a run")
        runs: list[Run] = []
        order = list(VARIANTS)
        for _ in range(args.repeats):
            for name, queue_bytes in order:
                runs.append(overload_run(args, bodies, bootstrap, pids, name, queue_bytes, rate))
                report_run(runs[-1])
            order.reverse()
    report(args, closed, statistics.mean(sizes), rate, runs)


def measure_sustainable(
    args: argparse.Namespace, bodies: Sequence[bytes], bootstrap: str, pids: Sequence[int]
) -> tuple[float, list[tuple[str, Tally, Usage]]]:
    """Closed-loop runs of one default gateway: unthrottled, then throttled (the sustainable)."""
    prefix = f"bench-overload-{uuid.uuid4().hex[:8]}"
    port = free_port()
    process = start_gateway(gateway_env(bootstrap, prefix, None), port)
    runs = []
    try:
        for name, pause in (("broker never stopped", 0.0), ("broker throttled", args.pause)):
            requests = http_requests(bodies)
            uvloop.run(closed_loop(port, requests, args.concurrency, 2.0))  # warm-up
            with throttled(pids, pause, args.period), Meter(process.pid, pids) as meter:
                tally = uvloop.run(
                    closed_loop(port, requests, args.concurrency, args.closed_duration)
                )
            runs.append((name, tally, meter.usage))
    finally:
        stop_gateway(process)
        uvloop.run(delete_topics(bootstrap, prefix))
    _, tally, usage = runs[-1]
    return tally.ok / usage.seconds, runs


def overload_run(
    args: argparse.Namespace, bodies: Sequence[bytes], bootstrap: str, pids: Sequence[int],
    name: str, queue_bytes: int | None, rate: float,
) -> Run:
    """One fresh gateway offered ``rate`` requests/s for ``args.duration`` s, broker throttled."""
    prefix = f"bench-overload-{uuid.uuid4().hex[:8]}"
    port = free_port()
    process = start_gateway(gateway_env(bootstrap, prefix, queue_bytes), port)
    # Signed now: a run must not outlive the signatures' five-minute tolerance.
    requests = http_requests(bodies)
    try:
        uvloop.run(closed_loop(port, requests, 8, 1.0))  # warm-up
        with (
            throttled(pids, args.pause, args.period),
            Meter(process.pid, pids) as meter,
            RssSampler(process.pid, args.sample) as sampler,
        ):
            tally = uvloop.run(open_loop(
                port, requests, rate, args.duration, args.connections, args.drain
            ))
        hwm = memory_mib(process.pid, "VmHWM") if process.poll() is None else float("nan")
    finally:
        exit_note = stop_gateway(process)
        uvloop.run(delete_topics(bootstrap, prefix))
    log_text = gateway_log(port).read_text(errors="replace")
    return Run(
        name, rate, args.duration, tally, meter.usage, sampler.samples, hwm,
        log_text.count("gateway shedding load:"),
        sum(1 for line in log_text.splitlines()
            if "Traceback" in line or " ERROR " in line or "CRITICAL" in line),
        exit_note,
    )


def report_run(run: Run) -> None:
    tally = run.tally
    every_ten = " ".join(f"{rss:,.0f}" for at, rss in run.rss if round(at) % 10 == 0)
    console.print(
        f"  {run.variant}: {tally.ok / run.duration:,.0f} ok/s, {tally.shed / run.duration:,.0f} "
        f"shed/s, {tally.timed_out} timed out, {tally.lost} lost, {tally.unanswered} "
        f"unanswered; RSS MiB every 10 s: {every_ten}; VmHWM {run.hwm:,.0f} MiB"
    )


def report(
    args: argparse.Namespace, closed: list[tuple[str, Tally, Usage]], mean_size: float,
    rate: float, runs: list[Run],
) -> None:
    table = Table(title=f"sustainable rate: closed loop, {args.concurrency} connections, "
                  f"{args.closed_duration:g} s, one gateway, default bound")
    for column in ("broker", "200/s", "MB/s", "p50 ms", "p99 ms", "other answers",
                   "gw µs/req", "broker µs/req", "busy cores", "others", "load avg"):
        table.add_column(column, justify="right")
    for name, tally, usage in closed:
        ok_rate = tally.ok / usage.seconds
        table.add_row(
            name, f"{ok_rate:,.0f}", f"{ok_rate * mean_size / 1e6:,.0f}",
            f"{percentile(tally.ok_latencies, 0.5):,.1f}",
            f"{percentile(tally.ok_latencies, 0.99):,.1f}",
            _others(tally) or "-",
            _per(usage.gateway_cpu, tally.answered), _per(usage.broker_cpu, tally.ok),
            f"{usage.busy_cores:.2f}", f"{usage.others:.2f}", f"{usage.load_average:.1f}",
        )
    console.print(table)
    for name, _ in VARIANTS:
        variant_table(name, [run for run in runs if run.variant == name], rate)


def variant_table(name: str, runs: list[Run], rate: float) -> None:
    table = Table(title=f"{name}: {rate:,.0f} requests/s offered for "
                  f"{runs[0].duration:g} s, broker throttled")
    table.add_column("measurement")
    for n in range(len(runs)):
        table.add_column(f"run {n + 1}", justify="right")
    table.add_column("median", justify="right")

    def row(label: str, value: Callable[[Run], float], form: str = "{:,.0f}") -> None:
        values = [value(run) for run in runs]
        table.add_row(label, *(form.format(v) for v in values),
                      form.format(statistics.median(values)))

    row("offered/s", lambda r: r.tally.offered / r.duration)
    row("answered 200/s", lambda r: r.tally.ok / r.duration)
    row("503 shed (Retry-After, closed)/s", lambda r: r.tally.shed / r.duration)
    row("503 Kafka did not acknowledge in time/s", lambda r: r.tally.timed_out / r.duration)
    row("503 without Retry-After", lambda r: r.tally.without_retry_after)
    row("shed 503 leaving the connection open", lambda r: r.tally.shed_kept_open)
    table.add_row("other statuses", *(_others(r.tally) or "-" for r in runs), "")
    row("closed or reset before an answer", lambda r: r.tally.lost)
    row("connection refused", lambda r: r.tally.connect_failed)
    row("unanswered after the drain", lambda r: r.tally.unanswered)
    row("200 latency p50 ms", lambda r: percentile(r.tally.ok_latencies, 0.5), "{:,.1f}")
    row("200 latency p99 ms", lambda r: percentile(r.tally.ok_latencies, 0.99), "{:,.1f}")
    row("503 latency p50 ms", lambda r: percentile(r.tally.unavailable_latencies, 0.5),
        "{:,.1f}")
    row("RSS start MiB", lambda r: r.rss[0][1] if r.rss else float("nan"))
    row("RSS median MiB", lambda r: statistics.median(r.rss_in(r.duration)))
    row("RSS at the end of the offering MiB", lambda r: r.rss_in(r.duration)[-1])
    row("RSS max MiB", lambda r: max(rss for _, rss in r.rss))
    row("VmHWM MiB", lambda r: r.hwm)
    row("connections opened", lambda r: r.tally.connections_opened)
    row("most connections open", lambda r: r.tally.most_connections)
    row("requests that waited for a free connection", lambda r: r.tally.waited_for_connection)
    row("gateway CPU µs/answer", lambda r: r.usage.gateway_cpu / max(1, r.tally.answered) * 1e6)
    row("broker CPU µs/200", lambda r: r.usage.broker_cpu / max(1, r.tally.ok) * 1e6)
    row("load generator CPU µs/offered", lambda r: r.usage.generator_cpu / r.tally.offered * 1e6)
    row("busy cores (2.00 = both)", lambda r: r.usage.busy_cores, "{:.2f}")
    row("of them others'", lambda r: r.usage.others, "{:.2f}")
    row("load average, 1 min", lambda r: r.usage.load_average, "{:.1f}")
    row("'shedding load' log lines", lambda r: r.shedding_started)
    row("error lines in the gateway log", lambda r: r.error_lines)
    console.print(table)
    for n, run in enumerate(runs, 1):
        for reason, count in run.tally.lost_reasons.most_common():
            console.print(f"run {n}: {count} x {reason}")
        if run.exit_note:
            console.print(f"[bold red]{run.variant}: the gateway {run.exit_note}[/bold red]")


def _others(tally: Tally) -> str:
    return ", ".join(f"{status}: {count}" for status, count in sorted(tally.other.items()))


def _per(cpu: float, count: int) -> str:
    return f"{cpu / count * 1e6:,.0f}" if count else "-"


if __name__ == "__main__":
    main()
