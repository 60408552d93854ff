"""The retry and dead-letter policy: poison events are isolated, retried, dead-lettered once;
outages are waited out without limit; anything else stops the agent."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.errors import DependencyUnavailable, HandlerError
from streams.log.consumed import (
    AppliedEvent,
    BatchRejected,
    ConsumedEvent,
    EventRejected,
    Outcome,
)
from streams.log.envelope import DeadLetter, EventEnvelope, EventSource
from streams.worker.settling import BatchSettler, RetryPolicy, patiently

TOPIC = "stripe.events.customers"


def consumed(offset: int, partition: int = 0) -> ConsumedEvent:
    envelope = EventEnvelope(
        id=f"evt_{partition}_{offset}",
        type="customer.updated",
        object_id=f"cus_{offset % 3}",
        object_type="customer",
        created=1_700_000_000 + offset,
        api_version=None,
        livemode=False,
        account=None,
        endpoint="default",
        source=EventSource.WEBHOOK,
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        payload="{}",
    )
    return ConsumedEvent(envelope, TOPIC, partition, offset)


@dataclass
class FakeProjection:
    """Stands in for the writer, the dead-letter topic and ops.dead_letters."""

    poison: set[str] = field(default_factory=set)
    anonymous_poison: bool = False
    """Refuse batches holding a poison event without naming it (like a DataError)."""
    transient: dict[str, int] = field(default_factory=dict)
    """Event id -> how many more attempts fail before it succeeds."""
    outages: int = 0
    """How many more calls of apply fail with DependencyUnavailable."""
    publish_outages: int = 0
    """How many more calls of publish fail with DependencyUnavailable."""
    broken: Exception | None = None
    """An error every apply raises."""
    applied: list[str] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    published: list[DeadLetter] = field(default_factory=list)
    recorded: list[DeadLetter] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    async def apply(
        self, family: str, events: Sequence[ConsumedEvent], attempts: int
    ) -> list[AppliedEvent]:
        if self.broken is not None:
            raise self.broken
        if self.outages:
            self.outages -= 1
            raise DependencyUnavailable("PostgreSQL unavailable: connection refused")
        for event in events:
            event_id = event.envelope.id
            if self.transient.get(event_id, 0) > 0:
                self.transient[event_id] -= 1
                raise EventRejected(event, "customers.customer_changed", ValueError("flaky"))
            if event_id in self.poison:
                if self.anonymous_poison:
                    raise BatchRejected(psycopg.DataError("invalid byte sequence"))
                raise EventRejected(event, "customers.customer_changed", HandlerError("bad"))
        for event in events:
            self.applied.append(event.envelope.id)
            self.attempts[event.envelope.id] = attempts
            self.steps.append(f"apply {event.envelope.id}")
        return [AppliedEvent(e, Outcome.PROCESSED) for e in events]

    async def publish(self, letter: DeadLetter) -> None:
        if self.publish_outages:
            self.publish_outages -= 1
            raise DependencyUnavailable("Kafka unavailable")
        self.published.append(letter)
        self.steps.append(f"publish {letter.event.id}")

    async def record_dead_letter(
        self, family: str, event: ConsumedEvent, letter: DeadLetter, projection: str | None
    ) -> int | None:
        self.recorded.append(letter)
        self.steps.append(f"record {event.envelope.id}")
        return len(self.recorded)

    async def produce_dead_letter(
        self, dead_letter: int, publish: Callable[[DeadLetter], Awaitable[None]]
    ) -> None:
        await publish(self.recorded[dead_letter - 1])

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def policy(self, retry: RetryPolicy | None = None) -> BatchSettler:
        return BatchSettler(
            "customers",
            store=self,
            projection="customers",
            publish=self.publish,
            handler_of=lambda event_type: "customers.customer_changed",
            retry=retry or RetryPolicy(max_attempts=3, backoff=0.5, backoff_max=30.0),
            sleep=self.sleep,
        )


def run(policy: BatchSettler, events: Sequence[ConsumedEvent]) -> list[AppliedEvent]:
    return asyncio.run(policy.apply(events))


def test_a_poison_event_is_retried_with_backoff_then_dead_lettered_and_the_rest_applied() -> None:
    fake = FakeProjection(poison={"evt_0_2"})
    events = [consumed(offset) for offset in range(5)]

    results = run(fake.policy(), events)

    assert [r.outcome for r in results] == [
        Outcome.PROCESSED, Outcome.PROCESSED, Outcome.DEAD_LETTERED,
        Outcome.PROCESSED, Outcome.PROCESSED,
    ]
    assert fake.applied == ["evt_0_0", "evt_0_1", "evt_0_3", "evt_0_4"]
    assert fake.sleeps == [0.5, 1.0]
    [letter] = fake.published
    assert fake.recorded == [letter]
    assert (letter.event.id, letter.attempts) == ("evt_0_2", 3)
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (TOPIC, 0, 2)
    assert (letter.error_type, letter.error_message) == ("HandlerError", "bad")
    assert letter.handler == "customers.customer_changed"
    assert letter.first_failed_at <= letter.last_failed_at


def test_the_dead_letter_is_recorded_before_it_is_produced_and_in_log_order() -> None:
    fake = FakeProjection(poison={"evt_0_1"})

    run(fake.policy(), [consumed(0), consumed(1), consumed(2)])

    assert fake.steps == [
        "apply evt_0_0", "record evt_0_1", "publish evt_0_1", "apply evt_0_2",
    ]


def test_a_batch_refused_without_naming_the_event_is_split_until_the_event_is_found() -> None:
    fake = FakeProjection(poison={"evt_0_5"}, anonymous_poison=True)
    events = [consumed(offset) for offset in range(8)]

    results = run(fake.policy(), events)

    assert [r.event.offset for r in results] == list(range(8))
    assert [r.event.offset for r in results if r.outcome is Outcome.DEAD_LETTERED] == [5]
    assert fake.applied == [f"evt_0_{n}" for n in range(8) if n != 5]
    [letter] = fake.published
    assert letter.error_type == "DataError"


def test_an_event_that_succeeds_on_a_retry_is_applied_with_its_attempt_count() -> None:
    fake = FakeProjection(transient={"evt_0_1": 1})

    results = run(fake.policy(), [consumed(0), consumed(1)])

    assert [r.outcome for r in results] == [Outcome.PROCESSED, Outcome.PROCESSED]
    assert fake.attempts == {"evt_0_0": 1, "evt_0_1": 2}
    assert fake.published == []


def test_one_attempt_means_no_retry() -> None:
    fake = FakeProjection(poison={"evt_0_0"})

    run(fake.policy(RetryPolicy(max_attempts=1)), [consumed(0)])

    assert fake.sleeps == []
    assert [letter.attempts for letter in fake.published] == [1]


def test_an_outage_is_waited_out_without_limit_and_dead_letters_nothing() -> None:
    fake = FakeProjection(outages=40)
    events = [consumed(offset) for offset in range(3)]

    results = run(fake.policy(RetryPolicy(max_attempts=2, backoff=0.5, backoff_max=5.0)), events)

    assert [r.outcome for r in results] == [Outcome.PROCESSED] * 3
    assert fake.published == []
    assert len(fake.sleeps) == 40
    assert max(fake.sleeps) == 5.0
    assert fake.sleeps[:4] == [0.5, 1.0, 2.0, 4.0]


def test_an_outage_while_dead_lettering_is_waited_out_too() -> None:
    fake = FakeProjection(poison={"evt_0_0"}, publish_outages=3)

    results = run(fake.policy(RetryPolicy(max_attempts=1)), [consumed(0)])

    assert [r.outcome for r in results] == [Outcome.DEAD_LETTERED]
    assert len(fake.published) == 1 and len(fake.recorded) == 1
    assert len(fake.sleeps) == 3


def test_an_error_that_is_neither_poison_nor_outage_stops_the_agent() -> None:
    missing = psycopg.errors.UndefinedTable('relation "stripe.customers" does not exist')
    fake = FakeProjection(broken=missing)

    with pytest.raises(psycopg.errors.UndefinedTable):
        run(fake.policy(), [consumed(0)])
    assert fake.published == []
    assert fake.sleeps == []


def test_backoff_doubles_from_the_base_and_stops_at_the_maximum() -> None:
    retry = RetryPolicy(max_attempts=10, backoff=0.25, backoff_max=3.0)

    assert [retry.delay(n) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 3.0, 3.0]


def test_patiently_raises_a_non_retriable_error_at_once() -> None:
    calls = 0

    async def fails() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("not retriable")

    with pytest.raises(ValueError):
        asyncio.run(patiently(fails, RetryPolicy(), "test"))
    assert calls == 1


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=40),
    data=st.data(),
    anonymous=st.booleans(),
)
def test_every_event_is_settled_once_in_log_order_whatever_fails(
    size: int, data: st.DataObject, anonymous: bool
) -> None:
    events = [consumed(offset, partition=offset % 3) for offset in range(size)]
    poison = data.draw(st.sets(st.sampled_from([e.envelope.id for e in events])))
    fake = FakeProjection(poison=set(poison), anonymous_poison=anonymous)

    results = run(fake.policy(RetryPolicy(max_attempts=2)), events)

    assert [r.event for r in results] == events
    assert {r.event.envelope.id for r in results if r.outcome is Outcome.DEAD_LETTERED} == poison
    assert [letter.event.id for letter in fake.published] == [
        e.envelope.id for e in events if e.envelope.id in poison
    ]
    assert fake.applied == [e.envelope.id for e in events if e.envelope.id not in poison]
