"""The monitoring API: read-only JSON under ``/api/``, behind a bearer token.

Customer data (emails, amounts) lives in the payloads, so every ``/api/`` route requires the
token (compared in constant time) and payloads are left out unless ``?include=payload`` asks.
PostgreSQL is read through read-only transactions. Unknown parameters are refused, never
ignored: a typo in a filter must not silently show everything. ``/healthz`` and ``/metrics``
carry no customer data and answer without the token, for probes and Prometheus.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from psycopg.errors import QueryCanceled
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from projections.database import connection
from projections.monitor import alerts, reads
from projections.monitor.kafka_state import KafkaSampler
from streams.errors import DependencyUnavailable
from streams.log.routing import FAMILIES
from streams.settings import Secret, Settings
from streams.version import build_info

log = logging.getLogger(__name__)

_MAX_LIMIT = 500
_WINDOW = re.compile(r"^(\d+)([mhd])$")
_UNITS = {"m": 60, "h": 3600, "d": 86400}
_LONGEST_WINDOW = timedelta(days=7)
_STATUSES = ("open", "retried", "resolved")
_JOB_STATUSES = ("running", "succeeded", "failed", "cancelled")
_JOB_KINDS = ("replay", "rebuild", "dlq_retry", "backfill", "reconcile")

class BadRequest(Exception):
    """A parameter the API cannot take; its message is the one-line answer."""


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS),
        status_code=status, media_type="application/json", headers=headers,
    )


def error(message: str, status: int, headers: Mapping[str, str] | None = None) -> Response:
    return json_response({"error": message}, status, headers)


@dataclass
class Monitor:
    """What the routes share: settings, the read-only pool, the Kafka sample, alert memory."""

    settings: Settings
    pool: AsyncConnectionPool
    sampler: KafkaSampler
    token: Secret | None
    memory: alerts.AlertMemory
    registry: CollectorRegistry
    latency: reads.HourlyLatency


def create_app(settings: Settings, pool: AsyncConnectionPool, token: Secret | None) -> Starlette:
    """The ASGI application; ``token`` None serves ``/api/`` without authentication."""

    async def positions() -> Mapping[tuple[str, int], int]:
        async with connection(pool) as conn:
            return await reads.family_positions(conn, settings.topic_prefix)

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    build_info(registry)
    monitor = Monitor(
        settings, pool, KafkaSampler(settings, positions), token, alerts.AlertMemory(), registry,
        reads.HourlyLatency(),
    )

    async def warm() -> None:
        try:
            async with connection(pool) as conn:
                await monitor.latency.warm(conn, datetime.now(UTC), _LONGEST_WINDOW.days)
        except Exception as exc:  # The first request sums what warming could not.
            log.warning("latency of past hours not summed ahead: %r", exc)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        await pool.open()
        await monitor.sampler.start()
        warming = asyncio.create_task(warm())
        try:
            yield
        finally:
            warming.cancel()
            await monitor.sampler.stop()
            await pool.close()

    def route(path: str, handler: Callable[[Monitor, Request], Awaitable[Response]],
              known: tuple[str, ...] = ()) -> Route:
        async def endpoint(request: Request) -> Response:
            unknown = sorted(set(request.query_params) - set(known))
            if unknown:
                allowed = ", ".join(known) or "none"
                return error(f"unknown parameter {unknown[0]!r}; known: {allowed}", 400)
            try:
                return await handler(monitor, request)
            except BadRequest as exc:
                return error(str(exc), 400)
            except DependencyUnavailable as exc:
                return error(f"PostgreSQL unavailable: {exc}", 503, {"Retry-After": "5"})
            except QueryCanceled:
                return error(
                    "PostgreSQL did not answer within the 5 s statement timeout; retry, or "
                    "ask for a shorter window", 503, {"Retry-After": "5"},
                )

        return Route(path, endpoint, methods=["GET"])

    routes = [
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/metrics", _metrics(registry), methods=["GET"]),
        route("/api/overview", _overview),
        route("/api/performance", _performance, ("window",)),
        route(
            "/api/dead-letters", _dead_letters,
            ("status", "type", "family", "since", "limit", "cursor", "include"),
        ),
        route(
            "/api/audit-trail", _audit_trail,
            ("event_id", "object_id", "limit", "cursor", "include"),
        ),
        route("/api/batch-jobs", _batch_jobs, ("status", "kind", "limit", "cursor")),
        route("/api/alerts", _alerts),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan,
        exception_handlers={HTTPException: _http_error},
    )
    app.add_middleware(_Authentication, token=token)
    return app


class _Authentication:
    """Refuses ``/api/`` requests without the bearer token (401), comparing in constant time."""

    def __init__(self, app: Any, token: Secret | None) -> None:
        self.app = app
        self.expected = f"Bearer {token.reveal()}".encode() if token is not None else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            self.expected is not None and scope["type"] == "http"
            and scope["path"].startswith("/api/")
        ):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                refusal = error(
                    "missing or wrong bearer token: send 'Authorization: Bearer <token>'", 401,
                    {"WWW-Authenticate": "Bearer"},
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    messages = {404: f"no such route: {request.url.path}", 405: "only GET is served"}
    return error(messages.get(status, str(exc)), status)


async def _healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


def _metrics(registry: CollectorRegistry) -> Callable[[Request], Awaitable[Response]]:
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics


async def _overview(monitor: Monitor, request: Request) -> Response:
    started = time.perf_counter()
    async with connection(monitor.pool) as conn:
        windows = await reads.outcomes(conn)
        open_count, oldest_open = await reads.open_dead_letters(conn)
        jobs = await reads.running_jobs(conn)
        endpoints = await reads.endpoints(conn)
        paused = await reads.paused_families(conn)
    database_ms = (time.perf_counter() - started) * 1000
    kafka = monitor.sampler.state
    oldest = kafka.oldest_unprocessed_at
    now = datetime.now(UTC)
    return json_response({
        "generated_at": now,
        "windows": windows,
        "dead_letters": {"open": open_count, "oldest_open_failed_at": oldest_open},
        "oldest_unprocessed": {
            "received_at": oldest,
            "age_seconds": round((now - oldest).total_seconds(), 3) if oldest else None,
        },
        "consumer_lag": {
            "sampled_at": kafka.sampled_at,
            "total": kafka.total_lag if kafka.ok else None,
            "partitions": [
                {"topic": lag.topic, "partition": lag.partition, "lag": lag.lag}
                for lag in kafka.lags if lag.lag
            ],
        },
        "paused_families": paused,
        "running_jobs": jobs,
        "endpoints": endpoints,
        "health": {
            "postgres": {"ok": True, "latency_ms": round(database_ms, 2)},
            "kafka": {"ok": kafka.ok, "error": kafka.error, "sampled_at": kafka.sampled_at},
        },
    })


async def _performance(monitor: Monitor, request: Request) -> Response:
    raw = request.query_params.get("window", "1h")
    window = _window(raw)
    now = datetime.now(UTC)
    since = now - window
    async with connection(monitor.pool) as conn:
        found = await monitor.latency.performance(conn, since, now)
    return json_response({"window": raw, "since": since, **found})


async def _dead_letters(monitor: Monitor, request: Request) -> Response:
    params = request.query_params
    status = _choice(params, "status", (*_STATUSES, "all"), "all")
    family = _choice(params, "family", FAMILIES, None)
    limit = _limit(params, 50)
    query = reads.DeadLetterQuery(
        status=None if status == "all" else status,
        type=params.get("type"),
        family=family,
        since=_time(params, "since"),
        after=_int_cursor(params.get("cursor")) or 0,
        limit=limit,
        payload=_payload(params),
    )
    async with connection(monitor.pool) as conn:
        items = await reads.dead_letters(conn, query)
    cursor = str(items[-1]["id"]) if len(items) == limit else None
    return json_response({"items": items, "next_cursor": cursor})


async def _audit_trail(monitor: Monitor, request: Request) -> Response:
    params = request.query_params
    event_id, object_id = params.get("event_id"), params.get("object_id")
    if (event_id is None) == (object_id is None):
        raise BadRequest("give exactly one of event_id and object_id")
    limit = _limit(params, 100)
    payload = _payload(params)
    cursor = None
    async with connection(monitor.pool) as conn:
        if event_id is not None:
            if "cursor" in params or "limit" in params:
                raise BadRequest("cursor and limit page an object's events, not one event")
            events = await reads.events_by_id(conn, event_id)
        else:
            assert object_id is not None
            after = _object_cursor(params.get("cursor"))
            events = await reads.events_by_object(conn, object_id, after, limit)
            if len(events) == limit:
                cursor = _encode_object_cursor(events[-1]["created"], events[-1]["event_id"])
        found = await reads.trails(conn, events, monitor.settings.topic_prefix, payload)
    return json_response({"events": found, "next_cursor": cursor})


async def _batch_jobs(monitor: Monitor, request: Request) -> Response:
    params = request.query_params
    status = _choice(params, "status", _JOB_STATUSES, None)
    kind = _choice(params, "kind", _JOB_KINDS, None)
    limit = _limit(params, 50)
    before = _int_cursor(params.get("cursor"))
    async with connection(monitor.pool) as conn:
        items = await reads.batch_jobs(conn, status, kind, before, limit)
    cursor = str(items[-1]["id"]) if len(items) == limit else None
    return json_response({"items": items, "next_cursor": cursor})


async def _alerts(monitor: Monitor, request: Request) -> Response:
    now = datetime.now(UTC)
    async with connection(monitor.pool) as conn:
        found = await alerts.evaluate(conn, monitor.sampler.state, monitor.memory, now)
    return json_response({
        "generated_at": now,
        "firing": sum(1 for a in found if a["state"] == "firing"),
        "alerts": found,
    })


def _window(raw: str) -> timedelta:
    match = _WINDOW.match(raw)
    if not match or int(match[1]) == 0:
        raise BadRequest(f"window must be a number of minutes, hours or days like 1h, got {raw!r}")
    window = timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    if window > _LONGEST_WINDOW:
        raise BadRequest(f"window may be at most 7d, got {raw!r}")
    return window


def _choice(
    params: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str | None
) -> str | None:
    value = params.get(name, default)
    if value is not None and value not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _limit(params: Mapping[str, str], default: int) -> int:
    raw = params.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {_MAX_LIMIT}, got {raw!r}")
    return int(raw)


def _time(params: Mapping[str, str], name: str) -> datetime | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(
            f"{name} must be an ISO 8601 time like 2026-01-31T12:00:00Z, got {raw!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _payload(params: Mapping[str, str]) -> bool:
    include = params.get("include")
    if include not in (None, "payload"):
        raise BadRequest(f"include takes only 'payload', got {include!r}")
    return include == "payload"


def _int_cursor(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadRequest(f"cursor is not one this API gave: {raw!r}")
    return int(raw)


def _encode_object_cursor(created: datetime, event_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created.isoformat()}|{event_id}".encode()).decode()


def _object_cursor(raw: str | None) -> tuple[datetime, str] | None:
    if raw is None:
        return None
    try:
        created, event_id = base64.urlsafe_b64decode(raw.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), event_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest(f"cursor is not one this API gave: {raw!r}") from None
