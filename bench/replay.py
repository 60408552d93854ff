"""``stripe-streams rebuild`` from a large log, against a hand-written loader, same run.

    .venv/bin/python bench/replay.py [--events 500000] [--repeats 3] [--periods 12]
                                     [--open 2000] [--rate 1000] [--duration SECONDS]
                                     [--latency-repeats 1] [--rebuild-timeout 1800]
                                     [--profile FILE]

Uses the Kafka broker of KAFKA_BOOTSTRAP_SERVERS and the PostgreSQL server of DATABASE_URL,
with a fresh topic prefix and a fresh, migrated database (both dropped afterwards).

* pre-load: ``--events`` events of customer lifecycles (``--periods`` monthly billing periods
  each: the customer, card, subscription and its item, and per period an invoice created,
  finalized and paid, a charge and a payment intent; ``--open`` customers live at once, so the
  events of one object lie far apart in the log, as in a real account) are appended to
  ``<prefix>.events`` as the gateway writes them, while nothing consumes it;
* rebuild: ``stripe-streams rebuild`` runs as a process on that log, the live mirror tables
  migrated and empty (truncated before each run): seconds from its start to its exit,
  events/s, its peak resident memory (``VmHWM``, polled every 50 ms), and the CPU it,
  PostgreSQL (the processes serving the bench's database, and the server's shared ones) and
  the Kafka broker spent per event;
* loader: the practical limit, a hand-written process doing the same work with the least
  code: an aiokafka consumer without a group reads every partition with ``getmany`` in
  batches of ``STRIPE_STREAMS_JOB_BATCH_SIZE`` records (the rebuild's batch), decodes each
  envelope, runs the same handlers, keeps per row the newest version (``created``, then log
  offset), and writes each batch in one transaction with COPY into a temporary table per
  mirror table and one ``INSERT ... ON CONFLICT DO UPDATE`` with the same version guard, into
  copies of the mirror tables keyed like the rebuild's and indexed, like them, once the rows
  are in. It is measured the same way as the rebuild;
* the two alternate (rebuild, loader, rebuild, loader, ...) ``--repeats`` times; medians and
  their ratio are reported, and the tables of the last runs of both are compared row for row
  (id and last event id of every row of every table);
* live: the gateway and one worker run on the same log (the worker's group starts at its
  end, the live tables holding what the last rebuild switched in), ``--rate`` signed webhooks
  per second are offered for ``--duration`` seconds (default: the median rebuild time
  above), then at the same rate for as long as a rebuild takes (``--rebuild-timeout``
  stops one that does not catch up with the live log); received-to-projected latency
  (``ops.event_log.processed_at - received_at`` of the events the gateway received in each
  window, and the worst 10 s of it) without and during the rebuild, the rebuild's job row,
  the rows of the tables it left, and whether every event applied live is in them.

``--profile FILE`` adds one rebuild under cProfile (not counted) and prints where its time goes.
``busy cores`` says how loaded the whole machine was (2.00 = two cores fully busy).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import json
import os
import pstats
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, overload
from urllib.parse import urlsplit

import orjson
import psycopg
import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition
from pipeline import (
    LOG_DIR,
    append,
    busy_cores_since,
    busy_ticks,
    cpu_ticks,
    envelopes,
    environment,
    free_port,
    fresh_database,
    lifecycle_stream,
    offer,
    percentile,
    rss_mib,
    signed_request,
    signed_requests,
    start,
    stop,
    wait_for_port,
    wait_for_worker,
)
from psycopg import sql
from psycopg.types.json import Jsonb
from rich.console import Console
from rich.table import Table

from projections.shadow import create_shadow, index_shadow
from streams.handlers.registry import load_handlers
from streams.jobs.reading import FETCH_MAX_BYTES
from streams.log.codec import decode_event
from streams.log.topics import MAX_MESSAGE_BYTES, delete_topics, ensure_topics, worker_topics
from streams.settings import Settings

LOADER_SCHEMA = "bench_loader"
COMMON_COLUMNS = (
    "id", "data", "deleted", "livemode", "account",
    "last_event_id", "last_event_created", "last_event_offset",
)
PARTITIONS = 6
console = Console(width=160)


@dataclass
class Run:
    """One process's run over the pre-loaded log, measured from outside."""

    kind: str
    events: int
    seconds: float
    exit_code: int
    peak_rss_mib: float
    cpu_seconds: dict[str, float]
    busy_cores: float
    own_seconds: float = 0.0
    """The job's own time: the job row's start to finish, or the loader's from its connection."""
    peak_at: float = 0.0
    """Seconds from the start to the last rise of the peak resident memory."""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def cpu_us(self, role: str) -> float:
        return self.cpu_seconds.get(role, 0.0) * 1e6 / max(1, self.events)


class PostgresCpu:
    """CPU seconds of the PostgreSQL processes that work for one database, while it runs.

    Counted: the backends and autovacuum workers of the database (its name is in their
    process titles) and the server's shared background processes (WAL writer, checkpointer,
    background writer). The backends of other databases, which other work on this machine
    may use, are not. Processes are sampled every ``every`` seconds: a backend whose
    connection closes counts up to its last sample, one that appears counts from zero.
    """

    SHARED = (b"postgres: checkpointer", b"postgres: background writer", b"postgres: walwriter",
              b"postgres: autovacuum launcher")

    def __init__(self, database_url: str, every: float = 0.25) -> None:
        self.name = f" {urlsplit(database_url).path.lstrip('/')} ".encode()
        self.every = every
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PostgresCpu:
        self.first = self._ticks()
        self.last = dict(self.first)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.last.update(self._ticks())

    @property
    def seconds(self) -> float:
        ticks = sum(last - self.first.get(pid, 0) for pid, last in self.last.items())
        return ticks / os.sysconf("SC_CLK_TCK")

    def _run(self) -> None:
        while not self._done.wait(self.every):
            self.last.update(self._ticks())

    def _ticks(self) -> dict[int, int]:
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                title = (entry / "cmdline").read_bytes().rstrip(b"\0")
                if not title.startswith(b"postgres:") or not (
                    self.name in title or title.startswith(self.SHARED)
                ):
                    continue
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[int(entry.name)] = int(fields[11]) + int(fields[12])
        return found


def watch(
    process: subprocess.Popen[bytes], began: float, events: int, kind: str, database_url: str,
    log_name: str, timeout: float | None = None,
) -> Run:
    """Wait for ``process`` to exit; its wall time since ``began``, peak RSS and CPU.

    The process's own CPU comes from its resource usage as it is reaped, PostgreSQL's from
    :class:`PostgresCpu`, the broker's from its CPU ticks over the same time. Its peak RSS is
    its ``VmHWM`` polled every 50 ms (not ``ru_maxrss``, which for a forked child counts the
    parent's memory at the fork); its resident memory at each poll goes to
    ``<log_name>.rss``. After ``timeout`` seconds the process is asked to stop (SIGTERM).
    """
    hertz = os.sysconf("SC_CLK_TCK")
    machine = busy_ticks()
    ticks = cpu_ticks({})
    sampled = peak_at = 0.0
    timeline: list[tuple[float, float]] = []
    with PostgresCpu(database_url) as postgres:
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if timeout is not None and time.perf_counter() - began > timeout:
                process.send_signal(signal.SIGTERM)
                timeout = None
            with contextlib.suppress(OSError):
                now = time.perf_counter() - began
                peak = rss_mib(process.pid, "VmHWM")
                if peak > sampled:
                    sampled, peak_at = peak, now
                timeline.append((now, rss_mib(process.pid)))
            time.sleep(0.05)
        seconds = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    after = cpu_ticks({})
    (LOG_DIR / f"{log_name}.rss").write_text(
        "".join(f"{at:.1f} {mib:.0f}\n" for at, mib in timeline)
    )
    return Run(
        kind, events, seconds, process.returncode, sampled,
        {
            kind: usage.ru_utime + usage.ru_stime,
            "postgres": postgres.seconds,
            "broker": (after["broker"] - ticks["broker"]) / hertz,
        },
        busy_cores_since(machine),
        peak_at=peak_at,
    )


def mirror_tables() -> list[str]:
    return sorted(load_handlers().tables)


def prepare(url: str, statements: Sequence[sql.Composed]) -> None:
    """Run set-up statements, then a checkpoint, so a run does not pay for the one before."""
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)
        with contextlib.suppress(psycopg.Error):
            conn.execute("CHECKPOINT")


def measure_rebuild(settings: Settings, events: int, log_name: str) -> Run:
    tables = mirror_tables()
    prepare(settings.database_url, [sql.SQL("TRUNCATE {}").format(
        sql.SQL(", ").join(sql.Identifier("stripe", t) for t in tables)
    )])
    began = time.perf_counter()
    process = start(["rebuild"], environment(settings), log_name)
    run = watch(process, began, events, "rebuild", settings.database_url, log_name)
    run.details = last_job(settings.database_url)
    run.own_seconds = float(run.details.get("seconds") or 0.0)
    if run.exit_code != 0:
        raise SystemExit(f"rebuild exited {run.exit_code}: {last_line(LOG_DIR / log_name)}")
    return run


def last_job(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT id, status, processed, failed, total, "
            "extract(epoch FROM finished_at - started_at)::float, error "
            "FROM ops.batch_jobs WHERE kind = 'rebuild' ORDER BY id DESC LIMIT 1"
        ).fetchone()
    if row is None:
        return {}
    names = ("id", "status", "processed", "failed", "total", "seconds", "error")
    return dict(zip(names, row, strict=True))


def measure_loader(settings: Settings, events: int, log_name: str) -> Run:
    prepare(settings.database_url, [sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
        sql.Identifier(LOADER_SCHEMA)
    )])
    began = time.perf_counter()
    process = start(["--loader", LOADER_SCHEMA], environment(settings), log_name,
                    launcher=[__file__])
    run = watch(process, began, events, "loader", settings.database_url, log_name)
    output = (LOG_DIR / log_name).read_text().strip().splitlines()
    if run.exit_code != 0 or not output:
        raise SystemExit(f"the loader exited {run.exit_code}: {last_line(LOG_DIR / log_name)}")
    run.details = json.loads(output[-1])
    run.own_seconds = float(run.details["seconds"])
    if run.details["events"] != events:
        raise SystemExit(f"the loader read {run.details['events']} events of {events}")
    return run


# The hand-written loader: runs in a process of its own (``replay.py --loader SCHEMA``).

def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "items"):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json(value: Any) -> bytes:
    return orjson.dumps(value, default=_plain)


async def load(schema: str) -> dict[str, Any]:
    """Read the whole log once and upsert the newest version of every row into ``schema``."""
    settings = Settings.from_env()
    registry = load_handlers()
    tables = sorted(registry.tables)
    columns = {name: (*COMMON_COLUMNS, *registry.tables[name].columns) for name in tables}
    began = time.perf_counter()
    conn = await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True)
    await create_shadow(conn, schema, tables)
    staged: set[str] = set()
    upserts = {name: _loader_upsert(schema, name, columns[name]) for name in tables}
    copies = {name: sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(f"stage_{name}"), sql.SQL(", ").join(map(sql.Identifier, columns[name]))
    ) for name in tables}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None,
        enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_bytes=FETCH_MAX_BYTES, max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
    )
    await consumer.start()
    topic = settings.topic()
    await consumer._client.force_metadata_update()
    partitions = [TopicPartition(topic, p)
                  for p in sorted(consumer.partitions_for_topic(topic) or ())]
    ends = await consumer.end_offsets(partitions)
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    reading = {tp for tp in partitions if ends[tp] > 0}
    events = rows = batches = 0
    try:
        while reading:
            fetched = await consumer.getmany(*reading, timeout_ms=1000,
                                             max_records=settings.job_batch_size)
            newest: dict[tuple[str, str], tuple[tuple[int, int], tuple[Any, ...]]] = {}
            for tp, records in fetched.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    events += 1
                    envelope = decode_event(record.value)
                    registered = registry.lookup(envelope.type)
                    if registered is None:
                        continue
                    version = (envelope.created, record.offset)
                    created = datetime.fromtimestamp(envelope.created, UTC)
                    for row in registered.handle(orjson.loads(envelope.payload)).rows:
                        key = (row.table, row.id)
                        known = newest.get(key)
                        if known is not None and known[0] >= version:
                            continue
                        newest[key] = (version, (
                            row.id, Jsonb(row.data, dumps=_json), row.deleted,
                            envelope.livemode, envelope.account, envelope.id, created,
                            record.offset,
                            *(row.columns.get(c) for c in columns[row.table][8:]),
                        ))
                if records and records[-1].offset + 1 >= ends[tp]:
                    reading.discard(tp)
                    consumer.pause(tp)
            if not newest:
                continue
            by_table: dict[str, list[tuple[Any, ...]]] = {}
            for (table, _), (_, values) in newest.items():
                by_table.setdefault(table, []).append(values)
            for name in by_table.keys() - staged:
                await conn.execute(sql.SQL(
                    "CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DELETE ROWS"
                ).format(sql.Identifier(f"stage_{name}"), sql.Identifier("stripe", name)))
                staged.add(name)
            async with conn.transaction(), conn.cursor() as cursor:
                for name, values_list in by_table.items():
                    async with cursor.copy(copies[name]) as copy:
                        for values in values_list:
                            await copy.write_row(values)
                    await cursor.execute(upserts[name])
            rows += len(newest)
            batches += 1
        loaded = time.perf_counter()
        await index_shadow(conn, schema, tables)
    finally:
        await consumer.stop()
        await conn.close()
    done = time.perf_counter()
    return {"events": events, "rows_written": rows, "batches": batches,
            "seconds": done - began, "index_seconds": done - loaded}


def _loader_upsert(schema: str, table: str, columns: Sequence[str]) -> sql.Composed:
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    return sql.SQL(
        "INSERT INTO {target} AS t ({names}, updated_at) SELECT {names}, now() FROM {stage} "
        "ON CONFLICT (id) DO UPDATE SET {sets}, updated_at = excluded.updated_at "
        "WHERE (t.last_event_created, t.last_event_offset) "
        "< (excluded.last_event_created, excluded.last_event_offset)"
    ).format(
        target=sql.Identifier(schema, table), names=names,
        stage=sql.Identifier(f"stage_{table}"),
        sets=sql.SQL(", ").join(
            sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c)) for c in columns[1:]
        ),
    )


# Checks.

def compare(url: str, schema: str) -> list[tuple[str, int, int, int]]:
    """Per mirror table: rows in ``stripe``, rows in ``schema``, and rows that differ in id or
    last event id (either side)."""
    found = []
    with psycopg.connect(url) as conn:
        for table in mirror_tables():
            live, other = sql.Identifier("stripe", table), sql.Identifier(schema, table)
            row = conn.execute(sql.SQL(
                "SELECT (SELECT count(*) FROM {a}), (SELECT count(*) FROM {b}), "
                "(SELECT count(*) FROM (SELECT id, last_event_id FROM {a} EXCEPT "
                "SELECT id, last_event_id FROM {b}) d) + "
                "(SELECT count(*) FROM (SELECT id, last_event_id FROM {b} EXCEPT "
                "SELECT id, last_event_id FROM {a}) e)"
            ).format(a=live, b=other)).fetchone()
            assert row is not None
            found.append((table, int(row[0]), int(row[1]), int(row[2])))
    return found


def row_counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        counted = {}
        for table in mirror_tables():
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier("stripe", table))).fetchone()
            counted[table] = int(row[0]) if row else 0
    return {t: n for t, n in counted.items() if n}


def missing_live_events(url: str) -> int:
    """Events applied live (``processed`` in ops.event_log) whose object has no mirror row."""
    union = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT id FROM {}").format(sql.Identifier("stripe", t)) for t in mirror_tables()
    )
    with psycopg.connect(url) as conn:
        row = conn.execute(sql.SQL(
            "SELECT count(*) FROM ops.event_log l WHERE l.status = 'processed' "
            "AND NOT EXISTS (SELECT FROM ({}) m WHERE m.id = l.object_id)"
        ).format(union)).fetchone()
    return int(row[0]) if row else 0


# Live latency during a rebuild.

async def start_at_end(settings: Settings) -> None:
    """Commit the workers' group offsets at the end of the log: they start there."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=settings.group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        topic = settings.topic()
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.commit(dict(ends))
    finally:
        await consumer.stop()


class Webhooks(Sequence[bytes]):
    """``count`` signed webhooks: the ``templates``, then the same events again with every
    Stripe id given a suffix per round (from ``first_round`` on), so that no event or object
    repeats however long a window lasts. Later rounds are signed as they are sent."""

    STRIPE_ID = re.compile(rb'"((?:[a-z]+_)+[A-Za-z0-9]{14,})"')

    def __init__(self, templates: list[bytes], size: int, first_round: int = 0) -> None:
        self.templates = templates
        self.size = size
        self.first_round = first_round
        self.handed = 0
        """Requests handed out (sent)."""

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, n: int) -> bytes: ...

    @overload
    def __getitem__(self, n: slice) -> Sequence[bytes]: ...

    def __getitem__(self, n: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(n, slice):
            return [self[i] for i in range(*n.indices(self.size))]
        if not 0 <= n < self.size:
            raise IndexError(n)
        self.handed += 1
        template = self.templates[n % len(self.templates)]
        round_ = self.first_round + n // len(self.templates)
        if not round_:
            return template
        suffix = f"r{round_}".encode()
        body = self.STRIPE_ID.sub(lambda found: b'"' + found[1] + suffix + b'"',
                                  template.split(b"\r\n\r\n", 1)[1])
        return signed_request(body)


def wait_applied(url: str, since: datetime, until: datetime, accepted: int,
                 timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM ops.event_log WHERE received_at >= %s AND received_at < %s",
                [since, until],
            ).fetchone()
        if row and row[0] >= accepted:
            return
        time.sleep(0.5)
    raise SystemExit(f"live events not all applied within {timeout:.0f} s")


def lags(url: str, since: datetime, until: datetime) -> list[tuple[float, float]]:
    """Of each event the gateway received in a window: seconds from the window's start to its
    receipt, and its received-to-projected latency in milliseconds."""
    with psycopg.connect(url) as conn:
        return [(float(row[0]), float(row[1]) * 1000) for row in conn.execute(
            "SELECT extract(epoch FROM received_at - %s)::float, "
            "extract(epoch FROM processed_at - received_at)::float FROM ops.event_log "
            "WHERE received_at >= %s AND received_at < %s ORDER BY received_at",
            [since, since, until],
        )]


@dataclass
class Window:
    """Webhooks offered at a steady rate for a while, and how fast the worker applied them."""

    label: str
    seconds: float
    offered: int
    accepted: int
    received: list[tuple[float, float]]
    """Per event applied: seconds from the start to its receipt, and its latency in ms."""
    busy_cores: float
    cpu_us: dict[str, float]
    rebuild: Run | None = None
    rows: dict[str, int] = field(default_factory=dict)
    missing: int = 0

    @property
    def lags_ms(self) -> list[float]:
        return [lag for _, lag in self.received]

    def at(self, share: float) -> float:
        return percentile(self.lags_ms, share) if self.received else 0.0

    def worst_slice(self, seconds: float = 10.0) -> tuple[float, float]:
        """The highest p99 of the events received in any ``seconds`` of the window, and the
        slice's start."""
        slices: dict[int, list[float]] = {}
        for at, lag in self.received:
            slices.setdefault(int(at // seconds), []).append(lag)
        worst = max(slices.items(), key=lambda item: percentile(item[1], 0.99),
                    default=(0, [0.0]))
        return percentile(worst[1], 0.99), worst[0] * seconds


class Live:
    """The gateway and one worker on the pre-loaded log, offered webhooks at ``rate``."""

    ROUNDS_PER_WINDOW = 10_000

    def __init__(
        self, settings: Settings, rate: float, periods: int, open_: int, timeout: float
    ) -> None:
        self.settings = settings
        self.rate = rate
        self.timeout = timeout
        """Seconds after which a rebuild that has not caught up with the live log is stopped."""
        self.templates = signed_requests(itertools.islice(
            lifecycle_stream(100, periods, open_), int(rate * 60)
        ))
        self.windows = 0
        self.port = free_port()
        self.worker_port = free_port()
        self.gateway: Any = None
        self.worker: Any = None

    def __enter__(self) -> Live:
        asyncio.run(start_at_end(self.settings))
        env = environment(self.settings)
        self.gateway = start(["gateway", "--host", "127.0.0.1", "--port", str(self.port)], env,
                             "gateway-rebuild.log")
        self.worker = start(["worker", "--web-port", str(self.worker_port)], env,
                            "worker-rebuild.log")
        wait_for_port(self.port, self.gateway)
        wait_for_worker(self.worker_port)
        return self

    def __exit__(self, *exc: object) -> None:
        for process in (self.worker, self.gateway):
            if process is not None:
                stop(process)

    def roles(self) -> dict[str, list[int]]:
        return {"gateway": [self.gateway.pid], "worker": [self.worker.pid],
                "load generator": [os.getpid()]}

    def window(self, label: str, seconds: float = 0.0, rebuild_log: str | None = None) -> Window:
        """Offer webhooks for ``seconds``, or, with ``rebuild_log``, for as long as a rebuild
        started with them runs."""
        count = int(self.rate * seconds) if rebuild_log is None else 1 << 40
        self.windows += 1
        # Round 0, the templates as signed when generated, is never sent: a signature ages.
        requests = Webhooks(self.templates, count, self.windows * self.ROUNDS_PER_WINDOW)
        url = self.settings.database_url
        with PostgresCpu(url) as postgres:
            machine, ticks = busy_ticks(), cpu_ticks(self.roles())
            began, since = time.perf_counter(), datetime.now(UTC)
            accepted, rebuild = uvloop.run(self._offer(requests, rebuild_log))
            offered_for, until = time.perf_counter() - began, datetime.now(UTC)
            wait_applied(url, since, until, accepted)
            busy, after = busy_cores_since(machine), cpu_ticks(self.roles())
        measured = lags(url, since, until)
        hertz = os.sysconf("SC_CLK_TCK")
        cpu = {role: (after[role] - ticks[role]) / hertz * 1e6 / max(1, len(measured))
               for role in after}
        cpu["postgres"] = postgres.seconds * 1e6 / max(1, len(measured))
        window = Window(label, offered_for, requests.handed, accepted, measured, busy, cpu)
        if rebuild is not None:
            rebuild.details = {**last_job(url), **rebuild.details}
            rebuild.own_seconds = float(rebuild.details.get("seconds") or 0.0)
            rebuild.events = int(rebuild.details.get("processed") or 0)
            window.rebuild = rebuild
            window.rows = row_counts(url)
            window.missing = missing_live_events(url)
        return window

    async def _offer(
        self, requests: Webhooks, rebuild_log: str | None
    ) -> tuple[int, Run | None]:
        if rebuild_log is None:
            return await offer(self.port, requests, self.rate, connections=48), None
        ended = asyncio.Event()
        began = time.perf_counter()
        process = start(["rebuild"], environment(self.settings), rebuild_log)
        watching = asyncio.ensure_future(
            asyncio.to_thread(watch, process, began, 0, "rebuild", self.settings.database_url,
                              rebuild_log, self.timeout)
        )
        watching.add_done_callback(lambda _: ended.set())
        accepted = await offer(self.port, requests, self.rate, connections=48, stop=ended)
        rebuild = await watching
        if rebuild.exit_code != 0:
            rebuild.details["log"] = last_line(LOG_DIR / rebuild_log)
        return accepted, rebuild


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


# Profile.

def profile_rebuild(settings: Settings, path: Path, events: int) -> str:
    """One rebuild under cProfile; the functions that take its time."""
    tables = mirror_tables()
    prepare(settings.database_url, [sql.SQL("TRUNCATE {}").format(
        sql.SQL(", ").join(sql.Identifier("stripe", t) for t in tables)
    )])
    began = time.perf_counter()
    process = start(["rebuild"], environment(settings), "rebuild-profile.log",
                    launcher=["-m", "cProfile", "-o", str(path), "-m", "streams.cli"])
    run = watch(process, began, events, "rebuild", settings.database_url, "rebuild-profile.log")
    text = io.StringIO()
    stats = pstats.Stats(str(path), stream=text)
    text.write(f"rebuild under cProfile: {run.seconds:.1f} s, {run.rate:,.0f} events/s "
               f"(profiling slows it), {run.cpu_seconds['rebuild']:.1f} s CPU\n")
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    return text.getvalue()


# Report.

def median_run(runs: Sequence[Run]) -> Run:
    return sorted(runs, key=lambda run: run.rate)[len(runs) // 2]


def report(
    command: str, preload: dict[str, Any], runs: list[Run], same: list[tuple[str, int, int, int]],
    windows: list[Window],
) -> None:
    console.print(f"\n[bold]{command}[/bold]")
    table = Table(title="pre-loaded log", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in preload.items():
        table.add_row(name, value)
    console.print(table)
    rebuilds = [run for run in runs if run.kind == "rebuild"]
    loaders = [run for run in runs if run.kind == "loader"]
    if runs:
        table = Table(title="rebuild and hand-written loader, interleaved")
        for name in ("run", "seconds", "events/s", "own s", "peak RSS MiB", "CPU s process",
                     "CPU us/event process / PostgreSQL / broker", "busy cores"):
            table.add_column(name, justify="right")
        for n, run in enumerate(runs):
            table.add_row(
                f"{run.kind} {n // 2 + 1}", f"{run.seconds:.1f}", f"{run.rate:,.0f}",
                f"{run.own_seconds:.1f}", f"{run.peak_rss_mib:.0f}",
                f"{run.cpu_seconds[run.kind]:.1f}",
                f"{run.cpu_us(run.kind):.0f} / {run.cpu_us('postgres'):.0f} / "
                f"{run.cpu_us('broker'):.0f}",
                f"{run.busy_cores:.2f}",
            )
        console.print(table)
    if rebuilds and loaders:
        rebuild, loader = median_run(rebuilds), median_run(loaders)
        rates = statistics.median(r.rate for r in rebuilds)
        limit = statistics.median(r.rate for r in loaders)
        ratios = " / ".join(f"{r.rate / o.rate:.2f}" for r, o in zip(rebuilds, loaders,
                                                                   strict=False))
        table = Table(title="medians")
        table.add_column("measurement")
        table.add_column("value", justify="right")
        table.add_column("target")
        table.add_row("rebuild, end to end", f"{rates:,.0f} events/s", ">= 25,000 events/s")
        table.add_row("hand-written loader, end to end", f"{limit:,.0f} events/s", "")
        table.add_row("ratio rebuild / loader (each pair)", f"{rates / limit:.2f} ({ratios})",
                      ">= 0.8")
        table.add_row("rebuild peak RSS, largest of the runs",
                      f"{max(r.peak_rss_mib for r in rebuilds):.0f} MiB", "< 400 MiB")
        table.add_row("loader peak RSS, largest of the runs",
                      f"{max(r.peak_rss_mib for r in loaders):.0f} MiB", "")
        for run in (rebuild, loader):
            table.add_row(f"CPU us/event, median {run.kind} run: process / PostgreSQL / broker",
                          f"{run.cpu_us(run.kind):.0f} / {run.cpu_us('postgres'):.0f} / "
                          f"{run.cpu_us('broker'):.0f}", "")
        table.add_row("busy cores, rebuild runs / loader runs",
                      f"{statistics.median(r.busy_cores for r in rebuilds):.2f} / "
                      f"{statistics.median(r.busy_cores for r in loaders):.2f}", "")
        console.print(table)
    if same:
        table = Table(title="same rows: last rebuild's tables against the loader's")
        for name in ("table", "rows rebuilt", "rows loaded", "differing (id, last_event_id)"):
            table.add_column(name, justify="right")
        for name, a, b, differing in same:
            if a or b:
                table.add_row(name, f"{a:,}", f"{b:,}", str(differing))
        console.print(table)
        bad = sum(d for *_, d in same) + sum(abs(a - b) for _, a, b, _ in same)
        console.print("same rows: " + ("yes" if not bad else f"NO ({bad} differences)"))
    if windows:
        report_live(windows)


def report_live(windows: list[Window]) -> None:
    table = Table(title="live pipeline: received-to-projected latency")
    for name in ("window", "seconds", "accepted / offered", "applied", "p50 ms", "p95 ms",
                 "p99 ms", "max ms", "worst 10 s: p99 ms (from s)", "busy cores",
                 "CPU us/event gateway / worker / PostgreSQL / broker / load generator"):
        table.add_column(name, justify="right")
    for window in windows:
        cpu = window.cpu_us
        table.add_row(
            window.label, f"{window.seconds:.1f}", f"{window.accepted:,} / {window.offered:,}",
            f"{len(window.lags_ms):,}", f"{window.at(0.5):.0f}", f"{window.at(0.95):.0f}",
            f"{window.at(0.99):.0f}", f"{max(window.lags_ms, default=0):.0f}",
            "{:.0f} ({:.0f})".format(*window.worst_slice()), f"{window.busy_cores:.2f}",
            f"{cpu['gateway']:.0f} / {cpu['worker']:.0f} / {cpu['postgres']:.0f} / "
            f"{cpu['broker']:.0f} / {cpu['load generator']:.0f}",
        )
    console.print(table)
    console.print("PostgreSQL: the processes serving the bench's database (during a rebuild, the "
                  "rebuild's too) and the server's shared ones; broker: the whole broker.")
    for window in windows:
        run = window.rebuild
        if run is None:
            continue
        job = run.details
        if run.exit_code:
            console.print(f"{window.label}: rebuild exited {run.exit_code}: {job.get('log')}")
        console.print(
            f"{window.label}: rebuild job {job.get('id')} {job.get('status')}, "
            f"{job.get('processed', 0):,} processed, {job.get('failed', 0):,} failed, "
            f"{run.seconds:.1f} s end to end ({run.rate:,.0f} events/s), "
            f"peak RSS {run.peak_rss_mib:.0f} MiB (at {run.peak_at:.0f} s), "
            f"CPU {run.cpu_seconds['rebuild']:.1f} s; "
            + ("rows switched in" if job.get("status") == "succeeded"
               else "not switched; rows of the live tables")
            + f": {sum(window.rows.values()):,} "
            f"({', '.join(f'{t} {n:,}' for t, n in window.rows.items())}); "
            f"events applied live missing from the tables: {window.missing}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000, help="events pre-loaded")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rebuild and loader runs each, alternating (0 skips them)")
    parser.add_argument("--periods", type=int, default=12,
                        help="monthly billing periods of each customer's lifecycle")
    parser.add_argument("--open", type=int, default=2000,
                        help="customers living at once, whose events interleave in the log")
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="webhooks/s offered to the live pipeline (0 skips it)")
    parser.add_argument("--duration", type=float, default=0.0,
                        help="seconds of the window without a rebuild (default: the median "
                             "rebuild time, else 30)")
    parser.add_argument("--rebuild-timeout", type=float, default=1800.0,
                        help="seconds after which a rebuild under live load is stopped (it "
                             "gains on the log only what it applies beyond the live rate)")
    parser.add_argument("--latency-repeats", type=int, default=1,
                        help="pairs of windows without and during a rebuild")
    parser.add_argument("--profile", type=Path, help="profile one more rebuild into this file")
    parser.add_argument("--loader", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loader:
        print(json.dumps(asyncio.run(load(args.loader))), flush=True)
        return
    command = "bench/replay.py " + " ".join(sys.argv[1:])
    base = Settings.from_env()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = replace(base, topic_prefix=prefix, topic_partitions=PARTITIONS)
    before = busy_ticks()
    time.sleep(3)
    idle = busy_cores_since(before)
    preload: dict[str, Any] = {
        "machine before the run": f"{idle:.2f} busy cores over 3 s, load average "
                                  f"{' / '.join(f'{n:.1f}' for n in os.getloadavg())}",
    }
    runs: list[Run] = []
    same: list[tuple[str, int, int, int]] = []
    windows: list[Window] = []
    profiled = ""
    try:
        asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, worker_topics(prefix),
                                  PARTITIONS))
        print(f"appending {args.events:,} events to {settings.topic()} ...", flush=True)
        began = time.perf_counter()
        written = asyncio.run(append(settings, envelopes(itertools.islice(
            lifecycle_stream(3, args.periods, args.open), args.events
        ))))
        preload.update({
            "events": f"{args.events:,}",
            "mean envelope": f"{written / max(1, args.events) / 1000:.1f} KB "
                             f"({written / 1e9:.2f} GB in all)",
            "generated and appended in": f"{time.perf_counter() - began:.0f} s",
        })
        with fresh_database(settings) as url:
            run_settings = replace(settings, database_url=url)
            for n in range(args.repeats):
                print(f"rebuild {n + 1} ...", flush=True)
                runs.append(measure_rebuild(run_settings, args.events, f"rebuild-{n + 1}.log"))
                print(f"  {runs[-1].seconds:.1f} s, {runs[-1].rate:,.0f} events/s", flush=True)
                print(f"loader {n + 1} ...", flush=True)
                runs.append(measure_loader(run_settings, args.events, f"loader-{n + 1}.log"))
                print(f"  {runs[-1].seconds:.1f} s, {runs[-1].rate:,.0f} events/s", flush=True)
            if args.repeats:
                same = compare(url, LOADER_SCHEMA)
                rows = row_counts(url)
                preload["objects (mirror rows)"] = (
                    f"{sum(rows.values()):,}: " + ", ".join(f"{t} {n:,}" for t, n in rows.items())
                )
                preload["events per object"] = f"{args.events / max(1, sum(rows.values())):.2f}"
                preload["rows written by the loader"] = (
                    f"{runs[-1].details['rows_written']:,} in {runs[-1].details['batches']:,} "
                    f"batches (index build {runs[-1].details['index_seconds']:.1f} s)"
                )
            if args.profile:
                print("rebuild under cProfile ...", flush=True)
                profiled = profile_rebuild(run_settings, args.profile, args.events)
            if args.rate:
                rebuilds = [run.seconds for run in runs if run.kind == "rebuild"]
                seconds = args.duration or (statistics.median(rebuilds) if rebuilds else 30.0)
                with Live(run_settings, args.rate, args.periods, args.open,
                          args.rebuild_timeout) as live:
                    print("live: warming up ...", flush=True)
                    live.window("warm-up", 5)
                    for n in range(args.latency_repeats):
                        print(f"live: {args.rate:.0f}/s for {seconds:.0f} s, no rebuild ...",
                              flush=True)
                        windows.append(live.window(f"no rebuild {n + 1}", seconds))
                        print(f"  p99 {windows[-1].at(0.99):.0f} ms", flush=True)
                        print(f"live: {args.rate:.0f}/s during a rebuild ...", flush=True)
                        windows.append(live.window(f"during rebuild {n + 1}",
                                                   rebuild_log=f"rebuild-live-{n + 1}.log"))
                        print(f"  p99 {windows[-1].at(0.99):.0f} ms", flush=True)
    finally:
        asyncio.run(delete_topics(settings.kafka_bootstrap_servers, prefix))
    if profiled:
        print(profiled)
    report(command, preload, runs, same, windows)


if __name__ == "__main__":
    main()
