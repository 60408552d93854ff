"""The agents without Kafka or PostgreSQL, through Faust's ``agent.test_context()``.

A fake runtime stands in for the producer and the database: it records what the router forwards
and what the family agents apply, and can make applying fail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable, Sequence

import faust
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.devtools.samples import EventFactory
from streams.errors import CodecError
from streams.log.codec import decode_event, encode_event, event_type_of
from streams.log.consumed import AppliedEvent, ConsumedEvent, Outcome
from streams.log.envelope import DeadLetter, EventEnvelope, EventSource
from streams.settings import Settings
from streams.worker.app import create_app
from streams.worker.runtime import WorkerRuntime
from streams.worker.settling import BatchSettler, RetryPolicy
from tests.unit.test_codec import envelopes
from tests.unit.test_forwarding import RecordingProducer

SETTINGS = Settings.from_env(
    {"STRIPE_STREAMS_TOPIC_PREFIX": "unit", "STRIPE_STREAMS_BATCH_TIMEOUT_MS": "10"}
)


class FakeRuntime(WorkerRuntime):
    """The runtime with the producer and PostgreSQL replaced by in-memory records."""

    def __init__(self, fail: Exception | None = None, settings: Settings = SETTINGS) -> None:
        super().__init__(settings)
        self.recording = RecordingProducer()
        self._producer = self.recording.producer()
        self.applied: list[tuple[str, ConsumedEvent]] = []
        self.batches: list[int] = []
        self.letters: list[DeadLetter] = []
        self.recorded: list[DeadLetter] = []
        self.fail = fail

    async def ready(self) -> None:
        return None

    async def on_stop(self) -> None:
        return None

    async def apply(
        self, family: str, events: Sequence[ConsumedEvent], attempts: int
    ) -> list[AppliedEvent]:
        if self.fail is not None:
            raise self.fail
        self.applied.extend((family, event) for event in events)
        self.batches.append(len(events))
        return [AppliedEvent(event, Outcome.PROCESSED) for event in events]

    async def record_dead_letter(
        self, family: str, event: ConsumedEvent, letter: DeadLetter, projection: str | None
    ) -> int | None:
        self.recorded.append(letter)
        return len(self.recorded)

    async def produce_dead_letter(
        self, dead_letter: int, publish: Callable[[DeadLetter], Awaitable[None]]
    ) -> None:
        await publish(self.recorded[dead_letter - 1])

    async def publish(self, letter: DeadLetter) -> None:
        self.letters.append(letter)

    def settler(self, family: str, *, projection: str | None) -> BatchSettler:
        return BatchSettler(
            family, store=self, projection=projection, publish=self.publish,
            handler_of=lambda event_type: "test", retry=RetryPolicy(max_attempts=1),
        )


def envelope(event_type: str) -> EventEnvelope:
    factory = EventFactory(seed=1)
    if event_type.startswith("radar."):
        event = factory.event(event_type, {"id": "issfr_1", "object": "radar.early_fraud_warning"})
    else:
        event = factory.sample_event(event_type)
    return EventEnvelope.from_event_dict(
        event, payload=json.dumps(event), endpoint="default", source=EventSource.WEBHOOK
    )


async def until(condition: Callable[[], bool]) -> None:
    """Give the agent up to five seconds to make ``condition`` hold."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


def app_with(runtime: FakeRuntime) -> faust.App:
    return create_app(runtime.settings, web_port=1, runtime=runtime)


async def test_the_router_forwards_each_message_unchanged_to_its_family_topic() -> None:
    runtime = FakeRuntime()
    router = app_with(runtime).agents["router"]
    messages = [envelope(t) for t in ("customer.created", "invoice.paid",
                                      "radar.early_fraud_warning.created")]

    async with router.test_context() as agent:
        delivered = [await agent.put(value=encode_event(m), key=m.key, wait=False)
                     for m in messages]
        await until(lambda: len(runtime.recording.sent) == 3)
        await until(lambda: all(d.message.acked for d in delivered))

    assert [(topic, key, value) for topic, _, key, value in runtime.recording.sent] == [
        ("unit.events.customers", messages[0].key, encode_event(messages[0])),
        ("unit.events.invoices", messages[1].key, encode_event(messages[1])),
        ("unit.events.other", messages[2].key, encode_event(messages[2])),
    ]


async def test_the_router_dead_letters_a_message_that_is_not_an_envelope() -> None:
    runtime = FakeRuntime()
    router = app_with(runtime).agents["router"]
    good = envelope("customer.created")

    async with router.test_context() as agent:
        await agent.put(value=b"\x00garbage", key=b"cus_x", wait=False)
        await agent.put(value=encode_event(good), key=good.key, wait=False)
        await until(lambda: len(runtime.recording.sent) == 1 and len(runtime.letters) == 1)

    [letter] = runtime.letters
    assert letter.error_type == "CodecError"
    assert (letter.source_topic, letter.source_offset) == ("unit.events", 0)
    assert [topic for topic, _, _, _ in runtime.recording.sent] == ["unit.events.customers"]


async def test_a_family_agent_applies_batches_with_their_coordinates_then_acks_them() -> None:
    runtime = FakeRuntime()
    projector = app_with(runtime).agents["project_customers"]
    messages = [envelope("customer.created"), envelope("customer.updated")]

    async with projector.test_context() as agent:
        delivered = [await agent.put(value=encode_event(m), key=m.key, wait=False)
                     for m in messages]
        await until(lambda: len(runtime.applied) == 2)
        await until(lambda: all(d.message.acked for d in delivered))

    assert [(family, e.envelope, e.topic, e.offset) for family, e in runtime.applied] == [
        ("customers", messages[0], "unit.events.customers", 0),
        ("customers", messages[1], "unit.events.customers", 1),
    ]
    exposition = runtime.metrics.exposition().decode()
    assert ('stripe_streams_events_processed_total{family="customers",outcome="processed",'
            'type="customer.updated"} 1.0') in exposition


@pytest.mark.filterwarnings("ignore")
async def test_an_error_that_settles_nothing_leaves_the_batch_unacknowledged() -> None:
    runtime = FakeRuntime(fail=RuntimeError("relation stripe.customers does not exist"))
    app = app_with(runtime)
    projector = app.agents["project_customers"]
    message = envelope("customer.created")

    async with projector.test_context() as agent:
        delivered = await agent.put(value=encode_event(message), key=message.key, wait=False)
        await until(lambda: app.crash_reason is not None)
        assert not delivered.message.acked

    assert runtime.applied == []
    assert isinstance(app.crash_reason, RuntimeError)
    assert runtime.recording.sent == []


@given(envelopes)
def test_the_router_reads_the_type_of_any_envelope_without_decoding_it(
    envelope: EventEnvelope,
) -> None:
    assert event_type_of(encode_event(envelope)) == envelope.type


@given(st.binary(max_size=64))
def test_bytes_that_are_not_an_envelope_are_refused_like_a_full_decode(garbage: bytes) -> None:
    try:
        decoded_type = decode_event(garbage).type
    except CodecError:
        with pytest.raises(CodecError):
            event_type_of(garbage)
    else:
        assert event_type_of(garbage) == decoded_type


def test_a_truncated_envelope_is_refused() -> None:
    encoded = encode_event(envelope("customer.created"))

    with pytest.raises(CodecError):
        event_type_of(encoded[:14])


async def test_a_batch_ends_at_its_bytes_of_messages_whatever_its_count() -> None:
    """A backlog of large events is applied in small batches, so memory does not grow with it."""
    messages = [envelope("customer.updated") for _ in range(6)]
    size = len(encode_event(messages[0]))
    settings = dataclasses.replace(
        SETTINGS, batch_bytes=size * 5 // 2, batch_timeout_ms=1000
    )
    runtime = FakeRuntime(settings=settings)
    projector = app_with(runtime).agents["project_customers"]

    async with projector.test_context() as agent:
        for message in messages:
            await agent.put(value=encode_event(message), key=message.key, wait=False)
        await until(lambda: len(runtime.applied) == 6)

    assert runtime.batches == [3, 3]
