"""The local Stripe API double: Stripe's list semantics, auth, Connect, the 30-day window, faults.

Driven both with the official ``stripe`` library (a ``StripeClient`` on the double's base URL)
and with plain HTTP, on events and objects built by the sample ``EventFactory``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from stripe._http_client import HTTPClient

from streams.devtools.samples import SEEDED_START, EventFactory, JSONObject
from streams.devtools.stripe_double import (
    DAY,
    DEFAULT_API_KEY,
    DROPPED,
    EVENT_RETENTION,
    MAX_TYPES,
    PLATFORM_ACCOUNT,
    StripeDouble,
    generate_account,
)

END = SEEDED_START + 90 * DAY
TIED_NOW = SEEDED_START + DAY
AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
CONNECTED = "acct_1ConnectedTest01"
FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "stripe" / "fixtures3.json"
Query = Sequence[tuple[str, str | int]]


@pytest.fixture(scope="module")
def account_events() -> list[JSONObject]:
    return generate_account(3000, seed=7, end=END)


@pytest.fixture(scope="module")
def account(account_events: list[JSONObject]) -> Iterator[StripeDouble]:
    """A realistic account, read-only: tests that change the double start their own."""
    with StripeDouble(account_events, now=END) as double:
        yield double


@pytest.fixture(scope="module")
def tied_events() -> list[JSONObject]:
    return light_events(2000, SEEDED_START)


@pytest.fixture(scope="module")
def tied(tied_events: list[JSONObject]) -> Iterator[StripeDouble]:
    """Small events, three to a second, read-only like ``account``."""
    with StripeDouble(tied_events, now=TIED_NOW) as double:
        yield double


@pytest.fixture(autouse=True)
def _quick_library_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HTTPClient, "INITIAL_DELAY", 0.01)
    monkeypatch.setattr(HTTPClient, "MAX_DELAY", 0.02)


def client(double: StripeDouble, **options: Any) -> stripe.StripeClient:
    return stripe.StripeClient(DEFAULT_API_KEY, base_addresses={"api": double.url}, **options)


def http(double: StripeDouble, headers: dict[str, str] | None = None) -> httpx.Client:
    # Plain HTTP on loopback: no CA certificates or proxy settings to load, so clients are cheap.
    return httpx.Client(base_url=double.url, headers=headers, verify=False, trust_env=False)


def get(
    double: StripeDouble,
    path: str,
    params: Query = (),
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    with http(double, {**AUTH, **(headers or {})}) as session:
        return session.get(path, params=list(params))


def newest_first(events: Sequence[JSONObject], now: int = END) -> list[str]:
    """The ids the events API lists, in Stripe's order: created descending, later added first."""
    listed = [
        (event["created"], index, event["id"])
        for index, event in enumerate(events)
        if event["created"] >= now - EVENT_RETENTION
    ]
    return [event_id for _, _, event_id in sorted(listed, reverse=True)]


def page_all(
    double: StripeDouble,
    path: str,
    params: Query = (),
    *,
    ending_before: str | None = None,
    headers: dict[str, str] | None = None,
) -> list[str]:
    """Every id a list yields, paging by 100: older with starting_after, newer with ending_before.

    Pages come back newest first either way; the ids are returned in the order walked.
    """
    ids: list[str] = []
    cursor = ending_before
    with http(double, {**AUTH, **(headers or {})}) as session:
        while True:
            query = [*params, ("limit", 100)]
            if cursor is not None:
                query.append(("ending_before" if ending_before else "starting_after", cursor))
            body = session.get(path, params=query).json()
            page = [item["id"] for item in body["data"]]
            created = [item["created"] for item in body["data"]]
            assert created == sorted(created, reverse=True)
            ids.extend(reversed(page) if ending_before else page)
            if not body["has_more"]:
                return ids
            cursor = page[0] if ending_before else page[-1]


def light_events(count: int, start: int) -> list[JSONObject]:
    """Small events, three to a second, so ties in ``created`` are common."""
    factory = EventFactory(seed=3, start=start)
    product = factory.product()
    return [
        factory.event("product.updated", product, created=start + index // 3)
        for index in range(count)
    ]


def stripe_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert isinstance(error["type"], str)
    assert isinstance(error["message"], str)
    return error


def test_starting_after_pages_every_listed_event_once_newest_first(
    account: StripeDouble, account_events: list[JSONObject]
) -> None:
    expected = newest_first(account_events)
    assert 2000 < len(expected) < len(account_events)

    assert page_all(account, "/v1/events") == expected


def test_ending_before_pages_toward_the_newest_event(
    account: StripeDouble, account_events: list[JSONObject]
) -> None:
    expected = newest_first(account_events)

    walked = page_all(account, "/v1/events", ending_before=expected[-1])

    assert walked == expected[::-1][1:]
    first = get(account, "/v1/events", [("limit", 3), ("ending_before", expected[10])]).json()
    assert [event["id"] for event in first["data"]] == expected[7:10]
    assert first["has_more"] is True


def test_stripe_library_pages_both_ways_through_ties(
    tied: StripeDouble, tied_events: list[JSONObject]
) -> None:
    expected = newest_first(tied_events, TIED_NOW)
    stripe_client = client(tied)
    tied.clear_requests()

    forward = stripe_client.v1.events.list({"limit": 100}).auto_paging_iter()
    backward = stripe_client.v1.events.list(
        {"limit": 100, "ending_before": expected[-1]}
    ).auto_paging_iter()

    assert [event.id for event in forward] == expected
    assert [event.id for event in backward] == expected[::-1][1:]
    assert tied.count("/v1/events", 200) == 20 + 20


def test_created_filters(tied: StripeDouble, tied_events: list[JSONObject]) -> None:
    expected = newest_first(tied_events, TIED_NOW)
    created = {event["id"]: event["created"] for event in tied_events}
    middle = created[expected[len(expected) // 2]]

    for operator, keep in {
        "gt": lambda at: at > middle,
        "gte": lambda at: at >= middle,
        "lt": lambda at: at < middle,
        "lte": lambda at: at <= middle,
    }.items():
        found = page_all(tied, "/v1/events", [(f"created[{operator}]", middle)])
        assert found == [event_id for event_id in expected if keep(created[event_id])]
    exact = page_all(tied, "/v1/events", [("created", middle)])
    assert exact == [event_id for event_id in expected if created[event_id] == middle]
    assert len(exact) == 3
    window = page_all(tied, "/v1/events", [("created[gte]", middle - 9), ("created[lt]", middle)])
    assert window == [event_id for event_id in expected if middle - 9 <= created[event_id] < middle]
    assert len(window) == 27
    stripe_error(get(tied, "/v1/events", [("created[gt]", "yesterday")]), 400)
    stripe_error(get(tied, "/v1/events", [("created[after]", middle)]), 400)


def test_type_and_types_filters(
    account: StripeDouble, account_events: list[JSONObject]
) -> None:
    expected = newest_first(account_events)
    types = {event["id"]: event["type"] for event in account_events}
    wanted = ["customer.deleted", "charge.refunded"]

    by_library = client(account).v1.events.list({"limit": 100, "types": wanted})
    by_brackets = page_all(account, "/v1/events", [("types[]", kind) for kind in wanted])
    by_wildcard = page_all(account, "/v1/events", [("type", "invoice.*")])
    by_type = page_all(account, "/v1/events", [("type", "refund.created")])

    assert [event.id for event in by_library.auto_paging_iter()] == by_brackets
    assert by_brackets == [event_id for event_id in expected if types[event_id] in wanted]
    assert by_wildcard == [
        event_id for event_id in expected if types[event_id].startswith("invoice.")
    ]
    assert by_type == [event_id for event_id in expected if types[event_id] == "refund.created"]
    assert by_type


def test_types_bounds(account: StripeDouble) -> None:
    too_many = [("types[]", f"invoice.type_{index}") for index in range(MAX_TYPES + 1)]
    just_enough = too_many[:MAX_TYPES]

    assert stripe_error(get(account, "/v1/events", too_many), 400)["param"] == "types"
    assert get(account, "/v1/events", just_enough).status_code == 200
    both = [("type", "invoice.paid"), ("types[]", "invoice.paid")]
    assert stripe_error(get(account, "/v1/events", both), 400)["param"] == "types"


def test_delivery_success_filter(
    account: StripeDouble, account_events: list[JSONObject]
) -> None:
    expected = newest_first(account_events)
    pending = {event["id"] for event in account_events if event["pending_webhooks"] > 0}

    undelivered = page_all(account, "/v1/events", [("delivery_success", "false")])
    delivered = page_all(account, "/v1/events", [("delivery_success", "true")])

    assert undelivered == [event_id for event_id in expected if event_id in pending]
    assert delivered == [event_id for event_id in expected if event_id not in pending]
    assert undelivered and delivered
    stripe_error(get(account, "/v1/events", [("delivery_success", "maybe")]), 400)


@pytest.mark.parametrize("limit", ["0", "101", "-5", "ten"])
def test_limit_out_of_bounds_is_a_stripe_400(account: StripeDouble, limit: str) -> None:
    error = stripe_error(get(account, "/v1/customers", [("limit", limit)]), 400)

    assert error["type"] == "invalid_request_error"
    assert error["param"] == "limit"


def test_limit_defaults_to_10_and_allows_1_to_100(account: StripeDouble) -> None:
    assert len(get(account, "/v1/events").json()["data"]) == 10
    assert len(get(account, "/v1/events", [("limit", 1)]).json()["data"]) == 1
    assert len(get(account, "/v1/events", [("limit", 100)]).json()["data"]) == 100
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client(account).v1.events.list({"limit": 101})
    assert raised.value.http_status == 400
    assert raised.value.param == "limit"


def test_list_envelope_has_the_shape_of_stripe_lists(account: StripeDouble) -> None:
    if not FIXTURES.exists():
        pytest.skip(f"Stripe's fixtures are not at {FIXTURES}")
    fixture_lists = list(_lists_in(json.loads(FIXTURES.read_text())["resources"]))
    assert fixture_lists
    shapes = {_shape(found) for found in fixture_lists}

    for path in ("/v1/events", "/v1/customers", "/v1/checkout/sessions"):
        body = get(account, path, [("limit", 2)]).json()
        assert _shape(body) in shapes
        assert body["object"] == "list"
        assert body["url"] == path


def _shape(found: dict[str, Any]) -> tuple[tuple[str, type], ...]:
    return tuple((key, type(value)) for key, value in sorted(found.items()))


def _lists_in(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if value.get("object") == "list" and "total_count" not in value:
            yield value
        for child in value.values():
            yield from _lists_in(child)
    elif isinstance(value, list):
        for child in value:
            yield from _lists_in(child)


def test_retrieve_events_and_objects(
    account: StripeDouble, account_events: list[JSONObject]
) -> None:
    newest = account_events[-1]
    customer = next(
        event["data"]["object"] for event in account_events if event["type"] == "customer.created"
    )

    retrieved = client(account).v1.events.retrieve(newest["id"])
    assert retrieved.id == newest["id"]
    assert retrieved.type == newest["type"]
    assert get(account, f"/v1/customers/{customer['id']}").json()["id"] == customer["id"]
    missing = stripe_error(get(account, "/v1/customers/cus_nobody"), 404)
    assert missing["code"] == "resource_missing"
    assert missing["param"] == "id"
    with pytest.raises(stripe.InvalidRequestError):
        client(account).v1.events.retrieve("evt_nothing")


def test_unknown_paths_cursors_and_parameters(account: StripeDouble) -> None:
    assert stripe_error(get(account, "/v1/unicorns"), 404)["message"].startswith(
        "Unrecognized request URL (GET: /v1/unicorns)"
    )
    with http(account, AUTH) as session:
        stripe_error(session.post("/v1/customers", data={"email": "a@b.c"}), 404)
    cursor = stripe_error(get(account, "/v1/events", [("starting_after", "evt_gone")]), 404)
    assert cursor["param"] == "starting_after"
    unknown = stripe_error(get(account, "/v1/customers", [("types[]", "customer.created")]), 400)
    assert unknown["code"] == "parameter_unknown"
    empty = stripe_error(get(account, "/v1/events", [("starting_after", "")]), 400)
    assert empty["code"] == "parameter_invalid_empty"
    both = [("starting_after", "evt_a"), ("ending_before", "evt_b")]
    stripe_error(get(account, "/v1/events", both), 400)


def test_resources_page_like_events(
    account: StripeDouble, account_events: list[JSONObject]
) -> None:
    customers: dict[str, int] = {}
    deleted: set[str] = set()
    for event in account_events:
        obj = event["data"]["object"]
        if obj["object"] == "customer":
            customers.setdefault(obj["id"], obj["created"])
            if event["type"] == "customer.deleted":
                deleted.add(obj["id"])
    listed = page_all(account, "/v1/customers")
    one_customer = next(iter(customers))

    assert set(listed) == set(customers) - deleted
    assert [customers[customer] for customer in listed] == sorted(
        (customers[customer] for customer in listed), reverse=True
    )
    assert page_all(account, "/v1/customers", ending_before=listed[-1]) == listed[::-1][1:]
    charges = get(account, "/v1/charges", [("customer", one_customer)]).json()["data"]
    assert charges
    assert {charge["customer"] for charge in charges} == {one_customer}


def test_subscriptions_leave_out_canceled_unless_asked(account: StripeDouble) -> None:
    def statuses(params: Query = ()) -> set[str]:
        listed = get(account, "/v1/subscriptions", [*params, ("limit", 100)]).json()["data"]
        return {subscription["status"] for subscription in listed}

    assert statuses() == {"active"}
    assert statuses([("status", "canceled")]) == {"canceled"}
    assert statuses([("status", "ended")]) == {"canceled"}
    assert statuses([("status", "all")]) == {"active", "canceled"}


def test_authentication_and_restricted_keys() -> None:
    with StripeDouble(light_events(5, SEEDED_START), now=SEEDED_START) as double:
        with http(double) as anonymous:
            missing = stripe_error(anonymous.get("/v1/events"), 401)
            basic = anonymous.get("/v1/events", auth=(DEFAULT_API_KEY, ""))
        wrong_key = "sk_test_wrong_but_long_1234"
        wrong_auth = {"Authorization": f"Bearer {wrong_key}"}
        wrong = stripe_error(get(double, "/v1/events", headers=wrong_auth), 401)

        assert "did not provide an API key" in missing["message"]
        assert wrong["type"] == "invalid_request_error"
        assert wrong["message"].endswith("1234")
        assert wrong_key not in wrong["message"]
        assert basic.status_code == 200
        other_key = stripe.StripeClient("sk_test_other", base_addresses={"api": double.url})
        with pytest.raises(stripe.AuthenticationError):
            other_key.v1.events.list()

        double.restricted_to = {"events"}
        assert get(double, "/v1/events").status_code == 200
        denied = stripe_error(get(double, "/v1/customers"), 403)
        assert "'rak_customer_read'" in denied["message"]
        assert PLATFORM_ACCOUNT in denied["message"]
        with pytest.raises(stripe.PermissionError):
            client(double).v1.products.list()

        double.restricted_to = None
        assert get(double, "/v1/customers").status_code == 200


def test_stripe_account_selects_a_connected_account() -> None:
    platform = EventFactory(seed=1, start=SEEDED_START)
    connected = EventFactory(seed=2, start=SEEDED_START, account=CONNECTED)
    platform_events = list(platform.customer_lifecycle())
    connected_events = list(connected.customer_lifecycle())
    connected_customer = connected_events[0]["data"]["object"]["id"]
    now = SEEDED_START + DAY
    with StripeDouble(
        [*platform_events, *connected_events], accounts=["acct_1QuietConnected0"], now=now
    ) as double:
        as_connected = {"Stripe-Account": CONNECTED}

        assert page_all(double, "/v1/events") == newest_first(platform_events, now)
        assert page_all(double, "/v1/events", headers=as_connected) == newest_first(
            connected_events, now
        )
        by_library = client(double).v1.events.list(
            {"limit": 100}, {"stripe_account": CONNECTED}
        )
        assert [event.account for event in by_library.auto_paging_iter()] == [CONNECTED] * 12
        assert get(double, f"/v1/customers/{connected_customer}", headers=as_connected).json()[
            "id"
        ] == connected_customer
        stripe_error(get(double, f"/v1/customers/{connected_customer}"), 404)
        quiet = get(double, "/v1/events", headers={"Stripe-Account": "acct_1QuietConnected0"})
        assert quiet.json()["data"] == []
        own = get(double, "/v1/events", headers={"Stripe-Account": PLATFORM_ACCOUNT})
        assert len(own.json()["data"]) == 10
        unknown = get(double, "/v1/events", headers={"Stripe-Account": "acct_1NotConnected000"})
        assert stripe_error(unknown, 403)["code"] == "account_invalid"
        with pytest.raises(stripe.PermissionError):
            client(double, stripe_account="acct_1NotConnected000").v1.events.list()


def test_events_api_shows_the_last_30_days_of_its_clock() -> None:
    factory = EventFactory(seed=5, start=END - 31 * DAY)
    old = factory.sample_event("customer.created")
    recent = factory.sample_event("customer.updated", created=END - 29 * DAY)
    with StripeDouble([old, recent], now=END) as double:
        assert page_all(double, "/v1/events") == [recent["id"]]
        assert page_all(double, "/v1/events", [("created[gte]", END - 40 * DAY)]) == [recent["id"]]
        stripe_error(get(double, f"/v1/events/{old['id']}"), 404)
        assert get(double, "/v1/customers", [("limit", 100)]).json()["data"]

        double.now = END - 2 * DAY
        assert page_all(double, "/v1/events") == [recent["id"], old["id"]]
        assert get(double, f"/v1/events/{old['id']}").status_code == 200


def test_store_changes_create_drift() -> None:
    factory = EventFactory(seed=9, start=SEEDED_START)
    events = list(factory.customer_lifecycle())
    customer = events[0]["data"]["object"]
    path = f"/v1/customers/{customer['id']}"
    with StripeDouble(events, now=SEEDED_START + DAY) as double:
        drifted = double.stored_object("customers", customer["id"])
        drifted["email"] = "drift@example.com"
        double.put_object(drifted)
        assert get(double, path).json()["email"] == "drift@example.com"

        stale = factory.event("customer.updated", customer, created=events[-1]["created"] + 1)
        double.add_events([stale])
        assert get(double, path).json()["email"] == "drift@example.com"
        assert get(double, "/v1/events", [("limit", 1)]).json()["data"][0]["id"] == stale["id"]

        newer = {**customer, "email": "newer@example.com"}
        double.add_events([factory.event("customer.updated", newer, created=SEEDED_START + DAY)])
        assert get(double, path).json()["email"] == "newer@example.com"

        double.delete_object("customers", customer["id"])
        assert get(double, path).json() == {
            "id": customer["id"],
            "object": "customer",
            "deleted": True,
        }
        assert customer["id"] not in page_all(double, "/v1/customers")
        with pytest.raises(KeyError):
            double.stored_object("customers", customer["id"])

        product = factory.product()
        double.add_events([
            factory.event("product.created", product, created=SEEDED_START + DAY),
            factory.event("product.deleted", product, created=SEEDED_START + DAY + 1),
        ])
        stripe_error(get(double, f"/v1/products/{product['id']}"), 404)
        with pytest.raises(ValueError, match="already added"):
            double.add_events([events[0]])


def test_rate_limited_requests_say_when_to_retry() -> None:
    with StripeDouble(light_events(5, SEEDED_START), now=SEEDED_START) as double:
        double.rate_limit_next(2, retry_after=3)
        first, second, third = (get(double, "/v1/events") for _ in range(3))

        assert stripe_error(first, 429)["code"] == "rate_limit"
        assert first.headers["Retry-After"] == "3"
        assert first.headers["Stripe-Should-Retry"] == "false"
        assert second.status_code == 429
        assert third.status_code == 200

        double.rate_limit_next(1, lock_timeout=True)
        locked = get(double, "/v1/events")
        assert stripe_error(locked, 429)["code"] == "lock_timeout"
        assert locked.headers["Stripe-Should-Retry"] == "true"

        double.rate_limit_next(1)
        with pytest.raises(stripe.RateLimitError):
            client(double, max_network_retries=2).v1.events.list()
        double.rate_limit_next(1, lock_timeout=True)
        assert len(client(double, max_network_retries=2).v1.events.list().data) == 5
        assert double.count("/v1/events", 429) == 5


def test_server_errors_and_dropped_connections_are_retried_by_the_library() -> None:
    with StripeDouble(light_events(5, SEEDED_START), now=SEEDED_START) as double:
        double.fail_next(1)
        failed = get(double, "/v1/events")
        assert stripe_error(failed, 500)["type"] == "api_error"
        assert failed.headers["Stripe-Should-Retry"] == "true"

        double.drop_next(1)
        with pytest.raises(httpx.RemoteProtocolError):
            get(double, "/v1/events")

        retrying = client(double, max_network_retries=3)
        double.fail_next(1)
        double.drop_next(1)
        assert len(retrying.v1.events.list().data) == 5
        double.drop_next(1)
        with pytest.raises(stripe.APIConnectionError):
            client(double, max_network_retries=0).v1.events.list()

        assert double.count("/v1/events", 500) == 2
        assert double.count("/v1/events", DROPPED) == 3
        assert double.count("/v1/events", 200) == 1
        statuses = [served.status for served in double.requests]
        assert statuses == [500, DROPPED, DROPPED, 500, 200, DROPPED]
        double.clear_requests()
        assert double.count() == 0


def test_delay_applies_to_each_request_and_requests_run_concurrently() -> None:
    with StripeDouble(light_events(5, SEEDED_START), now=SEEDED_START) as double:
        double.delay = 0.2
        statuses: list[int] = []

        def fetch() -> None:
            statuses.append(get(double, "/v1/events").status_code)

        started = time.monotonic()
        threads = [threading.Thread(target=fetch) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started

        assert statuses == [200] * 8
        assert 0.2 <= elapsed < 1.0


def test_rate_cap_answers_429_beyond_the_requests_per_second() -> None:
    with StripeDouble(light_events(5, SEEDED_START), now=SEEDED_START) as double:
        double.rate_cap = 5
        with http(double, AUTH) as session:
            burst = [session.get("/v1/events").status_code for _ in range(12)]
            time.sleep(1.05)
            after_a_second = session.get("/v1/events").status_code

        assert burst[:5] == [200] * 5
        assert set(burst[5:]) == {429}
        assert after_a_second == 200
        assert double.count("/v1/events", 429) == 7
