"""Outages are logged when they start, once a minute while they last, and when they end; the
clients' own repeated connection errors are shown once and then counted."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import psycopg
import pytest
from aiokafka.errors import KafkaConnectionError

from streams.errors import DependencyUnavailable
from streams.outages import OutageLog, RepeatFilter, dependency_of


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Collected(logging.Handler):
    """The records a handler was asked to emit, as their final text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.name, record.getMessage()))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def shown() -> Iterator[Collected]:
    """Everything logged under the root logger while the test runs, filtered or not."""
    handler = Collected()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    # Other tests start Faust or the gateway, which set the clients' loggers' levels.
    clients = [logging.getLogger(name) for name in ("aiokafka", "aiokafka.conn", "psycopg.pool")]
    saved = [(logger.level, logger.disabled, logger.propagate) for logger in clients]
    for logger in clients:
        logger.setLevel(logging.NOTSET)
        logger.disabled, logger.propagate = False, True
    yield handler
    for logger, (logger_level, disabled, propagate) in zip(clients, saved, strict=True):
        logger.setLevel(logger_level)
        logger.disabled, logger.propagate = disabled, propagate
    root.removeHandler(handler)
    root.setLevel(level)


def postgres_down() -> DependencyUnavailable:
    try:
        try:
            raise psycopg.OperationalError("connection failed: Connection refused")
        except psycopg.OperationalError as exc:
            raise DependencyUnavailable(f"PostgreSQL unavailable: {exc}") from exc
    except DependencyUnavailable as unavailable:
        return unavailable


def test_an_outage_is_logged_once_when_it_starts_then_once_a_minute_then_when_it_ends(
    clock: FakeClock, shown: Collected
) -> None:
    outages = OutageLog(logging.getLogger("test.outages"), clock)
    for _ in range(30):  # Thirty failed tries within 58 s: one line.
        outages.failed("customers", postgres_down())
        clock.advance(2)
    assert shown.lines == [(
        logging.WARNING, "test.outages",
        "customers: PostgreSQL unavailable: connection failed: Connection refused; "
        "waiting for PostgreSQL and retrying",
    )]
    outages.failed("invoices", postgres_down())
    outages.failed("invoices", postgres_down())
    assert shown.lines[1:] == [(
        logging.WARNING, "test.outages",
        "PostgreSQL still unavailable after 1 min 0 s (failed tries: 31); last error: "
        "PostgreSQL unavailable: connection failed: Connection refused",
    )]
    clock.advance(25)
    outages.recovered("customers")
    outages.recovered("invoices")
    assert shown.lines[2:] == [(
        logging.INFO, "test.outages", "PostgreSQL answers again after 1 min 25 s (failed tries: 32)"
    )]
    assert outages.missing() == {}


def test_missing_names_each_dependency_since_when_and_why(clock: FakeClock) -> None:
    outages = OutageLog(logging.getLogger("test.outages"), clock)
    outages.recovered("customers")
    assert outages.missing() == {}
    outages.failed("customers", postgres_down())
    outages.failed("forwarding events", KafkaConnectionError("Unable to bootstrap"))
    missing = outages.missing()
    assert sorted(missing) == ["kafka", "postgres"]
    assert missing["kafka"].describe().startswith("unreachable since 20")
    assert missing["kafka"].describe().endswith(": KafkaConnectionError: Unable to bootstrap")
    outages.recovered("forwarding events")
    assert sorted(outages.missing()) == ["postgres"]


def test_a_dependency_is_read_from_the_error_or_its_cause() -> None:
    assert dependency_of(postgres_down()) == "postgres"
    assert dependency_of(KafkaConnectionError("down")) == "kafka"
    assert dependency_of(TimeoutError()) is None


def test_an_outage_that_ended_and_starts_again_is_logged_again(
    clock: FakeClock, shown: Collected
) -> None:
    outages = OutageLog(logging.getLogger("test.outages"), clock)
    outages.failed("customers", postgres_down())
    outages.recovered("customers")
    clock.advance(1)
    outages.failed("customers", postgres_down())
    levels = [level for level, _, _ in shown.lines]
    assert levels == [logging.WARNING, logging.INFO, logging.WARNING]


def test_repeated_client_errors_are_shown_once_then_summarised_once_a_minute(
    clock: FakeClock, shown: Collected
) -> None:
    repeats = RepeatFilter(clock=clock)
    shown.addFilter(repeats)
    kafka = logging.getLogger("aiokafka.conn")
    for _ in range(500):  # About 16,000 a minute, as during a broker outage.
        kafka.error("Unable connect to node with id %s: %s", 1, "Connection refused")
        clock.advance(0.004)
    assert shown.lines == [
        (logging.ERROR, "aiokafka.conn", "Unable connect to node with id 1: Connection refused")
    ]
    clock.advance(60)
    kafka.error("Unable connect to node with id %s: %s", 1, "Connection refused")
    assert shown.lines[1:] == [
        (logging.ERROR, "streams.outages",
         "aiokafka.conn: 499 more records like 'Unable connect to node with id %s: %s' in the "
         "1 min 0 s after it"),
        (logging.ERROR, "aiokafka.conn", "Unable connect to node with id 1: Connection refused"),
    ]


def test_a_summary_falls_due_with_any_record_once_the_errors_stopped(
    clock: FakeClock, shown: Collected
) -> None:
    repeats = RepeatFilter(clock=clock)
    shown.addFilter(repeats)
    pool = logging.getLogger("psycopg.pool")
    for _ in range(3):
        pool.warning("error connecting in %r: %s", "stripe-streams", "Connection refused")
    clock.advance(61)
    logging.getLogger("test.worker").info("PostgreSQL answers again")
    assert [message for _, _, message in shown.lines] == [
        "error connecting in 'stripe-streams': Connection refused",
        "psycopg.pool: 2 more records like 'error connecting in %r: %s' in the 1 min 0 s after it",
        "PostgreSQL answers again",
    ]


def test_kinds_are_counted_apart_and_other_loggers_pass_untouched(
    clock: FakeClock, shown: Collected
) -> None:
    shown.addFilter(RepeatFilter(clock=clock))
    for _ in range(3):
        logging.getLogger("aiokafka").error("Unable to update metadata from %s", [1])
        logging.getLogger("aiokafka.consumer.fetcher").error("Failed fetch messages from %s", 1)
        logging.getLogger("test.worker").warning("agent %s is slow", "customers")
    assert [name for _, name, _ in shown.lines] == [
        "aiokafka", "aiokafka.consumer.fetcher", "test.worker", "test.worker", "test.worker",
    ]


def test_a_record_reaching_several_handlers_is_counted_once(
    clock: FakeClock, shown: Collected
) -> None:
    second = Collected()
    logging.getLogger().addHandler(second)
    try:
        repeats = RepeatFilter(clock=clock)
        repeats.install([shown, second])
        repeats.install([shown])
        for _ in range(3):
            logging.getLogger("aiokafka").error("Unable to update metadata from %s", [1])
        clock.advance(60)
        logging.getLogger("aiokafka").error("Unable to update metadata from %s", [1])
    finally:
        logging.getLogger().removeHandler(second)
    assert shown.lines == second.lines
    assert "2 more records" in shown.lines[1][2]
