"""The real gateway process (`stripe-streams gateway`) against a real Kafka broker.

Each test reads the topic back: what Stripe was answered 200 for is in the log, keyed by object
id and decodable; what was rejected is not there at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO, Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.signature import signature_header
from streams.devtools.services.kafka import LocalKafka
from streams.log.codec import decode_event
from streams.log.envelope import EventEnvelope, EventSource
from streams.log.topics import delete_topics
from streams.settings import Secret
from tests.integration.worker_support import free_port

OLD = Secret("whsec_test_previous")
DEFAULT = Secret("whsec_test_default")
CONNECT = Secret("whsec_test_connect")
PARTITIONS = 3


@contextmanager
def gateway_process(
    bootstrap: str, prefix: str, **env: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run `stripe-streams gateway` until the block ends; yield it and its base URL."""
    port = free_port()
    environment = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "STRIPE_STREAMS_TOPIC_PREFIX": prefix,
        "STRIPE_STREAMS_PARTITIONS": str(PARTITIONS),
        "STRIPE_WEBHOOK_SECRETS": f"{OLD.reveal()},{DEFAULT.reveal()}",
        "STRIPE_WEBHOOK_SECRETS_CONNECT": CONNECT.reveal(),
        **env,
    }
    # A file, not a pipe nobody reads: a full pipe would stall the gateway's logging.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "gateway", "--host", "127.0.0.1",
             "--port", str(port)],
            env=environment, stdout=subprocess.DEVNULL, stderr=log,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(process, base, log)
            yield process, base
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_ready(process: subprocess.Popen[bytes], base: str, log: IO[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise AssertionError(f"gateway exited: {log.read().decode()[-3000:]}")
        with suppress(httpx.HTTPError):
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError("gateway was not ready within 60 s")


def read_log(bootstrap: str, topic: str) -> list[tuple[bytes, EventEnvelope]]:
    """Every (key, envelope) in the topic, up to its current end."""

    async def read() -> list[tuple[bytes, EventEnvelope]]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            records: list[tuple[bytes, EventEnvelope]] = []
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                batches = await consumer.getmany(timeout_ms=1000)
                for messages in batches.values():
                    records.extend((m.key, decode_event(m.value)) for m in messages)
            return records
        finally:
            await consumer.stop()

    return asyncio.run(read())


def stripe_event(**overrides: Any) -> bytes:
    n = uuid.uuid4().hex[:16]
    event: dict[str, Any] = {
        "id": f"evt_{n}",
        "object": "event",
        "api_version": "2026-10-28",
        "created": int(time.time()),
        "data": {"object": {"id": f"sub_{n}", "object": "subscription", "status": "active"}},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": f"req_{n}", "idempotency_key": None},
        "type": "customer.subscription.updated",
    }
    event.update(overrides)
    return json.dumps(event).encode()


def deliver(
    base: str, body: bytes, secret: Secret | None = DEFAULT, path: str = "/webhooks/stripe",
    **headers: str,
) -> httpx.Response:
    if secret is not None:
        headers["Stripe-Signature"] = signature_header(body, secret)
    return httpx.post(f"{base}{path}", content=body, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def module_prefix(kafka_bootstrap: str) -> Iterator[str]:
    prefix = f"gw{uuid.uuid4().hex[:10]}"
    yield prefix
    with suppress(Exception):
        asyncio.run(delete_topics(kafka_bootstrap, f"{prefix}."))


@pytest.fixture(scope="module")
def gateway(kafka_bootstrap: str, module_prefix: str) -> Iterator[str]:
    """Base URL of one gateway shared by the tests that only add their own events."""
    with gateway_process(kafka_bootstrap, module_prefix) as (_, base):
        yield base


@pytest.fixture
def log_of(kafka_bootstrap: str, module_prefix: str) -> Any:
    def envelopes_by_id() -> dict[str, tuple[bytes, EventEnvelope]]:
        records = read_log(kafka_bootstrap, f"{module_prefix}.events")
        return {envelope.id: (key, envelope) for key, envelope in records}

    return envelopes_by_id


def test_a_verified_event_is_in_the_log_with_its_key_before_the_200(
    gateway: str, log_of: Any
) -> None:
    body = stripe_event()
    event = json.loads(body)
    response = deliver(gateway, body)
    assert response.status_code == 200
    assert response.json() == {"received": True, "id": event["id"]}

    key, envelope = log_of()[event["id"]]
    assert key == event["data"]["object"]["id"].encode()
    assert envelope.payload == body.decode()
    assert envelope.type == "customer.subscription.updated"
    assert envelope.object_type == "subscription"
    assert (envelope.source, envelope.endpoint) == (EventSource.WEBHOOK, "default")
    assert abs(envelope.received_at.timestamp() - time.time()) < 120


def test_every_rejection_answers_its_status_and_writes_nothing(
    gateway: str, log_of: Any
) -> None:
    rejected: dict[str, tuple[int, httpx.Response]] = {}

    def expect(status: int, body: bytes, response: httpx.Response) -> None:
        rejected[json.loads(body)["id"]] = (status, response)

    body = stripe_event()
    expect(400, body, deliver(gateway, body, secret=None))
    body = stripe_event()
    expect(400, body, deliver(gateway, body, secret=CONNECT))
    body = stripe_event()
    stale = signature_header(body, DEFAULT, int(time.time()) - 600)
    expect(400, body, deliver(gateway, body, secret=None, **{"Stripe-Signature": stale}))
    body = stripe_event(object="subscription")
    expect(400, body, deliver(gateway, body))
    body = stripe_event(data={"previous_attributes": {}})
    expect(400, body, deliver(gateway, body))
    body = stripe_event()
    expect(404, body, deliver(gateway, body, path="/webhooks/stripe/platform"))
    not_json = b"{'id': 'evt_x'"
    assert deliver(gateway, not_json).status_code == 400

    for event_id, (status, response) in rejected.items():
        assert response.status_code == status, (event_id, response.text)
        assert DEFAULT.reveal() not in response.text
    assert rejected.keys().isdisjoint(log_of())


def test_during_rotation_the_old_and_the_new_secret_are_both_accepted(
    gateway: str, log_of: Any
) -> None:
    old, new = stripe_event(), stripe_event()
    assert deliver(gateway, old, secret=OLD).status_code == 200
    assert deliver(gateway, new, secret=DEFAULT).status_code == 200
    written = log_of()
    assert json.loads(old)["id"] in written
    assert json.loads(new)["id"] in written


def test_a_connect_endpoint_has_its_own_secret_and_records_the_account(
    gateway: str, log_of: Any
) -> None:
    body = stripe_event(account="acct_1Nv0FGQ9RKHgCVdK")
    event_id = json.loads(body)["id"]
    refused = deliver(gateway, body, secret=DEFAULT, path="/webhooks/stripe/connect")
    assert refused.status_code == 400
    assert event_id not in log_of()

    accepted = deliver(gateway, body, secret=CONNECT, path="/webhooks/stripe/connect")
    assert accepted.status_code == 200
    _, envelope = log_of()[event_id]
    assert (envelope.endpoint, envelope.account) == ("connect", "acct_1Nv0FGQ9RKHgCVdK")


def test_a_thin_event_is_verified_and_appended_under_its_related_object(
    gateway: str, log_of: Any
) -> None:
    n = uuid.uuid4().hex[:12]
    body = json.dumps(
        {
            "id": f"evt_test_{n}",
            "object": "v2.core.event",
            "type": "v1.billing.meter.error_report_triggered",
            "livemode": False,
            "created": "2026-11-22T06:20:52.246Z",
            "related_object": {"id": f"mtr_test_{n}", "type": "billing.meter",
                               "url": f"/v1/billing/meters/mtr_test_{n}"},
        }
    ).encode()
    assert deliver(gateway, body, secret=None).status_code == 400
    assert deliver(gateway, body).status_code == 200
    key, envelope = log_of()[f"evt_test_{n}"]
    assert key == f"mtr_test_{n}".encode()
    assert envelope.object_type == "billing.meter"


def test_readiness_health_and_metrics_are_served(gateway: str) -> None:
    assert httpx.get(f"{gateway}/healthz").json() == {"alive": True}
    assert httpx.get(f"{gateway}/readyz").json() == {"ready": True}
    metrics = httpx.get(f"{gateway}/metrics").text
    assert 'stripe_streams_webhooks_total{endpoint="connect",outcome="accepted"}' in metrics
    assert "stripe_streams_ingest_seconds_bucket" in metrics


_HEADERS = st.one_of(
    # HTTP strips a value's surrounding whitespace, and the client refuses to send it.
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=120).map(
        str.strip
    ),
    st.lists(
        st.tuples(
            st.sampled_from(["t", "v1", "v0", "x", ""]),
            st.text("0123456789abcdef", max_size=70),
        ),
        max_size=5,
    ).map(lambda items: ",".join(f"{k}={v}" for k, v in items)),
)
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
_FIELDS = st.sampled_from(["object", "type", "created", "data", "account", "livemode", "padding"])


def test_fuzzed_headers_never_get_a_valid_event_written(gateway: str, log_of: Any) -> None:
    refused: list[str] = []

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(header=_HEADERS, tail=st.binary(max_size=200), tamper=st.booleans())
    def deliver_fuzzed(header: str, tail: bytes, tamper: bool) -> None:
        body = stripe_event()
        if tamper:
            header = signature_header(body, DEFAULT)
            body += tail or b" "
        response = deliver(gateway, body, secret=None, **{"Stripe-Signature": header})
        assert response.status_code == 400
        refused.append(_event_id(body))

    deliver_fuzzed()
    assert refused
    assert set(refused).isdisjoint(log_of())


def test_fuzzed_signed_bodies_get_200_or_400_and_only_200s_are_written(
    gateway: str, log_of: Any
) -> None:
    accepted: list[str] = []
    refused: list[str] = []

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(field=_FIELDS, value=_JSON_VALUES, garbage=st.binary(max_size=300) | st.none())
    def deliver_fuzzed(field: str, value: Any, garbage: bytes | None) -> None:
        body = stripe_event(**{field: value})
        if garbage is not None:
            body = body[: len(body) // 2] + garbage
        response = deliver(gateway, body)
        assert response.status_code in (200, 400), response.text
        event_id = _event_id(body)
        (accepted if response.status_code == 200 else refused).append(event_id)

    deliver_fuzzed()
    written = log_of()
    assert set(accepted) <= written.keys()
    assert set(refused).isdisjoint(written)


def _event_id(body: bytes) -> str:
    """The unique id stripe_event() put at the start of a body, even of a damaged one."""
    return body[8:8 + 20].decode()


def test_a_body_declared_over_1_mib_is_refused_before_it_is_sent(gateway: str) -> None:
    host, port = gateway.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            b"POST /webhooks/stripe HTTP/1.1\r\nHost: gateway\r\n"
            b"Stripe-Signature: t=1,v1=00\r\nContent-Length: 5000000\r\n\r\n{\"id\": "
        )
        answer = connection.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in answer.lower()


def test_an_event_of_almost_1_mib_is_accepted_and_lands_whole(
    gateway: str, log_of: Any
) -> None:
    event = json.loads(stripe_event())
    event["data"]["object"]["metadata"] = {"notes": ""}
    padding = 1024 * 1024 - len(json.dumps(event).encode()) - 1
    event["data"]["object"]["metadata"]["notes"] = "x" * padding
    body = json.dumps(event).encode()
    assert 1024 * 1024 - 8 < len(body) <= 1024 * 1024

    assert deliver(gateway, body).status_code == 200
    assert log_of()[event["id"]][1].payload == body.decode()


def test_a_stopped_broker_gives_503_then_deliveries_succeed_once_it_is_back(
    private_kafka: LocalKafka,
) -> None:
    private_kafka.up()
    prefix = f"gw{uuid.uuid4().hex[:10]}"
    with gateway_process(
        private_kafka.address, prefix, STRIPE_STREAMS_PRODUCE_TIMEOUT="2",
        STRIPE_STREAMS_RETRY_AFTER="3",
    ) as (_, base):
        before = stripe_event()
        assert deliver(base, before).status_code == 200

        private_kafka.down()
        during = stripe_event()
        started = time.monotonic()
        refused = deliver(base, during)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "3"
        assert time.monotonic() - started < 10
        assert httpx.get(f"{base}/readyz", timeout=30).status_code == 503

        private_kafka.up()
        deadline = time.monotonic() + 60
        while (status := deliver(base, during).status_code) != 200:
            assert status == 503
            assert time.monotonic() < deadline, "deliveries did not recover within 60 s"
            time.sleep(1)
        after = stripe_event()
        assert deliver(base, after).status_code == 200

    written = {e.id for _, e in read_log(private_kafka.address, f"{prefix}.events")}
    assert {json.loads(b)["id"] for b in (before, during, after)} <= written


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_loses_no_event_that_was_answered_200(
    kafka_bootstrap: str, workers: int
) -> None:
    prefix = f"gw{uuid.uuid4().hex[:10]}"
    answered: list[str] = []
    stop = threading.Event()

    def sender() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                body = stripe_event()
                headers = {"Stripe-Signature": signature_header(body, DEFAULT)}
                try:
                    response = client.post(f"{base}/webhooks/stripe", content=body, headers=headers)
                except httpx.HTTPError:
                    continue
                if response.status_code == 200:
                    answered.append(response.json()["id"])

    try:
        with gateway_process(
            kafka_bootstrap, prefix, STRIPE_STREAMS_GATEWAY_WORKERS=str(workers)
        ) as (process, base):
            senders = [threading.Thread(target=sender) for _ in range(16)]
            for thread in senders:
                thread.start()
            while len(answered) < 300:
                time.sleep(0.05)
            # Any worker's /metrics counts the deliveries every worker accepted.
            metrics_before_stop = [
                _accepted(httpx.get(f"{base}/metrics", timeout=10).text)
            ]
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
            stop.set()
            for thread in senders:
                thread.join()
        assert process.returncode in (0, -signal.SIGTERM)
        written = {e.id for _, e in read_log(kafka_bootstrap, f"{prefix}.events")}
        assert len(answered) >= 300
        assert set(answered) <= written
        assert metrics_before_stop[0] >= 300
    finally:
        stop.set()
        with suppress(Exception):
            asyncio.run(delete_topics(kafka_bootstrap, f"{prefix}."))


def _accepted(metrics: str) -> float:
    line = 'stripe_streams_webhooks_total{endpoint="default",outcome="accepted"} '
    rows = [row for row in metrics.splitlines() if row.startswith(line)]
    return sum(float(row.removeprefix(line)) for row in rows)
