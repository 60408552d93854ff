"""The gateway's answers to webhook deliveries, with an in-memory log in place of Kafka."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import gateway as gateway_module
from ingest.gateway import MAX_BODY_BYTES, Gateway
from ingest.producer import EventTooLarge, LogUnavailable
from ingest.signature import signature_header
from streams.log.codec import decode_event
from streams.log.envelope import EventEnvelope, EventSource
from streams.settings import Secret, Settings
from tests.odd_events import OddEvent, corpus

DEFAULT = Secret("whsec_unit_default")
ROTATED = Secret("whsec_unit_rotated")
CONNECT = Secret("whsec_unit_connect")
ENV = {
    "STRIPE_WEBHOOK_SECRETS": f"{DEFAULT.reveal()},{ROTATED.reveal()}",
    "STRIPE_WEBHOOK_SECRETS_CONNECT": CONNECT.reveal(),
    "STRIPE_STREAMS_RETRY_AFTER": "7",
}


class MemoryLog:
    """Keeps what the gateway appends; can be told to be unavailable."""

    def __init__(self) -> None:
        self.appended: list[tuple[bytes, bytes]] = []
        self.unavailable = False
        self.largest = 2 * MAX_BODY_BYTES

    async def append(self, key: bytes, message: bytes) -> None:
        if self.unavailable:
            raise LogUnavailable("Kafka did not acknowledge within 5 s")
        if len(message) > self.largest:
            raise EventTooLarge(f"Kafka refuses an event of {len(message)} bytes")
        self.appended.append((key, message))

    async def reachable(self) -> bool:
        return not self.unavailable

    def envelopes(self) -> list[EventEnvelope]:
        return [decode_event(message) for _, message in self.appended]


def stripe_event(**overrides: Any) -> bytes:
    event: dict[str, Any] = {
        "id": "evt_1QdC7a2eZvKYlo2C",
        "object": "event",
        "api_version": "2026-10-28",
        "created": int(time.time()),
        "data": {"object": {"id": "cus_RqK4", "object": "customer", "email": "a@example.com"}},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": "customer.created",
    }
    event.update(overrides)
    return json.dumps(event).encode()


def signed(body: bytes, secret: Secret = DEFAULT, timestamp: int | None = None) -> dict[str, str]:
    return {"Stripe-Signature": signature_header(body, secret, timestamp)}


@pytest.fixture
def log() -> MemoryLog:
    return MemoryLog()


@pytest.fixture
def gateway(log: MemoryLog) -> Gateway:
    return Gateway(Settings.from_env(ENV), log)


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        yield http


def outcome_count(gateway: Gateway, endpoint: str, outcome: str) -> float:
    value = gateway.metrics.registry.get_sample_value(
        "stripe_streams_webhooks_total", {"endpoint": endpoint, "outcome": outcome}
    )
    return value or 0.0


async def test_a_signed_event_is_appended_keyed_by_object_id_then_answered_200(
    client: httpx.AsyncClient, log: MemoryLog, gateway: Gateway
) -> None:
    body = stripe_event()
    response = await client.post("/webhooks/stripe", content=body, headers=signed(body))

    assert response.status_code == 200
    assert response.json() == {"received": True, "id": "evt_1QdC7a2eZvKYlo2C"}
    [(key, _)] = log.appended
    assert key == b"cus_RqK4"
    [envelope] = log.envelopes()
    assert envelope.payload == body.decode()
    assert envelope.source is EventSource.WEBHOOK
    assert envelope.endpoint == "default"
    assert envelope.account is None
    assert abs(envelope.received_at.timestamp() - time.time()) < 60
    assert outcome_count(gateway, "default", "accepted") == 1


async def test_both_secrets_of_a_rotation_are_accepted(
    client: httpx.AsyncClient, log: MemoryLog
) -> None:
    for secret in (DEFAULT, ROTATED):
        body = stripe_event(id=f"evt_{secret.reveal()[-7:]}")
        response = await client.post("/webhooks/stripe", content=body, headers=signed(body, secret))
        assert response.status_code == 200
    assert len(log.appended) == 2


async def test_a_connect_endpoint_uses_its_own_secret_and_records_the_account(
    client: httpx.AsyncClient, log: MemoryLog
) -> None:
    body = stripe_event(account="acct_1Nv0FGQ9RKHgCVdK")
    response = await client.post(
        "/webhooks/stripe/connect", content=body, headers=signed(body, CONNECT)
    )
    assert response.status_code == 200
    [envelope] = log.envelopes()
    assert (envelope.endpoint, envelope.account) == ("connect", "acct_1Nv0FGQ9RKHgCVdK")

    wrong = await client.post("/webhooks/stripe/connect", content=body, headers=signed(body))
    assert wrong.status_code == 400
    assert len(log.appended) == 1


async def test_a_thin_event_is_verified_appended_and_logged_with_its_related_object(
    client: httpx.AsyncClient, log: MemoryLog, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps(
        {
            "id": "evt_test_65R9Ijk8Z",
            "object": "v2.core.event",
            "type": "v1.billing.meter.error_report_triggered",
            "livemode": False,
            "created": "2026-11-22T06:20:52.246Z",
            "related_object": {
                "id": "mtr_test_61R9IjkV", "type": "billing.meter",
                "url": "/v1/billing/meters/mtr_test_61R9IjkV",
            },
        }
    ).encode()
    with caplog.at_level(logging.INFO, logger="ingest.gateway"):
        response = await client.post("/webhooks/stripe", content=body, headers=signed(body))
    assert response.status_code == 200
    assert log.appended[0][0] == b"mtr_test_61R9IjkV"
    assert "related_object=mtr_test_61R9IjkV" in caplog.text

    unsigned = await client.post("/webhooks/stripe", content=body)
    assert unsigned.status_code == 400
    assert len(log.appended) == 1


@pytest.mark.parametrize(
    ("headers", "reason", "outcome"),
    [
        ({}, "missing Stripe-Signature header", "invalid_signature"),
        ({"Stripe-Signature": "t=1,v1=abc"}, "no v1 signature matches", "invalid_signature"),
        ({"Stripe-Signature": "v1=abc"}, "no timestamp", "invalid_signature"),
        ("connect-secret", "no v1 signature matches", "invalid_signature"),
        ("stale", "older than 300 s", "stale_timestamp"),
    ],
)
async def test_bad_signatures_are_answered_400_with_a_reason_and_write_nothing(
    client: httpx.AsyncClient, log: MemoryLog, gateway: Gateway,
    headers: dict[str, str] | str, reason: str, outcome: str,
) -> None:
    body = stripe_event()
    if headers == "connect-secret":
        headers = signed(body, CONNECT)
    elif headers == "stale":
        headers = signed(body, DEFAULT, int(time.time()) - 301)
    assert isinstance(headers, dict)
    response = await client.post("/webhooks/stripe", content=body, headers=headers)
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert log.appended == []
    assert outcome_count(gateway, "default", outcome) == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json at all", "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"object": "event"}).encode(), "no 'id'"),
        (stripe_event(object="customer"), "'object' is neither"),
        (stripe_event(type=None), "no 'type'"),
        (stripe_event(created="yesterday"), "no integer 'created'"),
        (stripe_event(data={}), "no 'data.object'"),
        (stripe_event(created=2**63), "between years 1 and 9999"),
        (stripe_event(id="evt_\ud800"), "not JSON"),
    ],
)
async def test_signed_bodies_that_are_not_stripe_events_are_answered_400(
    client: httpx.AsyncClient, log: MemoryLog, gateway: Gateway, body: bytes, reason: str
) -> None:
    response = await client.post("/webhooks/stripe", content=body, headers=signed(body))
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert log.appended == []
    assert outcome_count(gateway, "default", "malformed") == 1


async def test_an_unknown_endpoint_is_404(client: httpx.AsyncClient, log: MemoryLog) -> None:
    body = stripe_event()
    for path in ("/webhooks/stripe/platform", "/webhooks/stripe/", "/webhooks/stripe/connect/x"):
        response = await client.post(path, content=body, headers=signed(body))
        assert response.status_code == 404, path
    assert log.appended == []


async def test_a_declared_body_over_1_mib_is_413_before_it_is_read(
    gateway: Gateway, log: MemoryLog
) -> None:
    sent: list[MutableMapping[str, Any]] = []
    reads = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/webhooks/stripe", "client": ("10.0.0.1", 1),
        "headers": [(b"content-length", str(MAX_BODY_BYTES + 1).encode())],
    }
    await gateway(scope, receive, send)
    assert reads == 0
    assert sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]
    assert outcome_count(gateway, "default", "too_large") == 1


async def test_a_streamed_body_is_cut_off_as_soon_as_it_passes_1_mib(
    client: httpx.AsyncClient, log: MemoryLog
) -> None:
    chunks_sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        for _ in range(4096):
            chunks_sent += 1
            yield b"x" * 65536

    body = stripe_event()
    response = await client.post("/webhooks/stripe", content=chunks(), headers=signed(body))
    assert response.status_code == 413
    assert log.appended == []
    assert chunks_sent < 4096


async def test_a_body_that_trickles_in_is_given_up_with_408_and_writes_nothing(
    gateway: Gateway, log: MemoryLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_module, "BODY_SECONDS", 0.05)
    sent: list[MutableMapping[str, Any]] = []
    pieces = iter([{"type": "http.request", "body": b'{"id": ', "more_body": True}])

    async def receive() -> dict[str, Any]:
        for piece in pieces:
            return piece
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/webhooks/stripe", "headers": []}
    await gateway(scope, receive, send)
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert log.appended == []


async def test_a_body_of_exactly_1_mib_is_read_and_judged(client: httpx.AsyncClient) -> None:
    body = stripe_event(padding="x" * (MAX_BODY_BYTES - len(stripe_event(padding=""))))
    assert len(body) == MAX_BODY_BYTES
    response = await client.post("/webhooks/stripe", content=body, headers=signed(body))
    assert response.status_code == 200


async def test_when_the_log_is_unavailable_the_answer_is_503_with_retry_after(
    client: httpx.AsyncClient, log: MemoryLog, gateway: Gateway
) -> None:
    log.unavailable = True
    body = stripe_event()
    response = await client.post("/webhooks/stripe", content=body, headers=signed(body))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert outcome_count(gateway, "default", "unavailable") == 1

    log.unavailable = False
    again = await client.post("/webhooks/stripe", content=body, headers=signed(body))
    assert again.status_code == 200


async def test_an_event_kafka_refuses_for_its_size_is_413_not_a_5xx(
    client: httpx.AsyncClient, log: MemoryLog, gateway: Gateway
) -> None:
    log.largest = 2000
    body = stripe_event(padding="x" * 3000)
    response = await client.post("/webhooks/stripe", content=body, headers=signed(body))
    assert response.status_code == 413
    assert "Kafka refuses an event" in response.json()["error"]
    assert outcome_count(gateway, "default", "too_large") == 1


async def test_neither_secrets_nor_bodies_reach_the_logs_or_the_answers(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    body = stripe_event(description="card-holder-detail-7731")
    with caplog.at_level(logging.DEBUG):
        answers = [
            await client.post("/webhooks/stripe", content=body, headers=signed(body, CONNECT)),
            await client.post("/webhooks/stripe", content=b"{x", headers=signed(b"{x")),
            await client.post("/webhooks/stripe", content=body, headers=signed(body)),
        ]
    for secret in (DEFAULT, ROTATED, CONNECT):
        assert secret.reveal() not in caplog.text
        assert all(secret.reveal() not in answer.text for answer in answers)
    assert "card-holder-detail-7731" not in caplog.text


def _post(gateway: Gateway, body: bytes, headers: dict[bytes, bytes]) -> httpx.Response:
    async def exchange() -> httpx.Response:
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            return await http.post("/webhooks/stripe", content=body, headers=headers)

    return asyncio.run(exchange())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.binary(max_size=200).filter(lambda raw: not {0, 10, 13} & set(raw)),
    body=st.binary(max_size=600),
)
def test_fuzzed_signature_headers_are_never_written_and_never_a_5xx(
    header: bytes, body: bytes
) -> None:
    log = MemoryLog()
    gateway = Gateway(Settings.from_env(ENV), log)
    response = _post(gateway, body, {b"Stripe-Signature": header} if header else {})
    assert response.status_code == 400
    assert log.appended == []


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_EVENTISH = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=12) | _JSON_VALUES,
        "object": st.sampled_from(["event", "v2.core.event", "customer"]) | _JSON_VALUES,
        "type": st.text(max_size=20) | _JSON_VALUES,
        "created": st.integers() | st.text(max_size=30) | _JSON_VALUES,
        "data": st.fixed_dictionaries({}, optional={"object": _JSON_VALUES}) | _JSON_VALUES,
        "related_object": st.fixed_dictionaries({}, optional={"id": _JSON_VALUES}),
        "account": _JSON_VALUES,
        "livemode": _JSON_VALUES,
        "api_version": _JSON_VALUES,
    },
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.one_of(st.binary(max_size=300), _EVENTISH.map(lambda e: json.dumps(e).encode())),
)
def test_signed_fuzzed_bodies_get_200_or_400_and_only_200s_are_written(body: bytes) -> None:
    log = MemoryLog()
    gateway = Gateway(Settings.from_env(ENV), log)
    header = signature_header(body, DEFAULT).encode()
    response = _post(gateway, body, {b"Stripe-Signature": header})
    assert response.status_code in (200, 400)
    if response.status_code == 200:
        [envelope] = log.envelopes()
        assert envelope.payload.encode() == body
        assert response.json()["id"] == envelope.id
    else:
        assert log.appended == []


@pytest.mark.parametrize("odd", corpus(), ids=lambda odd: odd.name)
async def test_odd_but_authentic_events_are_logged_or_refused_as_malformed(
    client: httpx.AsyncClient, log: MemoryLog, gateway: Gateway, odd: OddEvent
) -> None:
    response = await client.post("/webhooks/stripe", content=odd.body, headers=signed(odd.body))

    assert response.status_code == odd.gateway_status, response.text
    if odd.gateway_status == 200:
        [(_, message)] = log.appended
        assert decode_event(message).payload == odd.body.decode()
    else:
        assert log.appended == []
        assert outcome_count(gateway, "default", "malformed") == 1
        assert len(response.json()["error"]) < 200
