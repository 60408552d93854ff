"""The soak's verdict, reached from outside the code under test.

It reads what the pipeline left behind with plain tools only: an aiokafka consumer on
``<prefix>.events`` (taking each message's event id from the first field of the Avro envelope,
as the schema in ``streams/log/schemas`` lays it out), and SQL on ``ops.*`` and ``stripe.*``.
What the mirrors should hold is computed from the events the load generator sent, never from
the project's handlers or writer:

* every event answered 200 is in the log, and in ``ops.event_log`` exactly once, with
  ``deliveries`` at least its 200s; every event of the log has ``deliveries`` equal to its
  copies there (a poison event's later copies are attempts);
* every mirror row of the objects sent holds the newest of its object's events in the log
  (greatest ``created``, ties broken by log position): ``last_event_id`` and ``data``;
* every poison event is in ``ops.dead_letters`` exactly once, and no other event is;
* ``stripe-streams rebuild`` yields tables equal, row for row, to the live ones.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from psycopg import sql

OBJECT_TABLES: Mapping[str, str] = {
    "customer": "customers",
    "payment_method": "payment_methods",
    "subscription": "subscriptions",
    "invoice": "invoices",
    "charge": "charges",
    "payment_intent": "payment_intents",
}
"""The mirror table of each object type the soak's lifecycles carry (DESIGN.md, schema stripe)."""

CHILD_TABLE = "subscription_items"
"""A subscription event also carries its items, each a row of this table."""

REBUILD_IGNORED_COLUMNS = ("updated_at",)
"""Columns that say when a row was written, which a rebuild rewrites by design."""

EXAMPLES = 5


@dataclass(frozen=True)
class SentEvents:
    """Every event the load generator could send, by index, and its raw body."""

    ids: Sequence[str]
    object_ids: Sequence[str]
    object_types: Sequence[str]
    created: Sequence[int]
    children: Mapping[int, Sequence[str]]
    """Ids of the subscription items a subscription event carries, by event index."""
    poison: frozenset[int]
    body: Callable[[int], bytes]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Check:
    """One property of the outcome: how many things were checked, how many failed, examples."""

    name: str
    checked: int = 0
    failures: int = 0
    examples: list[str] = field(default_factory=list)
    required: bool = True
    """Whether a failure fails the verdict; others are reported only."""

    def fail(self, example: str) -> None:
        self.failures += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)

    @property
    def ok(self) -> bool:
        return self.failures == 0


@dataclass
class Verdict:
    """Every check, and the events answered 200 that the log or the event log lacks."""

    checks: list[Check]
    lost: set[int]
    statuses: dict[str, int]
    log_messages: int
    poison_in_log: int

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks if check.required)

    def check(self, name: str) -> Check:
        return next(check for check in self.checks if check.name == name)


@dataclass
class LogContents:
    """Where each sent event sits in ``<prefix>.events``: first copy and number of copies."""

    partition: array[int]
    offset: array[int]
    copies: array[int]
    foreign: int = 0
    messages: int = 0

    def holds(self, index: int) -> bool:
        return self.copies[index] > 0


def first_string(message: bytes) -> str:
    """The first field of an Avro single-object message whose record starts with a string.

    The header is the marker ``C3 01`` and an 8-byte schema fingerprint; an Avro string is its
    length as a zig-zag varint, then UTF-8 bytes. Every generation of the envelope starts with
    the event id.
    """
    position, shift, raw = 10, 0, 0
    while True:
        byte = message[position]
        position += 1
        raw |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    length = (raw >> 1) ^ -(raw & 1)
    return message[position : position + length].decode()


async def read_log(bootstrap: str, topic: str, sent: SentEvents) -> LogContents:
    """Read the whole topic with a consumer of no group; locate every sent event in it."""
    index_of = {event_id: n for n, event_id in enumerate(sent.ids)}
    contents = LogContents(
        array("b", bytes(len(sent))), array("q", [-1]) * len(sent), array("i", [0]) * len(sent)
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await _partitions(consumer, topic)]
        ends = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            for tp, records in (await consumer.getmany(timeout_ms=2000, max_records=5000)).items():
                for record in records:
                    if record.offset >= ends[tp]:
                        continue
                    contents.messages += 1
                    n = index_of.get(first_string(record.value or b""))
                    if n is None:
                        contents.foreign += 1
                    elif not contents.copies[n]:
                        contents.partition[n], contents.offset[n] = tp.partition, record.offset
                        contents.copies[n] = 1
                    else:
                        contents.copies[n] += 1
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return contents


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    # A consumer without subscriptions fetches no metadata until asked to.
    for _ in range(30):
        await consumer._client.force_metadata_update()
        found = consumer.partitions_for_topic(topic)
        if found:
            return sorted(found)
        await asyncio.sleep(1)
    raise RuntimeError(f"topic {topic} has no partitions")


def judge(
    sent: SentEvents, accepted: Mapping[int, int], bootstrap: str, topic: str, database_url: str,
) -> Verdict:
    """Check the log, the event log, the mirrors and the dead letters against what was sent.

    ``accepted`` counts the 200s each event index was answered.
    """
    log = asyncio.run(read_log(bootstrap, topic, sent))
    in_log = Check("answered 200: in the log")
    once = Check("answered 200: one row in ops.event_log, deliveries >= its 200s")
    every = Check("in the log: one row in ops.event_log, deliveries = copies in the log")
    logged, statuses = _event_log(database_url, sent)
    lost: set[int] = set()
    for n, answers in accepted.items():
        in_log.checked += 1
        once.checked += 1
        if not log.holds(n):
            in_log.fail(f"{sent.ids[n]} answered 200 {answers} time(s), not in the log")
            lost.add(n)
        rows, deliveries, _ = logged.get(n, (0, 0, ""))
        if rows != 1 or deliveries < answers:
            once.fail(f"{sent.ids[n]}: {rows} row(s), deliveries {deliveries}, {answers} 200(s)")
        if not rows:
            lost.add(n)
    for n in range(len(sent)):
        if not log.holds(n):
            continue
        every.checked += 1
        rows, deliveries, _ = logged.get(n, (0, 0, ""))
        # A poison event's later copies are further attempts, which count no delivery.
        if rows != 1 or (deliveries != log.copies[n] and n not in sent.poison):
            every.fail(f"{sent.ids[n]}: {rows} row(s), deliveries {deliveries}, "
                       f"{log.copies[n]} cop(ies) in the log")
    foreign = Check("messages in the log that were never sent", checked=log.messages)
    if log.foreign:
        foreign.fail(f"{log.foreign} message(s) whose event id the generator never sent")
    checks = [in_log, once, every, foreign,
              *_dead_letters(database_url, sent, log, logged),
              *_mirrors(database_url, sent, log)]
    return Verdict(checks, lost, statuses, log.messages,
                   sum(1 for n in sent.poison if log.holds(n)))


def _event_log(
    database_url: str, sent: SentEvents
) -> tuple[dict[int, tuple[int, int, str]], dict[str, int]]:
    index_of = {event_id: n for n, event_id in enumerate(sent.ids)}
    logged: dict[int, tuple[int, int, str]] = {}
    statuses: dict[str, int] = {}
    with psycopg.connect(database_url) as conn, conn.cursor(name="event_log") as cursor:
        cursor.itersize = 20_000
        cursor.execute("SELECT event_id, count(*), sum(deliveries), max(status) "
                       "FROM ops.event_log GROUP BY event_id")
        for event_id, rows, deliveries, status in cursor:
            statuses[status] = statuses.get(status, 0) + 1
            n = index_of.get(event_id)
            if n is not None:
                logged[n] = (int(rows), int(deliveries), str(status))
    return logged, statuses


def _dead_letters(
    database_url: str, sent: SentEvents, log: LogContents,
    logged: Mapping[int, tuple[int, int, str]],
) -> list[Check]:
    with psycopg.connect(database_url) as conn:
        letters: dict[str, int] = dict(conn.execute(
            "SELECT event_id, count(*) FROM ops.dead_letters GROUP BY event_id"
        ).fetchall())
    poison = Check("poison event in the log: one row in ops.dead_letters, dead_lettered")
    for n in sorted(sent.poison):
        if not log.holds(n):
            continue
        poison.checked += 1
        count = int(letters.pop(sent.ids[n], 0))
        status = logged.get(n, (0, 0, ""))[2]
        if count != 1 or status != "dead_lettered":
            poison.fail(f"{sent.ids[n]}: {count} dead letter(s), event log says {status!r}")
    others = Check("dead letters of events that are not poison", checked=len(letters))
    for event_id, count in letters.items():
        others.fail(f"{event_id}: {count} dead letter(s)")
    return [poison, others]


def expected_rows(sent: SentEvents, log: LogContents) -> dict[str, dict[str, int]]:
    """Per mirror table, per object id: the index of the newest event of it in the log.

    Newest is the greatest ``created``, ties broken by log position (one object's events share
    a partition). Poison events apply nowhere; an object with nothing else has no row.
    """
    newest: dict[str, dict[str, int]] = {table: {} for table in (*OBJECT_TABLES.values(),
                                                                 CHILD_TABLE)}

    def offer(table: str, object_id: str, n: int) -> None:
        held = newest[table].get(object_id)
        if held is None or (sent.created[n], log.offset[n]) > (sent.created[held],
                                                              log.offset[held]):
            newest[table][object_id] = n

    for n in range(len(sent)):
        table = OBJECT_TABLES.get(sent.object_types[n])
        if not log.holds(n) or n in sent.poison or table is None:
            continue
        offer(table, sent.object_ids[n], n)
        for child in sent.children.get(n, ()):
            offer(CHILD_TABLE, child, n)
    return newest


def _mirrors(database_url: str, sent: SentEvents, log: LogContents) -> list[Check]:
    checks = []
    with psycopg.connect(database_url) as conn:
        for table, expected in expected_rows(sent, log).items():
            check = Check(f"stripe.{table}: newest event's id and data", checked=len(expected))
            with conn.cursor(name=f"mirror_{table}") as cursor:
                cursor.itersize = 5_000
                cursor.execute(sql.SQL("SELECT id, last_event_id, data::text FROM {}").format(
                    sql.Identifier("stripe", table)))
                for row_id, last_event_id, data in cursor:
                    n = expected.pop(row_id, None)
                    if n is None:
                        check.fail(f"{row_id}: a row no sent event explains")
                    elif last_event_id != sent.ids[n]:
                        check.fail(f"{row_id}: last_event_id {last_event_id}, newest {sent.ids[n]}")
                    elif orjson.loads(data) != _object_in(sent, n, table, row_id):
                        check.fail(f"{row_id}: data differs from event {sent.ids[n]}")
            for row_id, n in list(expected.items())[:EXAMPLES]:
                check.fail(f"{row_id}: no row (newest event {sent.ids[n]})")
            check.failures += max(0, len(expected) - EXAMPLES)
            checks.append(check)
    return checks


def _object_in(sent: SentEvents, n: int, table: str, row_id: str) -> Any:
    obj = orjson.loads(sent.body(n))["data"]["object"]
    if table != CHILD_TABLE:
        return obj
    return next(item for item in obj["items"]["data"] if item["id"] == row_id)


def mirror_digest(database_url: str) -> dict[str, dict[str, str]]:
    """Per table of schema ``stripe``, per row id: an md5 of the row's columns.

    Columns listed in REBUILD_IGNORED_COLUMNS are left out.
    """
    digests: dict[str, dict[str, str]] = {}
    with psycopg.connect(database_url) as conn:
        for table, columns in _columns(conn).items():
            row = sql.SQL(", ").join(map(sql.Identifier, columns))
            query = sql.SQL("SELECT id, md5(ROW({})::text) FROM {}").format(
                row, sql.Identifier("stripe", table))
            digests[table] = {str(i): str(d) for i, d in conn.execute(query)}
    return digests


def _columns(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    columns: dict[str, list[str]] = {}
    for table, column in conn.execute(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c "
        "JOIN information_schema.tables t USING (table_schema, table_name) "
        "WHERE c.table_schema = 'stripe' AND t.table_type = 'BASE TABLE' "
        "ORDER BY c.table_name, c.ordinal_position"
    ):
        if column not in REBUILD_IGNORED_COLUMNS:
            columns.setdefault(table, []).append(column)
    return columns


def compare_rebuild(
    before: Mapping[str, Mapping[str, str]], after: Mapping[str, Mapping[str, str]]
) -> Check:
    """The rebuilt tables against the live ones: the same tables, ids and row digests."""
    check = Check("rebuild: tables equal to the live ones, row for row",
                  checked=sum(len(rows) for rows in before.values()))
    for table in sorted(set(before) | set(after)):
        live, rebuilt = before.get(table, {}), after.get(table, {})
        for row_id in sorted(set(live) | set(rebuilt)):
            if live.get(row_id) != rebuilt.get(row_id):
                state = ("missing after the rebuild" if row_id not in rebuilt
                         else "new after the rebuild" if row_id not in live else "differs")
                check.fail(f"stripe.{table} {row_id}: {state}")
    return check


def rebuild_and_compare(
    env: Mapping[str, str], database_url: str, poison: int, timeout: float
) -> Check:
    """Run ``stripe-streams rebuild`` and compare the tables it switched in with the live ones.

    The rebuild fails on the ``poison`` events of the log as live processing did: it exits 1
    (done, with failures) and still switches its tables in, its job ``succeeded``.
    """
    before = mirror_digest(database_url)
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "rebuild"], env=dict(env), capture_output=True,
        text=True, timeout=timeout, check=False,
    )
    with psycopg.connect(database_url) as conn:
        job = conn.execute("SELECT status, failed FROM ops.batch_jobs WHERE kind = 'rebuild' "
                           "ORDER BY id DESC LIMIT 1").fetchone()
    if done.returncode not in (0, 1) or job is None or tuple(job) != ("succeeded", poison):
        check = Check("rebuild: tables equal to the live ones, row for row", checked=1)
        last = (done.stderr or done.stdout).strip().splitlines()[-1:]
        check.fail(f"rebuild exited {done.returncode}, job {job}, {poison} poison event(s) "
                   f"in the log: {' '.join(last)}")
        return check
    return compare_rebuild(before, mirror_digest(database_url))
