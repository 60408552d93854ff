"""Soak: a steady stream of signed webhooks through the gateway while processes and services fail.

    stripe-streams services up                      # (--brokers 3 where available)
    .venv/bin/python bench/soak.py [--rate 2000] [--duration 600] [--brokers 1|3] [--workers 2]
                                   [--faults worker-kill,broker-kill,...|none] [--poison 20]
                                   [--warmup 60] [--no-rebuild] [--keep]
    .venv/bin/python bench/soak.py --search 1500,2000,2500,3000 --step-duration 60

Runs on the services of ``stripe-streams services`` (the brokers and PostgreSQL it reports in
``services status``), with a topic prefix and a database of its own (created, migrated with
``stripe-streams migrate``, dropped at the end unless ``--keep``), the gateway and ``--workers``
workers in one consumer group.

The load: customer lifecycles from ``EventFactory`` (customer, card, subscription and its item,
invoices, charges, payment intents), about ``--duplicates`` of them posted a second time 0-2 s
later, ``--reordered`` of them posted 0.1-1 s late (often after their object's next event, which
makes them stale), and ``--poison`` events a handler rejects (a customer whose ``balance`` is
``"a lot"``) spread over the run. A separate process offers them at ``--rate`` requests/s (open
loop, keep-alive connections, at most ``--connections`` requests in flight), each signed when it
is sent, and records every request: when it was due, sent and answered, and the status. Any
answer but 200 (a 503 while Kafka does not acknowledge) and any connection error is counted and
retried as Stripe retries a delivery (after 1, 2, 4, ... s, at most 60 s, with jitter) until it
is answered 200; when the offering ends, outstanding retries get ``--drain`` seconds.

The faults, one after the other, from ``--warmup`` seconds on, evenly spaced over the rest of the
run (the order of ``--faults``):

* ``worker-kill``: SIGKILL of one worker, started again at once (default: twice);
* ``broker-kill``: SIGKILL of one broker, started again with ``services up``;
* ``leader-stop``: SIGTERM of the broker leading partition 0 of the log, started again;
* ``postgres-restart``: PostgreSQL stopped (fast shutdown) and started again;
* ``gateway-restart``: SIGTERM of the gateway during load (in-flight requests finish), then a
  new gateway on the same port;
* ``postgres-pause``: SIGSTOP of the postmaster and all its backends for ``--pause`` (20) s.

After the offering, once ``ops.event_log`` stops changing, ``soak_check`` judges the outcome from
outside the code under test (see its docstring), then ``stripe-streams rebuild`` must give tables
equal to the live ones.

Latency is received-to-projected, ``processed_at - received_at`` of ``ops.event_log``, by the
second an event was received. Steady state is from 10 s after the start to the first fault. A
fault's recovery is the time from its start to the first of 5 seconds in a row whose p99 is at
most the recovery bound: the larger of 500 ms (the target) and 1.25 times the steady p99, since
one second's p99 scatters around the p99 of many. "p99 30 s on" covers 30 s after the fault
began to the next fault. "lost" counts the events first answered 200 in a fault's window that
the checker found missing. Error lines (ERROR, FATAL, CRITICAL, PANIC, Traceback) are counted
in each process's log between one fault and the next; the broker and PostgreSQL logs are
shared with whatever else uses those services.

``--search`` runs the pipeline without faults at each rate for ``--step-duration`` seconds (fresh
topics and database each), in the order given, until two rates in a row fail (a p99 after the
first 10 s of 1 s or more, or an event lost or left undelivered); it reports the highest rate
held.

The machine is shared: every table says how busy it was (2.00 busy cores = both cores) and the
CPU each process spent per event, from ``/proc/<pid>/stat``. The processes' logs, every
request's answer and the p50 and p99 of each second (``latency.csv``) stay in the run's
directory under /tmp/stripe-streams-bench.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import heapq
import hmac
import itertools
import math
import mmap
import multiprocessing
import os
import pickle
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from array import array
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg
import uvloop
from aiokafka import AIOKafkaClient, TopicPartition
from pipeline import LOG_DIR, busy_ticks, free_port, lifecycle_stream, percentile
from pipeline import stop as stop_process
from psycopg import sql
from rich.console import Console
from rich.table import Table
from soak_check import SentEvents, Verdict, judge, rebuild_and_compare

from streams.devtools.samples import EventFactory
from streams.devtools.services import LocalServices
from streams.log.topics import delete_topics, ensure_topics, worker_topics
from streams.settings import Secret, Settings

SECRET = Secret("whsec_bench_soak")
FAULTS = ("worker-kill", "broker-kill", "gateway-restart", "leader-stop", "postgres-restart",
          "worker-kill", "postgres-pause")
TARGET_P99_MS = 500.0
SEARCH_P99_MS = 1000.0
RECOVERY_SLACK = 1.25
RECOVERED_SECONDS = 5
AFTER_FAULT = 30.0
START_UP = 10.0
PERIODS = 2
LIVES = 500
"""Customers live at once in the generated stream, so one object's events lie far apart."""
REQUEST_TIMEOUT = 30.0
IDLE_CLOSE = 2.0
"""Seconds after which an idle connection is dropped rather than reused: the gateway closes
keep-alive connections idle for 5 s, and a request racing that close would count as an error."""
ERROR_LINE = re.compile(rb"\b(ERROR|FATAL|CRITICAL|PANIC)\b|Traceback")
STATUS_LINE = re.compile(
    r"^(?P<name>kafka\S*|postgres)\s+(?P<address>\S+:\d+)\s+"
    r"(?:pid (?P<pid>\d+)\s+running|stopped)(?:.*?\blog (?P<log>\S+))?"
)
console = Console(width=170)


@dataclass(frozen=True)
class Bodies:
    """Raw event bodies: lifecycle events in a file (by offset and length), then extra ones."""

    path: Path
    offsets: array[int]
    lengths: array[int]
    extra: list[bytes]

    def reader(self) -> Callable[[int], bytes]:
        with self.path.open("rb") as file:
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        count = len(self.offsets)

        def body(n: int) -> bytes:
            if n >= count:
                return self.extra[n - count]
            return mapped[self.offsets[n] : self.offsets[n] + self.lengths[n]]

        return body


def lifecycle_file(directory: Path, count: int, seed: int) -> tuple[Path, Path]:
    """Bodies and an index of ``count`` lifecycle events, generated once per seed and size.

    Building an event costs about 180 us of CPU, which the load generator must not spend
    during the run; a file of at least ``count`` events of the same seed is reused.
    """
    directory.mkdir(parents=True, exist_ok=True)
    bodies = directory / f"soak-events-{seed}.bin"
    index = directory / f"soak-events-{seed}.tsv"
    done = directory / f"soak-events-{seed}.count"
    if done.exists() and int(done.read_text()) >= count:
        return bodies, index
    done.unlink(missing_ok=True)
    console.print(f"generating {count:,} lifecycle events into {bodies} ...")
    with bodies.open("wb") as out, index.open("w") as lines:
        for event in itertools.islice(lifecycle_stream(seed, PERIODS, LIVES), count):
            body = orjson.dumps(event)
            obj = event["data"]["object"]
            items = obj.get("items", {}).get("data", []) if obj["object"] == "subscription" else []
            out.write(body)
            lines.write(f"{event['id']}\t{obj['id']}\t{obj['object']}\t{event['created']}\t"
                        f"{len(body)}\t{','.join(item['id'] for item in items)}\n")
    done.write_text(str(count))
    return bodies, index


def poison_events(count: int, seed: int) -> list[bytes]:
    """Customers whose balance is not a number: the handler rejects them on every attempt."""
    factory = EventFactory(seed=seed + 1)
    made = []
    for n in range(count):
        customer = dict(factory.customer(created=factory.advance()))
        customer.update(name=f"Poison {n}", balance="a lot")
        made.append(orjson.dumps(factory.event("customer.updated", customer)))
    return made


def load_events(bodies: Path, index: Path, count: int, poison: list[bytes]) -> tuple[
    SentEvents, Bodies
]:
    """The first ``count`` events of the file, then the poison events, indexed alike."""
    ids: list[str] = []
    object_ids: list[str] = []
    object_types: list[str] = []
    created = array("q")
    offsets, lengths = array("q"), array("q")
    children: dict[int, list[str]] = {}
    position = 0
    with index.open() as lines:
        for n, line in enumerate(itertools.islice(lines, count)):
            event_id, object_id, object_type, created_at, length, items = line.rstrip(
                "\n").split("\t")
            ids.append(event_id)
            object_ids.append(object_id)
            object_types.append(sys.intern(object_type))
            created.append(int(created_at))
            offsets.append(position)
            lengths.append(int(length))
            position += int(length)
            if items:
                children[n] = items.split(",")
    for body in poison:
        event = orjson.loads(body)
        ids.append(event["id"])
        object_ids.append(event["data"]["object"]["id"])
        object_types.append("customer")
        created.append(event["created"])
    store = Bodies(bodies, offsets, lengths, poison)
    sent = SentEvents(ids, object_ids, object_types, created, children,
                      frozenset(range(len(offsets), len(ids))), store.reader())
    return sent, store


def build_plan(
    slots: int, rate: float, poison: Sequence[int], duplicates: float, reordered: float,
    seed: int,
) -> array[int]:
    """The event index sent in each slot, one slot every 1/rate s.

    Events are taken in order; a share is held back 0.1-1 s (sent after later ones), a share
    sent again 0-2 s later; the poison events are spread evenly.
    """
    pick = random.Random(seed)
    later: list[tuple[int, int, int]] = []
    poison_at = {int(slots * (k + 0.5) / len(poison)): n for k, n in enumerate(poison)}
    plan = array("i")
    taken = 0
    while len(plan) < slots:
        slot = len(plan)
        if slot in poison_at:
            plan.append(poison_at[slot])
            continue
        if later and later[0][0] <= slot:
            plan.append(heapq.heappop(later)[2])
            continue
        n, taken = taken, taken + 1
        draw = pick.random()
        if draw < reordered:
            heapq.heappush(later, (slot + pick.randint(int(rate / 10) + 1, int(rate) + 1), n, n))
            continue
        plan.append(n)
        if draw < reordered + duplicates:
            heapq.heappush(later, (slot + pick.randint(1, int(2 * rate) + 1), n, n))
    return plan


@dataclass(frozen=True)
class LoadSpec:
    """What the load generator sends, where, when, and where it writes its answers."""

    port: int
    rate: float
    start_at: float
    plan: array[int]
    bodies: Bodies
    secret: str
    connections: int
    drain: float
    answers: Path


@dataclass
class Answers:
    """Every request the generator sent: its event, attempt, times (Unix s) and status.

    ``due`` is when the request should have left (its slot, or its retry's time), ``sent`` when
    it got a connection, ``done`` when it was answered or failed. Status 0: a connection error
    or no answer within REQUEST_TIMEOUT. ``undelivered``: events never answered 200.
    """

    event: array[int] = field(default_factory=lambda: array("i"))
    attempt: array[int] = field(default_factory=lambda: array("h"))
    due: array[float] = field(default_factory=lambda: array("d"))
    sent: array[float] = field(default_factory=lambda: array("d"))
    done: array[float] = field(default_factory=lambda: array("d"))
    status: array[int] = field(default_factory=lambda: array("h"))
    undelivered: list[int] = field(default_factory=list)

    def accepted(self) -> Counter[int]:
        return Counter(e for e, s in zip(self.event, self.status, strict=True) if s == 200)


def signed(body: bytes, key: bytes) -> bytes:
    """The webhook request of ``body``, signed now as Stripe signs (``signature_header``).

    ``hmac.digest`` is the one-shot C path of the same HMAC-SHA256: the load generator signs
    every request as it leaves, and the HMAC object of ``signature_header`` costs it more than
    the rest of a request.
    """
    moment = int(time.time())
    mac = hmac.digest(key, b"%d." % moment + body, "sha256").hex()
    return (b"POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nStripe-Signature: t=%d,v1=%s\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (moment, mac.encode(), len(body), body))


def backoff(attempt: int, pick: random.Random) -> float:
    """Seconds before retrying after the ``attempt``-th failure: 1, 2, 4 ... 60, +-50 %."""
    return min(60.0, 2.0 ** (attempt - 1)) * pick.uniform(0.5, 1.5)


class Offering:
    """The plan's slots and the retries due, earliest first.

    Each slot starts a delivery of its event, which ends when it is answered 200; an event
    still in a delivery when the drain ends is undelivered.
    """

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.next_slot = 0
        self.retries: list[tuple[float, int, int]] = []
        self.delivering: Counter[int] = Counter()
        self.deadline = spec.start_at + len(spec.plan) / spec.rate + spec.drain
        self.pick = random.Random(spec.start_at)

    def due(self) -> float:
        """When the earliest request is due; infinity when none is planned or retried."""
        spec = self.spec
        slot = (spec.start_at + self.next_slot / spec.rate
                if self.next_slot < len(spec.plan) else math.inf)
        return min(slot, self.retries[0][0]) if self.retries else slot

    def take(self) -> tuple[float, int, int]:
        """The earliest request: (when it is due, event, attempt)."""
        if self.retries and self.retries[0][0] <= self.due():
            return heapq.heappop(self.retries)
        due, event = self.due(), self.spec.plan[self.next_slot]
        self.next_slot += 1
        self.delivering[event] += 1
        return due, event, 1

    def answered(self, event: int, attempt: int, status: int) -> None:
        # Stripe retries every answer but a 2xx; 0 stands for a connection error or a timeout.
        if status != 200:
            heapq.heappush(self.retries, (time.time() + backoff(attempt, self.pick), event,
                                          attempt + 1))
            return
        self.delivering[event] -= 1
        if not self.delivering[event]:
            del self.delivering[event]

    @property
    def over(self) -> bool:
        planned = self.next_slot >= len(self.spec.plan)
        return planned and (not self.delivering or time.time() > self.deadline)


class Connections:
    """Up to ``limit`` keep-alive connections, each sending one request at a time.

    The connection that answered last takes the next request, so a steady load keeps a few
    connections busy and opens more only while answers are slow; a request waits while all
    ``limit`` are busy.
    """

    def __init__(self, limit: int) -> None:
        self.idle: list[asyncio.Future[tuple[float, int, int] | None]] = []
        self.waiting: deque[tuple[float, int, int]] = deque()
        self.limit = limit
        self.opened = 0
        self.closed = False

    def hand(self, request: tuple[float, int, int]) -> bool:
        """Give the request to an idle connection; False when every connection is busy."""
        if self.idle:
            self.idle.pop().set_result(request)
            return True
        self.waiting.append(request)
        return False

    async def next(self) -> tuple[float, int, int] | None:
        if self.waiting:
            return self.waiting.popleft()
        if self.closed:
            return None
        ready: asyncio.Future[tuple[float, int, int] | None] = (
            asyncio.get_running_loop().create_future())
        self.idle.append(ready)
        return await ready

    def close(self) -> None:
        self.closed = True
        for ready in self.idle:
            ready.set_result(None)
        self.idle.clear()


async def offer(spec: LoadSpec) -> Answers:
    """Send every slot of the plan at its time, retry what failed, until all are answered 200."""
    body = spec.bodies.reader()
    key = spec.secret.encode()
    offering = Offering(spec)
    connections = Connections(spec.connections)
    answers = Answers()
    running: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()

    async def connection() -> None:
        stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        used = 0.0
        while (request := await connections.next()) is not None:
            due, event, attempt = request
            sent = time.time()
            status = 0
            timer = None
            try:
                if stream is None or time.monotonic() - used > IDLE_CLOSE:
                    if stream is not None:
                        stream[1].close()
                    stream = None
                    stream = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", spec.port), REQUEST_TIMEOUT)
                reader, writer = stream
                # Cheaper than asyncio.timeout: an unanswered request's connection is dropped.
                timer = loop.call_later(REQUEST_TIMEOUT, writer.transport.abort)
                writer.write(signed(body(event), key))
                head = (await reader.readuntil(b"\r\n\r\n")).lower()
                start = head.find(b"content-length:") + 15
                await reader.readexactly(int(head[start : head.find(b"\r\n", start)]))
                status = int(head[9:12])
                used = time.monotonic()
                if b"connection: close" in head:
                    writer.close()
                    stream = None
            except (OSError, TimeoutError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError, ValueError):
                if stream is not None:
                    stream[1].close()
                stream = None
            if timer is not None:
                timer.cancel()
            answers.event.append(event)
            answers.attempt.append(attempt)
            answers.due.append(due)
            answers.sent.append(sent)
            answers.done.append(time.time())
            answers.status.append(status)
            offering.answered(event, attempt, status)
        if stream is not None:
            stream[1].close()

    while not offering.over:
        # Short sleeps: a retry due earlier than the next planned request may come meanwhile.
        wait = offering.due() - time.time()
        if wait > 0:
            await asyncio.sleep(min(wait, 0.05))
            continue
        if not connections.hand(offering.take()) and connections.opened < connections.limit:
            connections.opened += 1
            running.append(asyncio.create_task(connection()))
    connections.close()
    await asyncio.gather(*running)
    answers.undelivered = sorted(offering.delivering)
    return answers


def offer_process(spec: LoadSpec) -> None:
    """The load generator's process: offer the plan, then write the answers to a file."""
    gc.freeze()
    answers = uvloop.run(offer(spec))
    with spec.answers.open("wb") as out:
        # Plain arrays, which load in any process whatever name this module was run under.
        pickle.dump(vars(answers), out)


@dataclass(frozen=True)
class Node:
    """One service node as ``services status`` shows it: name, address, pid, log file."""

    name: str
    address: str
    pid: int | None
    log: Path | None


class Brokers(Protocol):
    """The Kafka brokers the soak runs on, which the broker faults stop and start."""

    def nodes(self) -> list[Node]: ...

    def start_stopped(self) -> None: ...


class Postgres(Protocol):
    """The PostgreSQL server the soak runs on, which the database faults restart and pause."""

    log: Path | None

    def pid(self) -> int | None: ...

    def restart(self) -> None: ...


def services_status(brokers: int) -> list[Node]:
    """The nodes ``stripe-streams services status`` lists, one line each."""
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "services", "status"],
        env=services_env(brokers), capture_output=True, text=True, timeout=120, check=True,
    )
    nodes = []
    for line in done.stdout.splitlines():
        found = STATUS_LINE.match(line)
        if found:
            nodes.append(Node(
                found["name"], found["address"], int(found["pid"]) if found["pid"] else None,
                Path(found["log"]) if found["log"] else None,
            ))
    return nodes


def services_env(brokers: int) -> dict[str, str]:
    return {**os.environ, "STRIPE_STREAMS_KAFKA_BROKERS": str(brokers)}


@dataclass
class ServiceBrokers:
    """The brokers of ``stripe-streams services``, restarted with ``services up``."""

    count: int

    def nodes(self) -> list[Node]:
        return [node for node in services_status(self.count) if node.name.startswith("kafka")]

    def start_stopped(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "streams.cli", "services", "up"], env=services_env(self.count),
            capture_output=True, timeout=600, check=True,
        )


class ServicePostgres:
    """The PostgreSQL cluster of ``stripe-streams services``."""

    def __init__(self) -> None:
        self.local = LocalServices.from_settings(Settings.from_env()).postgres
        self.log: Path | None = self.local.log_file

    def pid(self) -> int | None:
        return self.local.pid()

    def restart(self) -> None:
        self.local.down()
        self.local.up()


def http_get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as probe:
        probe.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := probe.recv(65536):
            answer += chunk
    return answer


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.3)
    raise RuntimeError(f"{what}: not within {timeout:.0f} s")


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until every thread of the process is gone; False if one runs after ``timeout`` s.

    A killed JVM's main thread turns zombie while its other threads still hold its sockets,
    so a zombie counts as gone only once it is the last thread left.
    """
    deadline = time.monotonic() + timeout
    while True:
        # A child of this process stays a zombie until it is waited for.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            threads = len(os.listdir(f"/proc/{pid}/task"))
        except (OSError, IndexError):
            return True
        if state == "Z" and threads <= 1:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


class Pipeline:
    """The gateway and the workers of one soak, as processes with a log file each."""

    def __init__(self, settings: Settings, run_dir: Path, workers: int,
                 gateway_workers: int) -> None:
        self.run_dir = run_dir
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "DATABASE_URL": settings.database_url,
            "STRIPE_STREAMS_TOPIC_PREFIX": settings.topic_prefix,
            "STRIPE_STREAMS_PARTITIONS": str(settings.topic_partitions),
            "STRIPE_STREAMS_GATEWAY_WORKERS": str(gateway_workers),
            "STRIPE_WEBHOOK_SECRETS": SECRET.reveal(),
        }
        self.port = free_port()
        self.gateway: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes] | None] = [None] * workers
        self.worker_ports = [0] * workers
        self.logs: dict[str, list[Path]] = {"gateway": [], "workers": []}

    def _start(self, role: str, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        path = self.run_dir / f"{name}.log"
        self.logs[role].append(path)
        with path.open("ab") as log:
            return subprocess.Popen([sys.executable, "-m", "streams.cli", *command],
                                    env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def start_gateway(self, timeout: float = 120) -> None:
        name = f"gateway-{len(self.logs['gateway'])}"
        self.gateway = gateway = self._start(
            "gateway", name, ["gateway", "--host", "127.0.0.1", "--port", str(self.port)])

        def ready() -> bool:
            if gateway.poll() is not None:
                raise RuntimeError(f"the gateway exited; see {self.logs['gateway'][-1]}")
            return http_get(self.port, "/readyz").startswith(b"HTTP/1.1 200")

        wait_for(ready, timeout, "gateway ready")

    def stop_gateway(self) -> None:
        """SIGTERM: the gateway stops accepting, finishes in-flight requests, then exits."""
        assert self.gateway is not None
        self.gateway.send_signal(signal.SIGTERM)
        self.gateway.wait(timeout=120)

    def start_worker(self, n: int) -> None:
        self.worker_ports[n] = free_port()
        self.workers[n] = self._start("workers", f"worker-{n}-{len(self.logs['workers'])}",
                                      ["worker", "--web-port", str(self.worker_ports[n])])

    def kill_worker(self, n: int) -> int:
        worker = self.workers[n]
        assert worker is not None
        worker.kill()
        worker.wait(timeout=60)
        return worker.pid

    def wait_workers(self, timeout: float) -> None:
        """Until every worker reports a consumer lag: each holds its partitions."""
        for n in range(len(self.workers)):
            wait_for(partial(self._holds_partitions, n), timeout, f"worker {n} holding partitions")

    def _holds_partitions(self, n: int) -> bool:
        worker = self.workers[n]
        if worker is None or worker.poll() is not None:
            raise RuntimeError(f"worker {n} exited; see {self.logs['workers'][-1]}")
        return b"stripe_streams_consumer_lag{" in http_get(self.worker_ports[n], "/metrics")

    def pids(self) -> dict[str, list[int]]:
        return {
            "gateway": [self.gateway.pid] if self.gateway else [],
            "workers": [w.pid for w in self.workers if w is not None and w.poll() is None],
        }

    def stop(self) -> None:
        for process in [self.gateway, *self.workers]:
            if process is not None and process.poll() is None:
                stop_process(process)


@dataclass(frozen=True)
class Sample:
    at: float
    busy: int
    total: int
    load: float


class Meter:
    """CPU ticks of each role's processes and the machine's load, sampled every second.

    Roles are the pids ``roles`` returns at each sample (and their children), plus
    ``postgres``: the postmaster, the backends of ``database`` and the server's shared
    processes (checkpointer, WAL writer, ...), not the backends of other databases. Without a
    known postmaster, every process whose title says postgres is taken. A process counts from
    its first sample, or from zero when it started after the meter; a killed one up to its last
    sample.
    """

    SHARED = (b"postgres: checkpointer", b"postgres: background writer", b"postgres: walwriter",
              b"postgres: autovacuum launcher", b"postgres: logical replication launcher")

    def __init__(self, roles: Callable[[], Mapping[str, Sequence[int]]], database: str,
                 postmaster: Callable[[], int | None]) -> None:
        self.roles = roles
        self.postmaster = postmaster
        self.database = f" {database} ".encode()
        self.hertz = os.sysconf("SC_CLK_TCK")
        self.began = float(Path("/proc/uptime").read_text().split()[0]) * self.hertz
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.role: dict[int, str] = {}
        self.samples: list[Sample] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Meter:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._done.wait(1.0):
            self.sample()

    def sample(self) -> None:
        owner = {pid: role for role, pids in self.roles().items() for pid in pids}
        postmaster = self.postmaster()
        if postmaster is not None:
            owner[postmaster] = "postgres"
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parent = int(fields[1])
                role = owner.get(pid) or self.role.get(pid)
                if role is None and parent != postmaster:
                    role = owner.get(parent)
                if role is None and postmaster in (None, parent):
                    role = self._postgres(entry, postmaster)
            except (OSError, IndexError):
                continue
            if role is None:
                continue
            ticks = int(fields[11]) + int(fields[12])
            if pid not in self.first:
                self.first[pid] = 0 if int(fields[19]) > self.began else ticks
                self.role[pid] = role
            self.last[pid] = ticks
        busy, total = busy_ticks()
        load = float(Path("/proc/loadavg").read_text().split()[0])
        self.samples.append(Sample(time.time(), busy, total, load))

    def _postgres(self, entry: Path, postmaster: int | None) -> str | None:
        title = (entry / "cmdline").read_bytes().rstrip(b"\0")
        if title.startswith(b"postgres:") and (
            self.database in title or title.startswith(self.SHARED)
        ):
            return "postgres"
        if postmaster is None and title.split(b"\0")[0].endswith(b"bin/postgres"):
            return "postgres"
        return None

    def seconds(self) -> dict[str, float]:
        spent: Counter[str] = Counter()
        for pid, last in self.last.items():
            spent[self.role[pid]] += last - self.first[pid]
        return {role: ticks / self.hertz for role, ticks in spent.items()}

    def busy_cores(self, since: float, until: float) -> float:
        inside = [s for s in self.samples if since <= s.at <= until]
        if len(inside) < 2:
            return math.nan
        first, last = inside[0], inside[-1]
        return (os.cpu_count() or 1) * (last.busy - first.busy) / max(1, last.total - first.total)

    def load(self, since: float, until: float) -> tuple[float, float]:
        loads = [s.load for s in self.samples if since <= s.at <= until] or [math.nan]
        return statistics.fmean(loads), max(loads)


def log_sizes(logs: Mapping[str, Sequence[Path]]) -> dict[Path, int]:
    return {path: path.stat().st_size if path.exists() else 0
            for paths in logs.values() for path in paths}


def error_lines(logs: Mapping[str, Sequence[Path]], since: Mapping[Path, int],
                until: Mapping[Path, int]) -> dict[str, int]:
    """Error lines each role's logs gained between two snapshots of their sizes."""
    found: dict[str, int] = {}
    for role, paths in logs.items():
        found[role] = 0
        for path in paths:
            start, end = since.get(path, 0), until.get(path, 0)
            if end <= start or not path.exists():
                continue
            with path.open("rb") as log:
                log.seek(start)
                chunk = log.read(end - start)
            found[role] += sum(1 for line in chunk.splitlines() if ERROR_LINE.search(line))
    return found


@dataclass
class FaultRun:
    """One injected fault: when it began and ended, what was done, and the logs' sizes then."""

    name: str
    began: float
    ended: float = 0.0
    detail: str = ""
    logs_at: dict[Path, int] = field(default_factory=dict)


@dataclass
class Soak:
    """A running soak: where it runs, its processes, and what the faults need to know."""

    settings: Settings
    brokers: Brokers
    postgres: Postgres | None
    pipeline: Pipeline
    pause: float
    broker_pids: list[int] = field(default_factory=list)
    broker_logs: list[Path] = field(default_factory=list)
    killed_workers: int = 0

    def refresh_brokers(self) -> list[Node]:
        nodes = self.brokers.nodes()
        self.broker_pids = [node.pid for node in nodes if node.pid]
        self.broker_logs = [node.log for node in nodes if node.log]
        return nodes

    def logs(self) -> dict[str, list[Path]]:
        return {
            **self.pipeline.logs,
            "broker": self.broker_logs,
            "postgres": [self.postgres.log] if self.postgres and self.postgres.log else [],
        }

    def restart_broker(self, node: Node, sig: signal.Signals) -> str:
        assert node.pid is not None
        began = time.monotonic()
        os.kill(node.pid, sig)
        gone = wait_gone(node.pid, 180)
        stopped = time.monotonic() - began
        if not gone:
            os.kill(node.pid, signal.SIGKILL)
            wait_gone(node.pid, 60)
        self.brokers.start_stopped()
        self.refresh_brokers()
        return (f"{node.name} {node.address} pid {node.pid}: {sig.name}, gone after "
                f"{stopped:.1f} s{'' if gone else ' (then SIGKILL)'}, serving again after "
                f"{time.monotonic() - began:.1f} s")


def leader_address(bootstrap: str, topic: str) -> str:
    """host:port of the broker leading partition 0 of ``topic``."""

    async def ask() -> str:
        client = AIOKafkaClient(bootstrap_servers=bootstrap)
        await client.bootstrap()
        try:
            await client.force_metadata_update()
            leader = client.cluster.leader_for_partition(TopicPartition(topic, 0))
            broker = client.cluster.broker_metadata(leader)
            return f"{broker.host}:{broker.port}"
        finally:
            await client.close()

    return asyncio.run(ask())


def kill_worker(soak: Soak) -> str:
    n = soak.killed_workers % len(soak.pipeline.workers)
    soak.killed_workers += 1
    pid = soak.pipeline.kill_worker(n)
    soak.pipeline.start_worker(n)
    return f"worker {n} pid {pid}: SIGKILL, started again at once"


def kill_broker(soak: Soak) -> str:
    return soak.restart_broker(soak.refresh_brokers()[-1], signal.SIGKILL)


def stop_leader(soak: Soak) -> str:
    address = leader_address(soak.settings.kafka_bootstrap_servers, soak.settings.topic())
    nodes = soak.refresh_brokers()
    node = next((n for n in nodes if n.address == address), nodes[0])
    return "leader of partition 0, " + soak.restart_broker(node, signal.SIGTERM)


def restart_postgres(soak: Soak) -> str:
    assert soak.postgres is not None
    began = time.monotonic()
    soak.postgres.restart()
    return f"fast shutdown and start: {time.monotonic() - began:.1f} s"


def restart_gateway(soak: Soak) -> str:
    began = time.monotonic()
    soak.pipeline.stop_gateway()
    stopped = time.monotonic() - began
    soak.pipeline.start_gateway()
    return (f"SIGTERM: exited after {stopped:.1f} s, new gateway ready after "
            f"{time.monotonic() - began:.1f} s")


def pause_postgres(soak: Soak) -> str:
    assert soak.postgres is not None
    postmaster = soak.postgres.pid()
    assert postmaster is not None
    paused = [postmaster, *children(postmaster)]
    try:
        for pid in paused:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(soak.pause)
    finally:
        for pid in paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    return (f"SIGSTOP of the postmaster and {len(paused) - 1} processes, SIGCONT "
            f"{soak.pause:.0f} s later")


def children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            if entry.name.isdigit() and int(
                (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            ) == parent:
                found.append(int(entry.name))
    return found


INJECT: Mapping[str, Callable[[Soak], str]] = {
    "worker-kill": kill_worker,
    "broker-kill": kill_broker,
    "leader-stop": stop_leader,
    "postgres-restart": restart_postgres,
    "gateway-restart": restart_gateway,
    "postgres-pause": pause_postgres,
}
NEEDS_POSTGRES = frozenset({"postgres-restart", "postgres-pause"})


@dataclass(frozen=True)
class SoakConfig:
    """What one soak offers, for how long, and which faults it injects when."""

    rate: float = 2000.0
    duration: float = 600.0
    workers: int = 2
    gateway_workers: int = 1
    faults: tuple[str, ...] = FAULTS
    warmup: float = 60.0
    poison: int = 20
    duplicates: float = 0.01
    reordered: float = 0.01
    pause: float = 20.0
    connections: int = 512
    drain: float = 600.0
    settle: float = 900.0
    partitions: int = 6
    seed: int = 5
    rebuild: bool = True
    rebuild_timeout: float = 3600.0

    def fault_times(self) -> list[float]:
        """Seconds from the start: the first fault after the warm-up, the rest evenly spaced."""
        gap = (self.duration - self.warmup) / max(1, len(self.faults))
        return [self.warmup + k * gap for k in range(len(self.faults))]


@dataclass
class Latency:
    """Received-to-projected (ms) of every event applied, in the order they were received."""

    received: array[float]
    lag_ms: array[float]

    def between(self, since: float, until: float) -> list[float]:
        return list(self.lag_ms[bisect_left(self.received, since):
                                bisect_left(self.received, until)])

    def p99(self, since: float, until: float) -> float:
        inside = self.between(since, until)
        return percentile(inside, 0.99) if inside else math.nan

    @cached_property
    def seconds(self) -> dict[int, list[float]]:
        """The latencies of the events received in each second (Unix time) that received any."""
        seconds: dict[int, list[float]] = {}
        for at, lag in zip(self.received, self.lag_ms, strict=True):
            seconds.setdefault(int(at), []).append(lag)
        return seconds

    @cached_property
    def per_second(self) -> dict[int, float]:
        """The p99 of each second of :attr:`seconds`."""
        return {second: percentile(lags, 0.99) for second, lags in self.seconds.items()}

    def write_csv(self, path: Path, start_at: float) -> None:
        """One line a second from the start: events received, their p50 and p99 (ms)."""
        with path.open("w") as out:
            out.write("second,events,p50_ms,p99_ms\n")
            for second, lags in sorted(self.seconds.items()):
                out.write(f"{second - start_at:.0f},{len(lags)},{percentile(lags, 0.5):.0f},"
                          f"{self.per_second[second]:.0f}\n")


@dataclass
class SoakResult:
    """Everything one soak measured and the checker's verdict."""

    config: SoakConfig
    brokers: int
    start_at: float
    faults: list[FaultRun]
    answers: Answers
    verdict: Verdict
    latency: Latency
    cpu_seconds: dict[str, float]
    meter: Meter
    errors: list[dict[str, int]]
    """Error lines per role: before the first fault, then during each fault's window."""
    applied: int
    settled_after: float

    @property
    def end_at(self) -> float:
        return self.start_at + self.config.duration

    def window(self, k: int) -> tuple[float, float]:
        """From the k-th fault's start to the next one's (or the end of the offering)."""
        later = [f.began for f in self.faults[k + 1 :]] or [self.end_at]
        return self.faults[k].began, later[0]

    def steady(self) -> list[float]:
        """Latencies of the events received from START_UP s on, up to the first fault."""
        until = self.faults[0].began if self.faults else self.end_at
        return self.latency.between(self.start_at + START_UP, until)

    def steady_p99(self) -> float:
        lags = self.steady()
        return percentile(lags, 0.99) if lags else math.nan

    def recovery_bound(self) -> float:
        return max(TARGET_P99_MS, RECOVERY_SLACK * self.steady_p99())

    def recovery(self, k: int) -> float | None:
        """Seconds from the fault's start to the first of RECOVERED_SECONDS good seconds."""
        since, until = self.window(k)
        seconds = self.latency.per_second
        bound = self.recovery_bound()
        run = 0
        for second in range(int(since), int(until)):
            p99 = seconds.get(second)
            run = run + 1 if p99 is not None and p99 <= bound else 0
            if run == RECOVERED_SECONDS:
                return max(0.0, second - RECOVERED_SECONDS + 1 - since)
        return None

    def statuses(self, since: float, until: float) -> Counter[int]:
        return Counter(s for s, done in zip(self.answers.status, self.answers.done, strict=True)
                       if since <= done < until)

    @cached_property
    def first_accepted(self) -> dict[int, float]:
        """When each event was first answered 200."""
        first: dict[int, float] = {}
        for event, status, done in zip(self.answers.event, self.answers.status,
                                       self.answers.done, strict=True):
            if status == 200 and done < first.get(event, math.inf):
                first[event] = done
        return first

    def lost_between(self, since: float, until: float) -> int:
        """How many lost events were first answered 200 in the window."""
        return sum(1 for n in self.verdict.lost
                   if since <= self.first_accepted.get(n, math.nan) < until)


def create_database(admin_url: str, name: str) -> str:
    parts = urlsplit(admin_url)
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlunsplit(parts._replace(path=f"/{name}"))


def drop_database(url: str) -> None:
    parts = urlsplit(url)
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(parts.path.lstrip("/"))))


def migrate(url: str) -> None:
    subprocess.run([sys.executable, "-m", "streams.cli", "migrate"],
                   env={**os.environ, "DATABASE_URL": url}, capture_output=True, timeout=300,
                   check=True)


def settle(url: str, accepted: int, poison: int, timeout: float, quiet: float = 15.0) -> float:
    """Wait until the event log holds ``accepted`` events and nothing changes for ``quiet`` s.

    Returns the seconds waited; a timeout returns too, and the checker says what is missing.
    """
    began = time.monotonic()
    last: tuple[int, ...] = ()
    changed = began
    while time.monotonic() - began < timeout:
        try:
            with psycopg.connect(url, connect_timeout=5) as conn:
                row = conn.execute(
                    "SELECT (SELECT count(*) FROM ops.event_log), "
                    "(SELECT coalesce(sum(deliveries), 0) FROM ops.event_log), "
                    "(SELECT count(*) FROM ops.dead_letters)").fetchone()
        except psycopg.OperationalError:
            row = None
        now = time.monotonic()
        if row is not None:
            state = tuple(int(v) for v in row)
            if state != last:
                last, changed = state, now
            elif state[0] >= accepted and state[2] >= poison and now - changed >= quiet:
                break
        time.sleep(1.0)
    return time.monotonic() - began


def read_latency(url: str) -> tuple[Latency, int]:
    latency = Latency(array("d"), array("d"))
    with psycopg.connect(url) as conn, conn.cursor(name="latency") as cursor:
        cursor.itersize = 50_000
        cursor.execute(
            "SELECT extract(epoch FROM received_at)::float8, "
            "extract(epoch FROM processed_at - received_at)::float8 * 1000 FROM ops.event_log "
            "WHERE source = 'webhook' AND status <> 'dead_lettered' AND processed_at IS NOT NULL "
            "ORDER BY received_at"
        )
        for received, lag in cursor:
            latency.received.append(received)
            latency.lag_ms.append(lag)
        [(applied,)] = conn.execute("SELECT count(*) FROM ops.event_log").fetchall()
    return latency, int(applied)


def run_soak(
    config: SoakConfig, settings: Settings, brokers: Brokers, postgres: Postgres | None,
    run_dir: Path, events_dir: Path,
) -> SoakResult:
    """Offer the load through the gateway, inject the faults, then judge what the pipeline did.

    ``settings`` name the brokers, a fresh migrated database and a fresh topic prefix.
    """
    if postgres is None and NEEDS_POSTGRES & set(config.faults):
        raise ValueError("PostgreSQL faults need a PostgreSQL server to control")
    run_dir.mkdir(parents=True, exist_ok=True)
    slots = int(config.rate * config.duration)
    bodies_path, index_path = lifecycle_file(events_dir, slots, config.seed)
    sent, bodies = load_events(bodies_path, index_path, slots, poison_events(config.poison,
                                                                             config.seed))
    plan = build_plan(slots, config.rate, sorted(sent.poison), config.duplicates,
                      config.reordered, config.seed)
    nodes = brokers.nodes()
    # Replicated as the cluster allows: one replica per broker, at most 3.
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers,
                              worker_topics(settings.topic_prefix), config.partitions))
    pipeline = Pipeline(settings, run_dir, config.workers, config.gateway_workers)
    soak = Soak(settings, brokers, postgres, pipeline, config.pause)
    soak.refresh_brokers()
    generator: multiprocessing.process.BaseProcess | None = None
    faults: list[FaultRun] = []
    database = urlsplit(settings.database_url).path.lstrip("/")

    def roles() -> dict[str, list[int]]:
        return {**pipeline.pids(), "broker": soak.broker_pids,
                "load generator": [generator.pid] if generator and generator.pid else []}

    try:
        pipeline.start_gateway()
        for n in range(config.workers):
            pipeline.start_worker(n)
        pipeline.wait_workers(180)
        spec = LoadSpec(pipeline.port, config.rate, time.time() + 3, plan, bodies,
                        SECRET.reveal(), config.connections, config.drain,
                        run_dir / "answers.pickle")
        context = multiprocessing.get_context("spawn")
        with Meter(roles, database, postgres.pid if postgres else lambda: None) as meter:
            generator = context.Process(target=offer_process, args=(spec,), name="soak-load")
            generator.start()
            logs_before = log_sizes(soak.logs())
            for name, offset in zip(config.faults, config.fault_times(), strict=True):
                time.sleep(max(0.0, spec.start_at + offset - time.time()))
                logs_at = log_sizes(soak.logs())
                fault = FaultRun(name, time.time(), logs_at=logs_at)
                console.print(f"[{fault.began - spec.start_at:5.0f} s] {name} ...")
                fault.detail = INJECT[name](soak)
                fault.ended = time.time()
                faults.append(fault)
                console.print(f"        {fault.detail}")
            time.sleep(max(0.0, spec.start_at + config.duration - time.time()))
            logs_after = log_sizes(soak.logs())
            console.print("offering done; waiting for outstanding retries ...")
            generator.join(config.drain + 120)
            if generator.exitcode != 0:
                raise RuntimeError(f"the load generator failed (exit {generator.exitcode})")
            with spec.answers.open("rb") as saved:
                answers = Answers(**pickle.load(saved))
            accepted = answers.accepted()
            console.print(f"{len(accepted):,} events answered 200; waiting for the workers ...")
            settled_after = settle(settings.database_url, len(accepted),
                                   sum(1 for n in sent.poison if n in accepted), config.settle)
        errors = [error_lines(soak.logs(), logs_before, faults[0].logs_at if faults else
                              logs_after)]
        for k, fault in enumerate(faults):
            until = faults[k + 1].logs_at if k + 1 < len(faults) else logs_after
            errors.append(error_lines(soak.logs(), fault.logs_at, until))
        console.print("judging ...")
        verdict = judge(sent, accepted, settings.kafka_bootstrap_servers, settings.topic(),
                        settings.database_url)
        latency, applied = read_latency(settings.database_url)
        latency.write_csv(run_dir / "latency.csv", spec.start_at)
        if config.rebuild:
            console.print("rebuilding the mirrors from the log ...")
            verdict.checks.append(rebuild_and_compare(
                pipeline.env, settings.database_url, verdict.poison_in_log,
                config.rebuild_timeout))
        return SoakResult(config, len(nodes), spec.start_at, faults, answers, verdict, latency,
                          meter.seconds(), meter, errors, applied, settled_after)
    finally:
        if generator is not None and generator.is_alive():
            generator.kill()
        pipeline.stop()
        # Leave the services running, whatever fault was under way.
        if any(node.pid is None for node in brokers.nodes()):
            brokers.start_stopped()
        if postgres is not None and postgres.pid() is None:
            postgres.restart()


def ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.0f} ms"


def report(result: SoakResult) -> None:
    config = result.config
    bound = result.recovery_bound()
    faults = Table(title=f"faults ({config.rate:,.0f} webhooks/s offered, {result.brokers} "
                         f"broker(s), {config.workers} workers; recovered: {RECOVERED_SECONDS} s "
                         f"in a row with p99 <= {bound:,.0f} ms)")
    for name in ("fault", "at", "lasted", "503", "conn err", "other", "lost", "recovered",
                 "p99 before", f"p99 {AFTER_FAULT:.0f} s on", "worst 1 s", "error lines "
                 "gw/wk/br/pg", "busy"):
        faults.add_column(name, justify="left" if name == "fault" else "right",
                          no_wrap=name == "fault")
    seconds = result.latency.per_second
    rows: list[tuple[str, float, float, int | None]] = [
        ("before the first fault", result.start_at,
         result.faults[0].began if result.faults else result.end_at, None)]
    rows += [(f.name, *result.window(k), k) for k, f in enumerate(result.faults)]
    for k, (name, since, until, fault) in enumerate(rows):
        statuses = result.statuses(since, until)
        recovered = result.recovery(fault) if fault is not None else None
        errors = result.errors[k]
        worst = max((p for s, p in seconds.items() if since <= s < until), default=math.nan)
        faults.add_row(
            name, f"{since - result.start_at:.0f} s",
            f"{result.faults[fault].ended - since:.1f} s" if fault is not None else "",
            f"{statuses[503]:,}", f"{statuses[0]:,}",
            f"{sum(c for s, c in statuses.items() if s not in (0, 200, 503)):,}",
            f"{result.lost_between(since, until):,}",
            ("" if fault is None else "no" if recovered is None else f"{recovered:.0f} s"),
            ms(result.latency.p99(since - 30, since)) if fault is not None else "",
            ms(result.latency.p99(since + AFTER_FAULT, until)) if fault is not None else
            ms(result.latency.p99(since + START_UP, until)),
            ms(worst),
            "/".join(str(errors.get(r, 0)) for r in ("gateway", "workers", "broker",
                                                      "postgres")),
            f"{result.meter.busy_cores(since, until):.2f}",
        )
    console.print(faults)
    for run in result.faults:
        console.print(f"  {run.name} at {run.began - result.start_at:.0f} s: {run.detail}")
    report_totals(result)
    report_checks(result.verdict)


def report_totals(result: SoakResult) -> None:
    config, answers = result.config, result.answers
    accepted = answers.accepted()
    end = result.end_at
    in_time = sum(1 for s, d in zip(answers.status, answers.done, strict=True)
                  if s == 200 and d < end)
    retried = sum(1 for a in answers.attempt if a > 1)
    statuses = Counter(answers.status)
    every = result.latency.between(result.start_at, math.inf)
    busy = result.meter.busy_cores(result.start_at, end)
    load_mean, load_max = result.meter.load(result.start_at, end)
    totals = Table(title="totals", show_header=False)
    totals.add_column(style="bold")
    totals.add_column(justify="right")
    totals.add_column()
    target = (f"p99 < {TARGET_P99_MS:.0f} ms, recovery <= {AFTER_FAULT:.0f} s, 0 lost; "
              "2,000/s with replication 3")
    for name, value, note in (
        ("offered: requests (retries among them)", f"{len(answers.status):,} ({retried:,})",
         f"{config.rate:,.0f}/s for {config.duration:.0f} s, {config.poison} poison"),
        ("answered 200 / 503 / connection error / other",
         f"{statuses[200]:,} / {statuses[503]:,} / {statuses[0]:,} / "
         f"{sum(c for s, c in statuses.items() if s not in (0, 200, 503)):,}", ""),
        ("events answered 200 (distinct)", f"{len(accepted):,}", ""),
        ("events never answered 200", f"{len(answers.undelivered):,}",
         f"after a {config.drain:.0f} s drain"),
        ("sustained: 200s per second of offering", f"{in_time / config.duration:,.0f}/s", ""),
        ("events in ops.event_log / messages in the log",
         f"{result.applied:,} / {result.verdict.log_messages:,}",
         ", ".join(f"{s} {c:,}" for s, c in sorted(result.verdict.statuses.items()))),
        ("p50 / p99 steady state (10 s on, to the first fault)",
         f"{ms(statistics.median(result.steady() or [math.nan]))} / "
         f"{ms(result.steady_p99())}", target),
        ("p99 / max over the whole run", f"{ms(percentile(every, 0.99) if every else None)} / "
         f"{ms(max(every, default=math.nan))}", ""),
        ("settled after the offering", f"{result.settled_after:.0f} s", ""),
        ("busy cores, mean; load average mean / max", f"{busy:.2f}",
         f"{load_mean:.1f} / {load_max:.1f}"),
    ):
        totals.add_row(name, value, note)
    for role in ("gateway", "workers", "broker", "postgres", "load generator"):
        spent = result.cpu_seconds.get(role, 0.0)
        totals.add_row(f"CPU per event, {role}", f"{spent * 1e6 / max(1, result.applied):,.0f} us",
                       f"{spent:,.0f} s")
    console.print(totals)


def report_checks(verdict: Verdict) -> None:
    checks = Table(title="checks (from outside: the log, SQL; * reported, not required)")
    checks.add_column("check")
    checks.add_column("checked", justify="right")
    checks.add_column("failed", justify="right")
    checks.add_column("examples")
    for check in verdict.checks:
        checks.add_row(check.name + ("" if check.required else " *"), f"{check.checked:,}",
                       f"{check.failures:,}" if check.failures else "0",
                       "; ".join(check.examples))
    console.print(checks)
    console.print(f"lost (answered 200, not in the log or the event log): {len(verdict.lost)}; "
                  f"verdict: {'PASS' if verdict.ok else 'FAIL'}")


@contextlib.contextmanager
def fresh_stack(brokers: Brokers, partitions: int) -> Iterator[Settings]:
    """Settings with the brokers' addresses, a fresh topic prefix and a fresh migrated database."""
    base = Settings.from_env()
    name = f"soak{uuid.uuid4().hex[:10]}"
    addresses = ",".join(node.address for node in brokers.nodes())
    url = create_database(base.database_url, name)
    settings = replace(base, database_url=url, topic_prefix=name, topic_partitions=partitions,
                       kafka_bootstrap_servers=addresses)
    try:
        migrate(url)
        yield settings
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(delete_topics(addresses, f"{name}."))


def search(args: argparse.Namespace, brokers: Brokers) -> None:
    """Step up the offered rate without faults until the p99 reaches 1 s or an event is lost."""
    steps = Table(title=f"highest rate with p99 received-to-projected < {SEARCH_P99_MS:,.0f} ms "
                        f"({len(brokers.nodes())} broker(s), {args.workers} workers, "
                        f"{args.step_duration:.0f} s a step)")
    for name in ("offered/s", "sustained 200/s", "p50", "p99 (10 s on)", "max", "lost",
                 "never 200", "busy cores", "load avg", "CPU us/event gw / workers / broker / "
                 "pg / load gen"):
        steps.add_column(name, justify="right")
    held, failed = 0.0, 0
    rates = [float(r) for r in args.search.split(",") if r.strip()]
    lifecycle_file(LOG_DIR, int(max(rates) * args.step_duration), args.seed)
    for rate in rates:
        config = SoakConfig(rate=rate, duration=args.step_duration, workers=args.workers,
                            gateway_workers=args.gateway_workers, faults=(), warmup=0,
                            poison=min(args.poison, 2), connections=args.connections,
                            drain=120, settle=300, seed=args.seed, rebuild=False)
        with fresh_stack(brokers, config.partitions) as settings:
            console.print(f"search: {rate:,.0f}/s for {args.step_duration:.0f} s ...")
            try:
                result = run_soak(config, settings, brokers, None,
                                  LOG_DIR / f"soak-{settings.topic_prefix}", LOG_DIR)
            finally:
                if not args.keep:
                    drop_database(settings.database_url)
        p99 = result.latency.p99(result.start_at + START_UP, result.end_at)
        lags = result.latency.between(result.start_at + START_UP, result.end_at)
        cpu = " / ".join(f"{result.cpu_seconds.get(r, 0.0) * 1e6 / max(1, result.applied):.0f}"
                         for r in ("gateway", "workers", "broker", "postgres", "load generator"))
        in_time = sum(1 for s, d in zip(result.answers.status, result.answers.done, strict=True)
                      if s == 200 and d < result.end_at)
        steps.add_row(f"{rate:,.0f}", f"{in_time / config.duration:,.0f}",
                      ms(statistics.median(lags) if lags else None), ms(p99),
                      ms(max(lags, default=math.nan)), f"{len(result.verdict.lost)}",
                      f"{len(result.answers.undelivered)}",
                      f"{result.meter.busy_cores(result.start_at, result.end_at):.2f}",
                      "{:.1f} / {:.1f}".format(*result.meter.load(result.start_at,
                                                                  result.end_at)), cpu)
        console.print(steps)
        if math.isnan(p99) or p99 >= SEARCH_P99_MS or result.verdict.lost or \
                result.answers.undelivered:
            failed += 1
            # A busy neighbour can fail one step; two in a row mean the rate is beyond reach.
            if failed == 2:
                break
        else:
            held, failed = rate, 0
    console.print(f"highest rate held: {held:,.0f} webhooks/s; stripe-sync-engine's "
                  f"2,000-2,400/s x 1.5 = 3,000-3,600/s is the goal "
                  f"({held / 2400:.2f}-{held / 2000:.2f} x theirs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="webhooks/s offered")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of offering")
    parser.add_argument("--brokers", type=int, choices=(1, 3),
                        help="Kafka nodes of 'services' to run on (default: those it lists)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, one group")
    parser.add_argument("--gateway-workers", type=int, default=1,
                        help="STRIPE_STREAMS_GATEWAY_WORKERS of the gateway")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"in order, of {', '.join(INJECT)}; 'none' for none")
    parser.add_argument("--warmup", type=float, help="seconds before the first fault "
                        "(default: a tenth of the duration)")
    parser.add_argument("--poison", type=int, default=20, help="poison events in the run")
    parser.add_argument("--duplicates", type=float, default=0.01, help="share posted twice")
    parser.add_argument("--reordered", type=float, default=0.01, help="share posted late")
    parser.add_argument("--pause", type=float, default=20.0, help="seconds of postgres-pause")
    parser.add_argument("--connections", type=int, default=512,
                        help="most requests in flight at once")
    parser.add_argument("--drain", type=float, default=600.0,
                        help="seconds for outstanding retries after the offering")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--no-rebuild", action="store_true", help="skip the rebuild check")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--search", default="", help="rates to step through, no faults")
    parser.add_argument("--step-duration", type=float, default=60.0,
                        help="seconds of each --search step")
    args = parser.parse_args()
    faults = tuple(f for f in args.faults.split(",") if f and f != "none")
    if unknown := set(faults) - set(INJECT):
        parser.error(f"--faults: unknown {', '.join(sorted(unknown))}")
    listed = [node for node in services_status(args.brokers or 1) if node.name.startswith("kafka")]
    count = args.brokers or len(listed)
    if len(listed) != count:
        parser.error(f"'services status' lists {len(listed)} Kafka node(s), not {count}: "
                     f"run 'stripe-streams services up --brokers {count}'")
    brokers = ServiceBrokers(count)
    if args.search:
        search(args, brokers)
        return
    config = SoakConfig(
        rate=args.rate, duration=args.duration, workers=args.workers,
        gateway_workers=args.gateway_workers, faults=faults,
        warmup=args.duration / 10 if args.warmup is None else args.warmup,
        poison=args.poison, duplicates=args.duplicates, reordered=args.reordered,
        pause=args.pause, connections=args.connections, drain=args.drain, seed=args.seed,
        rebuild=not args.no_rebuild,
    )
    with fresh_stack(brokers, config.partitions) as settings:
        console.print(f"soak {settings.topic_prefix}: {config.rate:,.0f}/s for "
                      f"{config.duration:.0f} s, faults {', '.join(faults) or 'none'}")
        run_dir = LOG_DIR / f"soak-{settings.topic_prefix}"
        try:
            result = run_soak(config, settings, brokers, ServicePostgres(), run_dir, LOG_DIR)
        finally:
            if not args.keep:
                drop_database(settings.database_url)
    report(result)
    console.print(f"process logs, answers and latency.csv (per second) in {run_dir}")
    sys.exit(0 if result.verdict.ok and not result.answers.undelivered else 1)


if __name__ == "__main__":
    main()
