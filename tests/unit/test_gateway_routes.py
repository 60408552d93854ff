"""Health, readiness, metrics, the opt-in admission rules and the lifespan of the gateway."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import pytest

from ingest.gateway import Gateway
from ingest.producer import LogUnavailable
from ingest.signature import signature_header
from ingest.supervisor import run_gateway
from streams.errors import ConfigurationError
from streams.settings import Secret, Settings

SECRET = Secret("whsec_unit_routes")


class GatedLog:
    """An in-memory log whose appends wait until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.appended: list[bytes] = []
        self.waiting = 0
        self.reachable_answer = True
        self._arrivals = asyncio.Condition()

    async def append(self, key: bytes, message: bytes) -> None:
        async with self._arrivals:
            self.waiting += 1
            self._arrivals.notify_all()
        await self.gate.wait()
        self.waiting -= 1
        self.appended.append(key)

    async def reachable(self) -> bool:
        return self.reachable_answer

    async def until_waiting(self, count: int) -> None:
        async with self._arrivals:
            await self._arrivals.wait_for(lambda: self.waiting >= count)


def event(n: int = 1) -> bytes:
    return json.dumps(
        {
            "id": f"evt_{n}", "object": "event", "type": "charge.succeeded",
            "created": int(time.time()), "data": {"object": {"id": f"ch_{n}", "object": "charge"}},
        }
    ).encode()


def gateway_with(log: GatedLog, **env: str) -> Gateway:
    return Gateway(Settings.from_env({"STRIPE_WEBHOOK_SECRETS": SECRET.reveal(), **env}), log)


def client_of(app: Gateway, source: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(source, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")


async def post(http: httpx.AsyncClient, n: int = 1) -> httpx.Response:
    body = event(n)
    headers = {"Stripe-Signature": signature_header(body, SECRET)}
    return await http.post("/webhooks/stripe", content=body, headers=headers)


@pytest.fixture
def log() -> GatedLog:
    return GatedLog()


@pytest.fixture
async def http(log: GatedLog) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(gateway_with(log)) as client:
        yield client


async def test_healthz_answers_while_the_process_lives(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"alive": True})


async def test_readyz_follows_whether_kafka_answers(
    http: httpx.AsyncClient, log: GatedLog
) -> None:
    assert (await http.get("/readyz")).status_code == 200
    log.reachable_answer = False
    response = await http.get("/readyz")
    assert response.status_code == 503
    assert (response.json()["ready"], response.json()["missing"]) == (False, ["kafka"])


async def test_metrics_count_outcomes_per_endpoint_and_time_the_ingest(
    http: httpx.AsyncClient,
) -> None:
    await post(http)
    await http.post("/webhooks/stripe", content=b"{}")
    text = (await http.get("/metrics")).text
    assert 'stripe_streams_webhooks_total{endpoint="default",outcome="accepted"} 1.0' in text
    assert (
        'stripe_streams_webhooks_total{endpoint="default",outcome="invalid_signature"} 1.0'
        in text
    )
    assert 'stripe_streams_webhooks_total{endpoint="default",outcome="unavailable"} 0.0' in text
    assert "stripe_streams_ingest_seconds_count 1.0" in text
    assert "process_resident_memory_bytes" in text


async def test_webhook_routes_take_only_post_and_others_only_get(
    http: httpx.AsyncClient,
) -> None:
    wrong_webhook = await http.get("/webhooks/stripe")
    assert (wrong_webhook.status_code, wrong_webhook.headers["allow"]) == (405, "POST")
    wrong_health = await http.post("/healthz")
    assert wrong_health.status_code == 405
    assert (await http.get("/nowhere")).status_code == 404


async def test_the_network_allow_list_is_off_by_default(log: GatedLog) -> None:
    async with client_of(gateway_with(log), source="198.51.100.7") as client:
        assert (await post(client)).status_code == 200


async def test_sources_outside_the_allowed_networks_get_403_and_write_nothing(
    log: GatedLog,
) -> None:
    app = gateway_with(log, STRIPE_STREAMS_ALLOWED_NETWORKS="3.18.12.63/32, 10.20.0.0/16")
    async with client_of(app, source="198.51.100.7") as outsider:
        response = await post(outsider)
        assert response.status_code == 403
    assert log.appended == []
    for allowed in ("3.18.12.63", "10.20.3.4"):
        async with client_of(app, source=allowed) as stripe:
            assert (await post(stripe)).status_code == 200
    assert app.metrics.registry.get_sample_value(
        "stripe_streams_webhooks_total", {"endpoint": "default", "outcome": "forbidden"}
    ) == 1.0


async def test_the_concurrency_bound_answers_429_beyond_it_and_frees_slots(
    log: GatedLog,
) -> None:
    app = gateway_with(log, STRIPE_STREAMS_ENDPOINT_CONCURRENCY="2")
    log.gate.clear()
    async with client_of(app) as client:
        waiting = [asyncio.create_task(post(client, n)) for n in (1, 2)]
        await log.until_waiting(2)
        refused = await post(client, 3)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "10"
        log.gate.set()
        assert [r.status_code for r in await asyncio.gather(*waiting)] == [200, 200]
        assert (await post(client, 4)).status_code == 200
    assert sorted(log.appended) == [b"ch_1", b"ch_2", b"ch_4"]


async def test_an_overload_is_shed_with_503_once_the_queue_to_kafka_is_full(
    log: GatedLog, caplog: pytest.LogCaptureFixture
) -> None:
    # A bound one delivery fills: the first is always taken, the next ones shed while it waits.
    app = gateway_with(log, STRIPE_STREAMS_GATEWAY_QUEUE_BYTES="1")
    log.gate.clear()
    async with client_of(app) as client:
        waiting = asyncio.create_task(post(client, 1))
        await log.until_waiting(1)
        shed = [await post(client, n) for n in (2, 3)]
        assert [r.status_code for r in shed] == [503, 503]
        assert shed[0].headers["retry-after"] == "10"
        assert shed[0].json() == {"error": "the event log does not keep up; retry later"}
        log.gate.set()
        assert (await waiting).status_code == 200
        assert (await post(client, 4)).status_code == 200
    assert sorted(log.appended) == [b"ch_1", b"ch_4"]
    assert sum("shedding load" in r.message for r in caplog.records) == 1


async def test_without_a_bound_many_deliveries_wait_together(log: GatedLog) -> None:
    app = gateway_with(log)
    log.gate.clear()
    async with client_of(app) as client:
        waiting = [asyncio.create_task(post(client, n)) for n in range(50)]
        await log.until_waiting(50)
        log.gate.set()
        assert {r.status_code for r in await asyncio.gather(*waiting)} == {200}


async def _lifespan(app: Gateway, *messages: str) -> list[MutableMapping[str, Any]]:
    inbox: list[MutableMapping[str, Any]] = [{"type": f"lifespan.{m}"} for m in messages]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return inbox.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    return sent


async def test_lifespan_starts_the_log_and_stops_it_at_shutdown(log: GatedLog) -> None:
    calls: list[str] = []

    async def start() -> None:
        calls.append("start")

    async def stop() -> None:
        calls.append("stop")

    app = Gateway(
        Settings.from_env({"STRIPE_WEBHOOK_SECRETS": SECRET.reveal()}), log, start=start, stop=stop
    )
    sent = await _lifespan(app, "startup", "shutdown")
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete", "lifespan.shutdown.complete"
    ]
    assert calls == ["start", "stop"]


async def test_a_failed_start_is_reported_with_its_reason(log: GatedLog) -> None:
    async def start() -> None:
        raise LogUnavailable("Kafka at 127.0.0.1:1 is unreachable")

    app = Gateway(
        Settings.from_env({"STRIPE_WEBHOOK_SECRETS": SECRET.reveal()}), log, start=start
    )
    sent = await _lifespan(app, "startup")
    assert sent == [
        {"type": "lifespan.startup.failed", "message": "Kafka at 127.0.0.1:1 is unreachable"}
    ]
    assert app.startup_failure == "Kafka at 127.0.0.1:1 is unreachable"


def test_the_gateway_refuses_to_start_without_a_default_secret() -> None:
    with pytest.raises(ConfigurationError, match="STRIPE_WEBHOOK_SECRETS is not set"):
        run_gateway(
            Settings.from_env({"STRIPE_WEBHOOK_SECRETS_CONNECT": "whsec_c"}), "127.0.0.1", 0
        )
