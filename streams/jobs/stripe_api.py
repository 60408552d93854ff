"""Stripe's API as backfill and reconcile read it: raw list pages, a request-rate cap, retries.

Pages are read raw (the JSON Stripe sent, not the library's objects): a backfilled event is
appended as Stripe rendered it, and building objects would cost more than the whole backfill.
The official library sends every request, with its own retries off: this client retries
itself, so it can count the retries and keep them inside its rate cap. It waits what a 429's
``Retry-After`` asks, retries 5xx answers and lost connections with exponential backoff and
jitter, and stops with one line on a refused key (401, 403) or a refused request (400, 404).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import orjson
import stripe

from streams.errors import StreamsError
from streams.settings import Settings

MAX_FAILURES = 10
"""Consecutive failed tries of one request before the job gives up (it can be resumed)."""
_BACKOFF = 0.5
_BACKOFF_MAX = 30.0

Item = tuple[dict[str, Any], str]
"""An object of a list page and its JSON text."""


class StripeApi:
    """Read-only access to Stripe's API for one account (``account``: a Connect account)."""

    def __init__(self, settings: Settings, account: str | None = None) -> None:
        if settings.stripe_api_key is None:
            raise StreamsError("set STRIPE_API_KEY to a secret or restricted key that reads "
                               "events and the resources to reconcile")
        self._client = stripe.StripeClient(
            settings.stripe_api_key.reveal(),
            stripe_account=account,
            base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base
            else None,
            max_network_retries=0,
        )
        self._interval = 1.0 / settings.stripe_rate
        self._next_request = 0.0
        self.requests = 0
        self.retries: Counter[str] = Counter()
        """Retries by cause: ``429``, ``5xx``, ``connection``."""

    async def page(self, path: str, params: Mapping[str, Any]) -> tuple[list[Item], bool]:
        """One list page: its objects as listed (newest first) and whether more remain."""
        body = await self._get(path, params)
        items = [(item, orjson.dumps(item).decode()) for item in body["data"]]
        return items, bool(body["has_more"])

    async def retrieve(self, path: str, object_id: str) -> dict[str, Any] | None:
        """One object, or None when Stripe says there is none."""
        try:
            return await self._get(f"{path}/{object_id}", {})
        except _Missing:
            return None

    async def _get(self, path: str, params: Mapping[str, Any]) -> dict[str, Any]:
        failures = 0
        while True:
            await self._pace()
            self.requests += 1
            try:
                response = await asyncio.to_thread(
                    self._client.raw_request, "get", path, **params
                )
                data: dict[str, Any] = response.data
                return data
            except stripe.RateLimitError as exc:
                cause, wait = "429", _retry_after(exc)
            except stripe.APIConnectionError:
                cause, wait = "connection", None
            except (stripe.AuthenticationError, stripe.PermissionError) as exc:
                raise StreamsError(
                    f"Stripe refused the API key (HTTP {exc.http_status}): "
                    "check STRIPE_API_KEY, and that it may read this resource and account"
                ) from None
            except stripe.InvalidRequestError as exc:
                if exc.http_status == 404 and exc.code == "resource_missing" and params == {}:
                    raise _Missing from None
                raise StreamsError(f"Stripe refused GET {path}: {exc.user_message}") from None
            except stripe.StripeError as exc:
                if (exc.http_status or 0) < 500:
                    raise StreamsError(f"Stripe refused GET {path}: {exc.user_message}") from None
                cause, wait = "5xx", None
            failures += 1
            self.retries[cause] += 1
            if failures >= MAX_FAILURES:
                raise StreamsError(
                    f"Stripe's API failed {failures} times in a row on GET {path} ({cause}); "
                    "resume the job later"
                )
            await asyncio.sleep(wait if wait is not None else _backoff(failures))

    async def _pace(self) -> None:
        """Wait until the rate cap lets the next request go."""
        now = time.monotonic()
        if now < self._next_request:
            await asyncio.sleep(self._next_request - now)
            now = self._next_request
        self._next_request = now + self._interval


class _Missing(Exception):
    """Stripe has no such object."""


def _retry_after(exc: stripe.StripeError) -> float | None:
    raw = (exc.headers or {}).get("Retry-After")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def _backoff(failures: int) -> float:
    """Exponential backoff with full jitter, so several clients do not retry in step."""
    return random.uniform(0, min(_BACKOFF_MAX, _BACKOFF * 2 ** failures))
