"""A local double of Stripe's API, reached through ``STRIPE_API_BASE`` by tests, benches and demos.

It serves what ``backfill`` and ``reconcile`` read, with Stripe's semantics: ``GET /v1/events``
and ``GET /v1/<resource>`` list newest first with cursor paging (``limit``, ``starting_after``,
``ending_before``) and ``created`` ranges; events also filter by ``type``, ``types`` and
``delivery_success`` and are listed for 30 days only; ``GET .../{id}`` retrieves one. Requests
need the bearer key; ``Stripe-Account`` selects a connected account; errors have Stripe's shape.
Switches settable while it runs inject faults (429s, 500s, dropped connections, latency, a rate
cap), every request served is recorded, and the store is mutable so tests can make Stripe and the
mirrors drift apart. It is read-only over HTTP: writes go through its Python methods.

>>> with StripeDouble(generate_account(100, seed=7)) as double:
...     double.url.startswith("http://127.0.0.1:")
True

``python -m streams.devtools.stripe_double --events 5000`` serves a generated account.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bisect
import contextlib
import itertools
import re
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson

from streams.devtools.samples import EventFactory, JSONObject
from streams.handlers.registry import load_handlers

DAY = 86_400
EVENT_RETENTION = 30 * DAY
"""How far back from the double's clock the Events API lists and retrieves events."""
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_TYPES = 20
DEFAULT_API_KEY = "sk_test_stripe_double"
PLATFORM_ACCOUNT = "acct_1StripeDouble0000"
"""The account the API key belongs to; ``Stripe-Account`` naming it means the platform itself."""
DEFAULT_PORT = 12112
DROPPED = 0
"""The status recorded for a request whose connection was closed without an answer."""


@dataclass(frozen=True, slots=True)
class Resource:
    """A Stripe resource the double serves: ``GET /v1/<path>`` and ``GET /v1/<path>/{id}``."""

    path: str
    object_type: str
    filters: tuple[str, ...] = ()
    """The equality filters Stripe documents for this list, besides ``created``."""

    @property
    def url(self) -> str:
        """The list's URL path, as the list envelope's ``url`` gives it."""
        return f"/v1/{self.path}"

    @property
    def permission(self) -> str:
        """The restricted-key permission Stripe names when a key may not read this resource."""
        return f"rak_{self.object_type.replace('.', '_')}_read"


EVENTS = Resource("events", "event")
RESOURCES: Mapping[str, Resource] = {
    resource.path: resource
    for resource in (
        Resource("customers", "customer", ("email",)),
        Resource("subscriptions", "subscription", ("customer", "status", "collection_method")),
        Resource("subscription_schedules", "subscription_schedule", ("customer",)),
        Resource("invoices", "invoice", ("customer", "subscription", "status")),
        Resource("invoiceitems", "invoiceitem", ("customer", "invoice")),
        Resource("credit_notes", "credit_note", ("customer", "invoice")),
        Resource("products", "product", ("active",)),
        Resource("prices", "price", ("product", "active", "currency", "type")),
        Resource("plans", "plan", ("product", "active")),
        Resource("coupons", "coupon"),
        Resource("promotion_codes", "promotion_code", ("active", "code", "customer")),
        Resource("payment_intents", "payment_intent", ("customer",)),
        Resource("charges", "charge", ("customer", "payment_intent")),
        Resource("refunds", "refund", ("charge", "payment_intent")),
        Resource("disputes", "dispute", ("charge", "payment_intent")),
        Resource("payment_methods", "payment_method", ("customer", "type")),
        Resource("setup_intents", "setup_intent", ("customer", "payment_method")),
        Resource("checkout/sessions", "checkout.session", ("customer", "payment_intent", "status")),
    )
}
"""The resources besides events that the double lists, by URL path under ``/v1/``."""

_BY_OBJECT_TYPE = {resource.object_type: resource for resource in RESOURCES.values()}
_LIST_PARAMS = frozenset({"limit", "starting_after", "ending_before", "created", "expand"})
_EVENT_PARAMS = _LIST_PARAMS | {"type", "types", "delivery_success"}
_RANGE_OPERATORS = frozenset({"gt", "gte", "lt", "lte"})
_PARAM_NAME = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<key>[^\[\]]*)\])?")
_SUBSCRIPTION_ENDED = frozenset({"canceled", "incomplete_expired"})
_EVENTS_PER_CUSTOMER = 11
"""About how many events :func:`generate_account` makes per customer, refunds included."""

Params = dict[str, str | list[str] | dict[str, str]]
Filter = Callable[[JSONObject], bool]


class StripeApiError(Exception):
    """An answer in Stripe's error shape: ``{"error": {"type", "message", "code"?, "param"?}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})
        error: JSONObject = {"message": message, "type": error_type}
        if code is not None:
            error["code"] = code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param is not None:
            error["param"] = param
        self.body: JSONObject = {"error": error}


def _invalid(message: str, param: str | None = None, *, code: str | None = None) -> StripeApiError:
    return StripeApiError(400, message, code=code, param=param)


def _no_such(object_type: str, object_id: str, param: str) -> StripeApiError:
    return StripeApiError(
        404, f"No such {object_type}: '{object_id}'", code="resource_missing", param=param
    )


def _unrecognized(method: str, path: str) -> StripeApiError:
    return StripeApiError(
        404,
        f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we"
        " can help at https://support.stripe.com/.",
    )


def _masked(key: str) -> str:
    """The key as Stripe quotes it in errors: its kind and mode, then only its last 4 characters."""
    kind = re.match(r"[a-z]{2}_(?:test|live)_", key)
    head = kind.group() if kind else ""
    secret = key[len(head) :]
    return f"{head}{'*' * max(len(secret) - 4, 0)}{secret[-4:]}"


@dataclass(frozen=True, slots=True)
class ServedRequest:
    """One request the double received and what it answered (``DROPPED`` for no answer)."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    account: str | None
    status: int


@dataclass(slots=True)
class _Item:
    sort_key: tuple[int, int, str]
    """``(-created, -arrival, id)``: ascending order is Stripe's, newest first."""
    body: JSONObject
    deleted: bool
    as_of: int
    """The ``created`` of the event that last set ``body``, so an older event does not win."""


class _Collection:
    """The items of one list endpoint in one account, kept in Stripe's order (newest first)."""

    def __init__(self) -> None:
        self.items: dict[str, _Item] = {}
        self._listed: list[tuple[int, int, str]] = []

    def upsert(
        self, body: JSONObject, *, created: int, arrival: int, as_of: int, deleted: bool
    ) -> None:
        """Store ``body`` unless a newer one is stored; a new item is placed by ``created``."""
        item = self.items.get(body["id"])
        if item is None:
            item = _Item((-created, -arrival, body["id"]), body, deleted, as_of)
            self.items[body["id"]] = item
            if not deleted:
                bisect.insort(self._listed, item.sort_key)
            return
        if as_of < item.as_of:
            return
        if deleted and not item.deleted:
            del self._listed[bisect.bisect_left(self._listed, item.sort_key)]
        elif item.deleted and not deleted:
            bisect.insort(self._listed, item.sort_key)
        item.body, item.deleted, item.as_of = body, deleted, as_of

    def page(
        self,
        *,
        limit: int,
        starting_after: str | None,
        ending_before: str | None,
        created: tuple[int | None, int | None],
        keep: Filter,
        object_type: str,
    ) -> tuple[list[JSONObject], bool]:
        """Return one page of listed items and whether more lie beyond it, as Stripe pages.

        After ``starting_after`` (or from the newest) the page holds the next older items;
        before ``ending_before`` it holds the items just newer than the cursor. Either way the
        page is newest first. A cursor keeps its place even when it is filtered out or deleted.
        """
        low, high = created
        first = 0 if high is None else bisect.bisect_left(self._listed, (-high,))
        end = len(self._listed) if low is None else bisect.bisect_left(self._listed, (-low + 1,))
        if starting_after is not None:
            cursor = self._cursor(starting_after, "starting_after", object_type)
            first = max(first, bisect.bisect_right(self._listed, cursor))
        if ending_before is not None:
            cursor = self._cursor(ending_before, "ending_before", object_type)
            end = min(end, bisect.bisect_left(self._listed, cursor))
        indexes = range(end - 1, first - 1, -1) if ending_before is not None else range(first, end)
        found: list[JSONObject] = []
        for index in indexes:
            body = self.items[self._listed[index][2]].body
            if keep(body):
                found.append(body)
                if len(found) > limit:
                    break
        page = found[:limit]
        if ending_before is not None:
            page.reverse()
        return page, len(found) > limit

    def _cursor(self, object_id: str, param: str, object_type: str) -> tuple[int, int, str]:
        item = self.items.get(object_id)
        if item is None:
            raise _no_such(object_type, object_id, param)
        return item.sort_key


@dataclass
class _Account:
    events: _Collection = field(default_factory=_Collection)
    objects: dict[str, _Collection] = field(
        default_factory=lambda: {path: _Collection() for path in RESOURCES}
    )


@dataclass(frozen=True, slots=True)
class _Throttle:
    retry_after: int
    lock_timeout: bool

    def error(self) -> StripeApiError:
        if self.lock_timeout:
            message = (
                "This object cannot be accessed right now because another API request or Stripe"
                " process is currently accessing it. If you see this error intermittently, retry"
                " the request."
            )
        else:
            message = (
                "Request rate limit exceeded. You can learn more about rate limits here"
                " https://stripe.com/docs/rate-limits."
            )
        return StripeApiError(
            429,
            message,
            code="lock_timeout" if self.lock_timeout else "rate_limit",
            headers={
                "Retry-After": str(self.retry_after),
                "Stripe-Should-Retry": "true" if self.lock_timeout else "false",
            },
        )


def _server_error() -> StripeApiError:
    return StripeApiError(
        500,
        "An unknown error occurred",
        error_type="api_error",
        headers={"Stripe-Should-Retry": "true"},
    )


class StripeDouble:
    """Serves Stripe's read API over a mutable store of events and objects, on 127.0.0.1.

    Objects are what the events carry: each event's ``data.object`` becomes that object's state
    unless a newer event already set it, in the account the event names. ``objects`` adds
    objects of the platform account that no event carries. ``accounts`` names connected accounts
    that exist even without events. ``now`` sets the clock (Unix seconds; the wall clock when
    None); ``port`` 0 picks a free port.

    Fault switches, settable while it runs and each taking one request: first dropped
    connections (:meth:`drop_next`), then 500s (:meth:`fail_next`), then 429s
    (:meth:`rate_limit_next`); then the :attr:`rate_cap`. :attr:`delay` slows every request.
    """

    def __init__(
        self,
        events: Iterable[Mapping[str, Any]] = (),
        objects: Iterable[Mapping[str, Any]] = (),
        *,
        api_key: str = DEFAULT_API_KEY,
        accounts: Iterable[str] = (),
        now: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.delay = 0.0
        """Seconds every request waits before it is answered."""
        self.rate_cap: float | None = None
        """Requests per second beyond which requests answer 429 (Stripe's sandbox allows 25)."""
        self.restricted_to: Collection[str] | None = None
        """When set, the key acts as a restricted key that may read only these resource paths
        (``"events"``, ``"customers"``, ...): other requests answer 403."""
        self._now = now
        self._host, self._port = host, port
        self._lock = threading.RLock()
        self._arrivals = itertools.count()
        self._request_ids = itertools.count(1)
        self._accounts: dict[str | None, _Account] = {None: _Account()}
        for account in accounts:
            self._accounts[account] = _Account()
        self._deletes = load_handlers().deletes
        self._drops = 0
        self._failures = 0
        self._throttles: deque[_Throttle] = deque()
        self._admitted: deque[float] = deque()
        self._served: list[ServedRequest] = []
        self._server: _DoubleServer | None = None
        self._thread: threading.Thread | None = None
        self.add_events(events)
        for obj in objects:
            self.put_object(obj)

    @property
    def now(self) -> int:
        """The double's clock (Unix seconds): events older than 30 days before it are hidden."""
        return int(time.time()) if self._now is None else self._now

    @now.setter
    def now(self, value: int | None) -> None:
        self._now = value

    @property
    def url(self) -> str:
        """The base URL to give ``STRIPE_API_BASE`` (``http://127.0.0.1:<port>``)."""
        if self._server is None:
            raise RuntimeError("the Stripe double is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> StripeDouble:
        """Start serving in a background thread; return self."""
        self._server = _DoubleServer((self._host, self._port), self._serve)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="stripe-double",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection."""
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> StripeDouble:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def add_events(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Add events as if Stripe emitted them, and update the objects they carry.

        Each event joins the account it names (``account``, else the platform). An event whose
        type deletes its object (``customer.deleted``, ``product.deleted``, ...: the handler
        registry knows which) or that carries a deleted stub deletes the object.
        """
        with self._lock:
            for event in events:
                self._add_event(orjson.loads(orjson.dumps(event)))

    def put_object(self, obj: Mapping[str, Any], *, account: str | None = None) -> None:
        """Create or replace an object without an event, as drift between Stripe and a mirror.

        It holds until an event created after the double's clock carries the object again.
        """
        body: JSONObject = orjson.loads(orjson.dumps(obj))
        resource = _BY_OBJECT_TYPE.get(body.get("object", ""))
        if resource is None:
            raise ValueError(f"the Stripe double does not list {body.get('object')!r} objects")
        with self._lock:
            now = self.now
            self._account(account).objects[resource.path].upsert(
                body,
                created=body.get("created", now),
                arrival=next(self._arrivals),
                as_of=now,
                deleted=False,
            )

    def delete_object(self, resource: str, object_id: str, *, account: str | None = None) -> None:
        """Delete an object without an event, as if deleted in Stripe's Dashboard.

        Lists leave it out; retrieving it answers 404, or for a customer its deleted stub.
        """
        with self._lock:
            item = self._account(account).objects[resource].items[object_id]
            self._account(account).objects[resource].upsert(
                item.body, created=0, arrival=0, as_of=max(self.now, item.as_of), deleted=True
            )

    def stored_object(
        self, resource: str, object_id: str, *, account: str | None = None
    ) -> JSONObject:
        """Return a copy of an object as the double holds it (``KeyError`` if absent or deleted)."""
        with self._lock:
            item = self._account(account).objects[resource].items[object_id]
            if item.deleted:
                raise KeyError(object_id)
            copied: JSONObject = orjson.loads(orjson.dumps(item.body))
            return copied

    def drop_next(self, count: int) -> None:
        """Close the connection of the next ``count`` requests without answering them."""
        with self._lock:
            self._drops += count

    def fail_next(self, count: int) -> None:
        """Answer the next ``count`` requests 500 (``api_error``, ``Stripe-Should-Retry: true``)."""
        with self._lock:
            self._failures += count

    def rate_limit_next(
        self, count: int, *, retry_after: int = 1, lock_timeout: bool = False
    ) -> None:
        """Answer the next ``count`` requests 429 with ``Retry-After: <retry_after>``.

        A rate-limit 429 says ``Stripe-Should-Retry: false``, so Stripe's libraries leave the
        retry to the caller; ``lock_timeout`` answers Stripe's lock-timeout 429 instead, which
        says ``true``.
        """
        with self._lock:
            self._throttles.extend([_Throttle(retry_after, lock_timeout)] * count)

    @property
    def requests(self) -> list[ServedRequest]:
        """Every request received so far, in order."""
        with self._lock:
            return list(self._served)

    def count(self, path: str | None = None, status: int | None = None) -> int:
        """How many requests were received for ``path`` and answered ``status`` (None: any)."""
        with self._lock:
            return sum(
                (path is None or served.path == path)
                and (status is None or served.status == status)
                for served in self._served
            )

    def clear_requests(self) -> None:
        """Forget the requests received so far."""
        with self._lock:
            self._served.clear()

    def _account(self, account: str | None) -> _Account:
        return self._accounts.setdefault(account, _Account())

    def _add_event(self, event: JSONObject) -> None:
        if event.get("object") != "event":
            raise ValueError(f"{event.get('id')!r} is not a v1 Stripe event")
        account = self._account(event.get("account"))
        if event["id"] in account.events.items:
            raise ValueError(f"event {event['id']} was already added")
        arrival = next(self._arrivals)
        created: int = event["created"]
        account.events.upsert(event, created=created, arrival=arrival, as_of=created, deleted=False)
        obj = event.get("data", {}).get("object")
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            return
        resource = _BY_OBJECT_TYPE.get(obj.get("object", ""))
        if resource is not None:
            account.objects[resource.path].upsert(
                obj,
                created=obj.get("created", created),
                arrival=arrival,
                as_of=created,
                deleted=obj.get("deleted") is True or self._deletes(event["type"]),
            )

    def _take_drop(self) -> bool:
        with self._lock:
            if self._drops:
                self._drops -= 1
                return True
            return False

    def _take_error(self) -> StripeApiError | None:
        with self._lock:
            if self._failures:
                self._failures -= 1
                return _server_error()
            if self._throttles:
                return self._throttles.popleft().error()
            if self.rate_cap is not None:
                # A sliding one-second window of admitted requests, as Stripe's limiter counts.
                moment = time.monotonic()
                while self._admitted and moment - self._admitted[0] >= 1.0:
                    self._admitted.popleft()
                if len(self._admitted) >= self.rate_cap:
                    return _Throttle(1, lock_timeout=False).error()
                self._admitted.append(moment)
            return None

    def _serve(self, handler: _RequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        if length:
            handler.rfile.read(length)
        if self.delay > 0:
            time.sleep(self.delay)
        split = urlsplit(handler.path)
        account = handler.headers.get("Stripe-Account")
        query = tuple(parse_qsl(split.query, keep_blank_values=True))
        if self._take_drop():
            self._record(ServedRequest(handler.command, split.path, query, account, DROPPED))
            handler.close_connection = True
            return
        headers: Mapping[str, str] = {}
        try:
            fault = self._take_error()
            if fault is not None:
                raise fault
            status, body = 200, self._answer(handler, split.path, split.query)
        except StripeApiError as error:
            status, headers, body = error.status, error.headers, orjson.dumps(error.body)
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Request-Id", f"req_double{next(self._request_ids):010d}")
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)
        self._record(ServedRequest(handler.command, split.path, query, account, status))

    def _record(self, served: ServedRequest) -> None:
        with self._lock:
            self._served.append(served)

    def _answer(self, handler: _RequestHandler, path: str, query: str) -> bytes:
        key = self._authenticate(handler.headers.get("Authorization"))
        resource, object_id = _route(handler.command, path)
        account = self._connected_account(handler.headers.get("Stripe-Account"), key)
        if self.restricted_to is not None and resource.path not in self.restricted_to:
            raise StripeApiError(
                403,
                f"The provided key '{_masked(key)}' does not have the required permissions for"
                f" this endpoint on account '{account or PLATFORM_ACCOUNT}'. Having the"
                f" '{resource.permission}' permission would allow this request to continue.",
            )
        allowed = _EVENT_PARAMS if resource is EVENTS else _LIST_PARAMS | set(resource.filters)
        params = _parse_query(query, allowed if object_id is None else frozenset({"expand"}))
        with self._lock:
            if object_id is not None:
                return orjson.dumps(self._retrieve(account, resource, object_id))
            return orjson.dumps(self._list(account, resource, params))

    def _authenticate(self, authorization: str | None) -> str:
        scheme, _, credentials = (authorization or "").partition(" ")
        key = credentials.strip()
        if scheme.lower() == "basic":
            try:
                key = base64.b64decode(key, validate=True).decode().partition(":")[0]
            except (binascii.Error, UnicodeDecodeError):
                key = ""
        elif scheme.lower() != "bearer":
            key = ""
        if not key:
            raise StripeApiError(
                401,
                "You did not provide an API key. You need to provide your API key in the"
                " Authorization header, using Bearer auth (e.g. 'Authorization: Bearer"
                " YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details,"
                " or we can help at https://support.stripe.com/.",
            )
        if key != self.api_key:
            raise StripeApiError(401, f"Invalid API Key provided: {_masked(key)}")
        return key

    def _connected_account(self, header: str | None, key: str) -> str | None:
        if header is None or header == PLATFORM_ACCOUNT:
            return None
        with self._lock:
            if header in self._accounts:
                return header
        raise StripeApiError(
            403,
            f"The provided key '{_masked(key)}' does not have access to account '{header}' (or"
            " that account does not exist). Application access may have been revoked.",
            code="account_invalid",
        )

    def _retrieve(self, account: str | None, resource: Resource, object_id: str) -> JSONObject:
        store = self._accounts[account]
        collection = store.events if resource is EVENTS else store.objects[resource.path]
        item = collection.items.get(object_id)
        too_old = resource is EVENTS and item is not None and (
            item.body["created"] < self.now - EVENT_RETENTION
        )
        if item is None or too_old:
            raise _no_such(resource.object_type, object_id, "id")
        if item.deleted:
            # Stripe answers a deleted customer with its stub; other deleted objects are gone.
            if resource.object_type == "customer":
                return {"id": object_id, "object": "customer", "deleted": True}
            raise _no_such(resource.object_type, object_id, "id")
        return item.body

    def _list(self, account: str | None, resource: Resource, params: Params) -> JSONObject:
        limit = _limit(params)
        starting_after = _text(params, "starting_after")
        ending_before = _text(params, "ending_before")
        if starting_after is not None and ending_before is not None:
            raise _invalid(
                "You may only specify one of these parameters: ending_before, starting_after.",
                "ending_before",
            )
        low, high = _created(params)
        store = self._accounts[account]
        if resource is EVENTS:
            collection, keep = store.events, _event_filter(params)
            oldest = self.now - EVENT_RETENTION
            low = oldest if low is None else max(low, oldest)
        else:
            collection, keep = store.objects[resource.path], _object_filter(resource, params)
        data, has_more = collection.page(
            limit=limit,
            starting_after=starting_after,
            ending_before=ending_before,
            created=(low, high),
            keep=keep,
            object_type=resource.object_type,
        )
        return {"object": "list", "url": resource.url, "has_more": has_more, "data": data}


def _route(method: str, path: str) -> tuple[Resource, str | None]:
    """The resource a request names and the id it retrieves (None for a list)."""
    if method == "GET" and path.startswith("/v1/"):
        rest = path.removeprefix("/v1/")
        for resource in (EVENTS, *RESOURCES.values()):
            if rest == resource.path:
                return resource, None
            object_id = rest.removeprefix(f"{resource.path}/")
            if object_id != rest and object_id and "/" not in object_id:
                return resource, unquote(object_id)
    raise _unrecognized(method, path)


def _parse_query(query: str, allowed: frozenset[str] | set[str]) -> Params:
    """Decode Stripe's form encoding: ``a=1``, ``a[]=1`` or ``a[0]=1`` lists, ``a[key]=1`` maps."""
    params: Params = {}
    for raw, value in parse_qsl(query, keep_blank_values=True):
        match = _PARAM_NAME.fullmatch(raw)
        if match is None or match["name"] not in allowed:
            raise _invalid(f"Received unknown parameter: {raw}", raw, code="parameter_unknown")
        name, key = match["name"], match["key"]
        if value == "":
            raise _invalid(
                f"You passed an empty string for '{raw}'. We assume empty values are an attempt"
                f" to unset a parameter; however '{raw}' cannot be unset. You should remove"
                f" '{raw}' from your request or supply a non-empty value.",
                raw,
                code="parameter_invalid_empty",
            )
        current = params.get(name)
        if key is None and current is None:
            params[name] = value
        elif key is not None and (key == "" or key.isdigit()) and isinstance(current, list | None):
            params[name] = [*(current or []), value]
        elif key is not None and isinstance(current, dict | None):
            params[name] = {**(current or {}), key: value}
        else:
            raise _invalid(f"Invalid {name}: it was given in two different forms.", name)
    return params


def _text(params: Params, name: str) -> str | None:
    value = params.get(name)
    if value is None or isinstance(value, str):
        return value
    raise _invalid(f"Invalid {name}: expected a single value.", name)


def _integer(text: str, param: str) -> int:
    if re.fullmatch(r"-?\d+", text) is None:
        raise _invalid(f"Invalid integer: {text}", param, code="parameter_invalid_integer")
    return int(text)


def _boolean(params: Params, name: str) -> bool | None:
    text = _text(params, name)
    if text is None:
        return None
    if text not in ("true", "false"):
        raise _invalid(f"Invalid boolean: {text}", name, code="parameter_invalid_boolean")
    return text == "true"


def _limit(params: Params) -> int:
    text = _text(params, "limit")
    if text is None:
        return DEFAULT_LIMIT
    limit = _integer(text, "limit")
    if limit < 1:
        raise _invalid(
            "This value must be greater than or equal to 1.",
            "limit",
            code="parameter_invalid_integer",
        )
    if limit > MAX_LIMIT:
        raise _invalid(
            f"This value must be less than or equal to {MAX_LIMIT} (it currently is '{limit}').",
            "limit",
            code="parameter_invalid_integer",
        )
    return limit


def _created(params: Params) -> tuple[int | None, int | None]:
    """The inclusive bounds of ``created=`` or ``created[gt|gte|lt|lte]=``, None if unbounded."""
    value = params.get("created")
    if value is None:
        return None, None
    if isinstance(value, str):
        exact = _integer(value, "created")
        return exact, exact
    if isinstance(value, list):
        raise _invalid("Invalid created: expected a timestamp or a range.", "created")
    low: int | None = None
    high: int | None = None
    for operator, text in value.items():
        param = f"created[{operator}]"
        if operator not in _RANGE_OPERATORS:
            raise _invalid(f"Received unknown parameter: {param}", param, code="parameter_unknown")
        bound = _integer(text, param)
        if operator in ("gt", "gte"):
            bound += operator == "gt"
            low = bound if low is None else max(low, bound)
        else:
            bound -= operator == "lt"
            high = bound if high is None else min(high, bound)
    return low, high


def _event_filter(params: Params) -> Filter:
    single = _text(params, "type")
    many = params.get("types")
    if single is not None and many is not None:
        raise _invalid("You may pass either `type` or `types`, but not both.", "types")
    delivered = _boolean(params, "delivery_success")
    wanted: frozenset[str] | None = None
    pattern: re.Pattern[str] | None = None
    if isinstance(many, list):
        if len(many) > MAX_TYPES:
            raise _invalid(
                f"Invalid types: at most {MAX_TYPES} event types may be given (got {len(many)}).",
                "types",
            )
        wanted = frozenset(many)
    elif many is not None:
        raise _invalid("Invalid array: types must be a list of event types.", "types")
    elif single is not None:
        # Stripe's `type` takes `*` as a wildcard, as in `invoice.*`.
        pattern = re.compile(".*".join(re.escape(part) for part in single.split("*")))

    def keep(event: JSONObject) -> bool:
        if wanted is not None and event["type"] not in wanted:
            return False
        if pattern is not None and pattern.fullmatch(event["type"]) is None:
            return False
        # An event counts as delivered once no webhook delivery is pending for it.
        return delivered is None or (event["pending_webhooks"] == 0) == delivered

    return keep


def _object_filter(resource: Resource, params: Params) -> Filter:
    wanted = {name: _text(params, name) for name in resource.filters if name in params}
    if resource.path == "subscriptions":
        # Stripe leaves canceled subscriptions out unless `status` asks for them.
        status = wanted.pop("status", None)
        if status is None:
            statuses: frozenset[str] | None = frozenset(["canceled"])
            excluded = True
        elif status == "all":
            statuses, excluded = None, False
        else:
            statuses = _SUBSCRIPTION_ENDED if status == "ended" else frozenset([status])
            excluded = False

        def keep(obj: JSONObject) -> bool:
            if statuses is not None and (obj.get("status") in statuses) == excluded:
                return False
            return _fields_match(obj, wanted)

        return keep
    return lambda obj: _fields_match(obj, wanted)


def _fields_match(obj: JSONObject, wanted: Mapping[str, str | None]) -> bool:
    return all(_as_param(obj.get(name)) == value for name, value in wanted.items())


def _as_param(value: Any) -> str:
    """A field as a query parameter would spell it: ids of expanded objects, ``true``/``false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return str(value.get("id"))
    return "" if value is None else str(value)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one segment, so clients never wait on a delayed ACK.
    disable_nagle_algorithm = True
    wbufsize = 1 << 16
    server: _DoubleServer

    def setup(self) -> None:
        super().setup()
        self.server.connected(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.disconnected(self.connection)

    def do_GET(self) -> None:
        self.server.respond(self)

    do_POST = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        # Requests are recorded in StripeDouble.requests rather than printed.
        return


class _DoubleServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], respond: Callable[[_RequestHandler], None]
    ) -> None:
        super().__init__(address, _RequestHandler)
        self.respond = respond
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def connected(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def disconnected(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer (a timeout, a test's dropped client) is no error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Shut idle keep-alive connections so their handler threads end with the server."""
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self._connections.clear()


def generate_account(
    count: int,
    *,
    seed: int | None = None,
    end: int | None = None,
    span: int = 35 * DAY,
    accounts: Sequence[str] = (),
) -> list[JSONObject]:
    """Return ``count`` realistic events of one Stripe account, oldest first.

    Customer lifecycles built by :class:`EventFactory` start evenly over the ``span`` seconds
    before ``end`` (the wall clock unless given), so with the default span about a seventh of
    the events lie beyond the Events API's 30 days. Every other customer keeps an active
    subscription; of the others, every seventh is then deleted, and every fifth customer gets
    a refund. Connected ``accounts`` take their turn of the lifecycles, their events carrying
    ``account``. One event in twenty is still pending delivery (``pending_webhooks`` 1), the
    others delivered (0). Given a seed, the ids are the same every time.
    """
    end = int(time.time()) if end is None else end
    start = end - span
    factories = [
        EventFactory(None if seed is None else seed + index, start=start, account=account)
        for index, account in enumerate([None, *accounts])
    ]
    events: list[JSONObject] = []
    prices = []
    for factory in factories:
        product = factory.product()
        price = factory.price(product)
        events.append(factory.event("product.created", product, created=product["created"]))
        events.append(factory.event("price.created", price))
        events.append(factory.event("plan.created", factory.plan(price)))
        prices.append(price)
    step = span // max(1, count // _EVENTS_PER_CUSTOMER)
    for index in itertools.count():
        if len(events) >= count:
            break
        factory = factories[index % len(factories)]
        factory.now = max(factory.now, start + index * step)
        lifecycle = factory.customer_lifecycle(price=prices[index % len(factories)])
        keeps_subscription = index % 2 == 1
        if keeps_subscription:
            lifecycle = itertools.takewhile(
                lambda event: event["type"] != "customer.subscription.deleted", lifecycle
            )
        customer_events = list(lifecycle)
        events.extend(customer_events)
        if index % 5 == 2:
            events.extend(_refund(factory, customer_events))
        if index % 7 == 0 and not keeps_subscription:
            customer = customer_events[-1]["data"]["object"]
            events.append(factory.event("customer.deleted", customer))
    events.sort(key=lambda event: event["created"])
    del events[count:]
    for index, event in enumerate(events):
        event["pending_webhooks"] = 1 if index % 20 == 19 else 0
    return events


def _refund(factory: EventFactory, customer_events: Sequence[JSONObject]) -> list[JSONObject]:
    """The events of refunding the customer's first charge in full."""
    charge = next(
        event["data"]["object"] for event in customer_events if event["type"] == "charge.succeeded"
    )
    refund = factory.refund(charge)
    refunded = {**charge, "refunded": True, "amount_refunded": charge["amount"]}
    return [
        factory.event("refund.created", refund),
        factory.event(
            "charge.refunded",
            refunded,
            previous_attributes={"refunded": False, "amount_refunded": 0},
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a generated account until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m streams.devtools.stripe_double",
        description="Serve a generated Stripe account on a local double of Stripe's API.",
    )
    parser.add_argument("--events", type=int, default=2000, help="events to generate")
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated ids")
    parser.add_argument("--accounts", type=int, default=0, help="connected accounts to add")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument(
        "--rate-cap", type=float, help="requests per second beyond which to answer 429"
    )
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to each request")
    args = parser.parse_args(argv)

    accounts = [f"acct_1Connected{index:05d}" for index in range(1, args.accounts + 1)]
    end = int(time.time())
    events = generate_account(args.events, seed=args.seed, end=end, accounts=accounts)
    listed = sum(event["created"] >= end - EVENT_RETENTION for event in events)
    double = StripeDouble(
        events, api_key=args.api_key, accounts=accounts, host=args.host, port=args.port
    )
    double.rate_cap = args.rate_cap
    double.delay = args.delay
    with double:
        print(
            f"Stripe double at {double.url}: {len(events)} events ({listed} within the last 30"
            f" days) across the platform and {len(accounts)} connected accounts"
            f"{' (' + ', '.join(accounts) + ')' if accounts else ''}.\n"
            f"  export STRIPE_API_BASE={double.url} STRIPE_API_KEY={args.api_key}\n"
            "Ctrl-C stops it.",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
