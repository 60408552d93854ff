"""The ingest gateway: an ASGI application that appends verified Stripe webhooks to the log.

A delivery to ``/webhooks/stripe[/<endpoint>]`` is answered 200 only after Kafka acknowledged its
envelope. The order of checks is the order of cost: source network, size, concurrency bound,
signature, then the event itself, so nothing unverified reaches the log and a flood of forgeries
costs one HMAC each. Statuses tell Stripe what to do next: 4xx for a delivery that is wrong, 503
with ``Retry-After`` when the log is unavailable and a later delivery will work.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ingest.metrics import CONTENT_TYPE_LATEST, GatewayMetrics, WebhookOutcome
from ingest.producer import EventAppender, EventTooLarge, LogUnavailable
from ingest.signature import SignatureRejected, SigningSecrets
from streams.errors import ConfigurationError, InvalidEvent
from streams.log.codec import encode_event
from streams.log.envelope import THIN_EVENT_OBJECT, EventEnvelope, EventSource
from streams.outages import KAFKA, outages
from streams.settings import DEFAULT_ENDPOINT, Secret, Settings, endpoint_secrets

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/stripe"
MAX_BODY_BYTES = 1024 * 1024
# Stripe sends a body at once; one still arriving after this long is not worth a slot.
BODY_SECONDS = 10.0

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_JSON = (b"content-type", b"application/json")


class _Disconnected(Exception):
    """The client went away before its body arrived; there is no one to answer."""


class _SlowBody(Exception):
    """The body trickles in too slowly; waiting would hold a slot for a sender Stripe is not."""


@dataclass(eq=False, slots=True)
class Endpoint:
    """One webhook endpoint: its name, its secrets and how many of its requests are in flight."""

    name: str
    secrets: SigningSecrets
    in_flight: int = 0


class Gateway:
    """The ASGI application: webhook endpoints, ``/healthz``, ``/readyz`` and ``/metrics``.

    Verified events go to ``event_log``. ``start`` runs at the ASGI lifespan start-up;
    ``stop`` runs at the lifespan shutdown, after the server has finished every in-flight
    request, and flushes what the log still buffers. ``metrics_dir`` is the directory worker
    processes share their metrics through, if several. The endpoints are fixed at start;
    their secrets can be swapped while serving (:meth:`reload_secrets`).
    """

    def __init__(
        self,
        settings: Settings,
        event_log: EventAppender,
        *,
        start: Callable[[], Awaitable[None]] | None = None,
        stop: Callable[[], Awaitable[None]] | None = None,
        metrics_dir: Path | None = None,
    ) -> None:
        self._log = event_log
        self._start, self._stop = start, stop
        self._tolerance = settings.webhook_tolerance
        self._endpoints = _endpoints(settings.webhook_secrets)
        self._allowed: tuple[Network, ...] | None = settings.allowed_networks
        self._concurrency = settings.endpoint_concurrency
        self._queue_limit = settings.gateway_queue_bytes
        self._queued = 0
        """Bytes of bodies read and not answered yet: what overload would grow without bound."""
        self._shedding = False
        self._retry_after = (b"retry-after", str(settings.retry_after).encode())
        self.metrics = GatewayMetrics((e.name for e in self._endpoints.values()), metrics_dir)
        self.startup_failure: str | None = None

    def reload_secrets(self, environ: Mapping[str, str]) -> None:
        """Swap every endpoint's signing secrets for those ``environ`` gives now (SIGHUP).

        Secret files are read again, so a rotation needs no restart. The new secrets replace the
        old ones all at once, between two requests. A reload that fails, or that would add or
        remove an endpoint, keeps the current secrets; either way one log line says what
        happened, naming endpoints and counts, never a secret.
        """
        served = {endpoint.name: endpoint for endpoint in self._endpoints.values()}
        try:
            secrets = endpoint_secrets(environ)
        except ConfigurationError as exc:
            log.error("kept the current signing secrets: %s", exc)
            return
        if secrets.keys() != served.keys():
            log.error(
                "kept the current signing secrets: the reload declares endpoints %s but the "
                "gateway serves %s; adding or removing an endpoint needs a restart",
                ", ".join(sorted(secrets)), ", ".join(sorted(served)),
            )
            return
        verifiers = {name: SigningSecrets(secrets[name]) for name in served}
        for name, endpoint in served.items():
            endpoint.secrets = verifiers[name]
        log.info(
            "reloaded the signing secrets: %s",
            ", ".join(f"{name} has {len(secrets[name])}" for name in served),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        endpoint = self._endpoints.get(path)
        if endpoint is not None:
            await self._webhook(endpoint, scope, receive, send)
        elif path.startswith(WEBHOOK_PATH + "/") or path == WEBHOOK_PATH:
            await _answer(send, 404, {"error": "unknown webhook endpoint"})
        elif path in ("/healthz", "/readyz", "/metrics"):
            if scope["method"] not in ("GET", "HEAD"):
                await _answer(send, 405, {"error": "use GET"}, [(b"allow", b"GET, HEAD")])
            elif path == "/healthz":
                await _answer(send, 200, {"alive": True})
            elif path == "/readyz":
                await self._readiness(send)
            else:
                headers = [(b"content-type", CONTENT_TYPE_LATEST.encode())]
                await _send(send, 200, self.metrics.exposition(), headers)
        else:
            await _answer(send, 404, {"error": "not found"})

    async def _readiness(self, send: Send) -> None:
        """200 ``{"ready": true}`` while Kafka answers, else 503 saying since when and why not."""
        if await self._log.reachable():
            await _answer(send, 200, {"ready": True})
            return
        outage = outages.missing().get(KAFKA)
        # A log that keeps no outage record (a test double) still answers which one is missing.
        why = outage.describe() if outage is not None else "unreachable"
        await _answer(send, 503, {"ready": False, "missing": [KAFKA], KAFKA: why})

    async def _webhook(
        self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send
    ) -> None:
        received = time.perf_counter()
        if scope["method"] != "POST":
            await _answer(send, 405, {"error": "use POST"}, [(b"allow", b"POST")])
            return
        if self._allowed is not None and not self._from_allowed_network(scope):
            self.metrics.count(endpoint.name, WebhookOutcome.FORBIDDEN)
            await _answer(send, 403, {"error": "source address is not allowed"})
            return
        signature: bytes | None = None
        declared_length = 0
        for name, value in scope["headers"]:
            if name == b"stripe-signature" and signature is None:
                signature = value
            elif name == b"content-length" and value.isdigit():
                declared_length = int(value)
        if declared_length > MAX_BODY_BYTES:
            await self._too_large(endpoint, send)
            return
        if self._concurrency and endpoint.in_flight >= self._concurrency:
            self.metrics.count(endpoint.name, WebhookOutcome.THROTTLED)
            await _answer(
                send, 429, {"error": "too many concurrent deliveries"}, [self._retry_after]
            )
            return
        if self._over_capacity(declared_length):
            await self._shed(endpoint, send)
            return
        endpoint.in_flight += 1
        try:
            body = await _read_body(receive)
            if body is None:
                await self._too_large(endpoint, send)
                return
            if self._over_capacity(len(body)):
                await self._shed(endpoint, send)
                return
            self._queued += len(body)
            try:
                await self._ingest(endpoint, body, signature, received, send)
            finally:
                self._queued -= len(body)
        except _Disconnected:
            return
        except _SlowBody:
            await _answer(
                send, 408, {"error": f"body not received within {BODY_SECONDS:g} s"},
                [(b"connection", b"close")],
            )
        finally:
            endpoint.in_flight -= 1

    async def _ingest(
        self, endpoint: Endpoint, body: bytes, signature: bytes | None, received: float, send: Send
    ) -> None:
        try:
            endpoint.secrets.verify(body, signature, tolerance=self._tolerance)
        except SignatureRejected as exc:
            self.metrics.count(endpoint.name, WebhookOutcome(exc.outcome))
            log.info("rejected a delivery to %s: %s", endpoint.name, exc)
            await _answer(send, 400, {"error": str(exc)})
            return
        try:
            event = _prepare(body, endpoint.name)
        except InvalidEvent as exc:
            self.metrics.count(endpoint.name, WebhookOutcome.MALFORMED)
            log.info("rejected a signed delivery to %s: %s", endpoint.name, exc)
            await _answer(send, 400, {"error": str(exc)})
            return
        envelope = event.envelope
        try:
            await self._log.append(event.key, event.message)
        except LogUnavailable as exc:
            self.metrics.count(endpoint.name, WebhookOutcome.UNAVAILABLE)
            log.warning("answering 503 for %s: %s", envelope.id, exc)
            await _answer(send, 503, {"error": "event log unavailable"}, [self._retry_after])
            return
        except EventTooLarge as exc:
            self.metrics.count(endpoint.name, WebhookOutcome.TOO_LARGE)
            log.warning("answering 413 for %s: %s", envelope.id, exc)
            await _answer(send, 413, {"error": str(exc)})
            return
        self.metrics.count(endpoint.name, WebhookOutcome.ACCEPTED)
        self.metrics.observe_ingest(time.perf_counter() - received)
        if self._shedding and self._queued * 2 < self._queue_limit:
            self._shedding = False
            log.warning("stopped shedding load: the queue to Kafka is below half its bound")
        if event.thin:
            log.info(
                "appended thin event %s %s related_object=%s",
                envelope.id, envelope.type, event.related_object,
            )
        await _answer(send, 200, {"received": True, "id": envelope.id})

    def _over_capacity(self, size: int) -> bool:
        """Whether ``size`` more bytes would pass the queue's bound while others wait on Kafka.

        Only while others wait: one delivery is always taken, however large.
        """
        return self._queued > 0 and self._queued + size > self._queue_limit

    async def _shed(self, endpoint: Endpoint, send: Send) -> None:
        """Answer 503: more is offered than Kafka acknowledges, and Stripe retries later."""
        self.metrics.count(endpoint.name, WebhookOutcome.UNAVAILABLE)
        if not self._shedding:
            log.warning(
                "shedding load: %d bytes of deliveries wait on Kafka (bound %d, "
                "STRIPE_STREAMS_GATEWAY_QUEUE_BYTES); answering 503 with Retry-After",
                self._queued, self._queue_limit,
            )
        self._shedding = True
        await _answer(
            send, 503, {"error": "the event log does not keep up; retry later"},
            [self._retry_after, (b"connection", b"close")],
        )

    async def _too_large(self, endpoint: Endpoint, send: Send) -> None:
        self.metrics.count(endpoint.name, WebhookOutcome.TOO_LARGE)
        # Closing the connection spares reading the rest of a body nobody will use.
        await _answer(
            send, 413, {"error": f"body exceeds {MAX_BODY_BYTES} bytes"},
            [(b"connection", b"close")],
        )

    def _from_allowed_network(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not client or self._allowed is None:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(address in network for network in self._allowed)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self._start is not None:
                        await self._start()
                except Exception as exc:
                    self.startup_failure = str(exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                # Start-up objects live as long as the process: full collections skip them.
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._stop is not None:
                    await self._stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _endpoints(secrets: Mapping[str, tuple[Secret, ...]]) -> dict[str, Endpoint]:
    paths: dict[str, Endpoint] = {}
    for name, declared in secrets.items():
        path = WEBHOOK_PATH if name == DEFAULT_ENDPOINT else f"{WEBHOOK_PATH}/{name}"
        paths[path] = Endpoint(name, SigningSecrets(declared))
    return paths


@dataclass(frozen=True, slots=True)
class _PreparedEvent:
    """A verified event, wrapped and encoded for the log."""

    envelope: EventEnvelope
    key: bytes
    message: bytes
    thin: bool
    related_object: str | None


def _prepare(body: bytes, endpoint: str) -> _PreparedEvent:
    """Wrap a verified body in its envelope and encode it; raise InvalidEvent if it is no event."""
    try:
        event = orjson.loads(body)
        text = body.decode("utf-8")
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        raise InvalidEvent("body is not JSON") from None
    envelope = EventEnvelope.from_event_dict(
        event, payload=text, endpoint=endpoint, source=EventSource.WEBHOOK,
        received_at=datetime.now(UTC),
    )
    try:
        key, message = envelope.key, encode_event(envelope)
    except (ValueError, OverflowError) as exc:
        raise InvalidEvent(f"event cannot be written to the log: {exc}") from None
    related = event.get("related_object")
    return _PreparedEvent(
        envelope, key, message,
        thin=event.get("object") == THIN_EVENT_OBJECT,
        related_object=str(related.get("id")) if isinstance(related, dict) else None,
    )


async def _read_body(receive: Receive) -> bytes | None:
    """Read the request body; None as soon as it exceeds the limit (the rest stays unread).

    A body that comes in several pieces must be complete within BODY_SECONDS, or _SlowBody.
    """
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _Disconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body if len(body) <= MAX_BODY_BYTES else None
    try:
        async with asyncio.timeout(BODY_SECONDS):
            return await _read_rest(receive, [body])
    except TimeoutError:
        raise _SlowBody from None


async def _read_rest(receive: Receive, chunks: list[bytes]) -> bytes | None:
    size = sum(len(chunk) for chunk in chunks)
    while size <= MAX_BODY_BYTES:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk: bytes = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks) if size <= MAX_BODY_BYTES else None
    return None


async def _answer(
    send: Send, status: int, document: Mapping[str, Any],
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    await _send(send, status, json.dumps(document).encode(), [_JSON, *headers])


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
