"""Migration 003 against a real PostgreSQL: canceled subscriptions and their items live again.

Rows are written as earlier versions left them (a subscription ended by
``customer.subscription.deleted`` and its items marked deleted), then the migration's SQL runs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from projections.migrations import discover
from streams.devtools.samples import EventFactory

pytestmark = pytest.mark.integration


def _migration_sql() -> str:
    (migration,) = [m for m in discover() if m.version == 3]
    return migration.sql


def _insert(
    conn: psycopg.Connection[Any],
    table: str,
    data: Mapping[str, Any],
    *,
    deleted: bool,
    **columns: Any,
) -> None:
    values = {"id": data["id"], "data": Jsonb(data), "deleted": deleted, **columns}
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            sql.Identifier("stripe", table),
            sql.SQL(", ").join(map(sql.Identifier, values)),
            sql.SQL(", ").join(sql.Placeholder() * len(values)),
        ),
        list(values.values()),
    )


def _subscription(
    conn: psycopg.Connection[Any], subscription: Mapping[str, Any], *, deleted: bool
) -> None:
    _insert(conn, "subscriptions", subscription, deleted=deleted, status=subscription["status"])
    for item in subscription["items"]["data"]:
        _insert(conn, "subscription_items", item, deleted=deleted, subscription=subscription["id"])


def _deleted(conn: psycopg.Connection[Any], table: str) -> dict[str, bool]:
    query = sql.SQL("SELECT id, deleted FROM {}").format(sql.Identifier("stripe", table))
    return dict(conn.execute(query).fetchall())


def test_canceled_subscriptions_and_their_items_are_no_longer_deleted(database_url: str) -> None:
    factory = EventFactory(seed=41)
    customer = factory.customer()
    price = factory.default_price()

    canceled = factory.subscription(customer, price)
    second = copy.deepcopy(canceled["items"]["data"][0])
    second["id"] = factory.new_id("subscription_item")
    canceled["items"]["data"].append(second)
    canceled.update(status="canceled", canceled_at=factory.now, ended_at=factory.now)

    # The same, with its items as a JSON array: the handler reads that shape too.
    as_array = factory.subscription(customer, price) | {"status": "canceled"}
    (array_item,) = as_array["items"]["data"]
    as_array["items"] = [array_item]

    active = factory.subscription(customer, price, status="active")
    removed = copy.deepcopy(active["items"]["data"][0])
    removed["id"] = factory.new_id("subscription_item")

    stub = {"id": factory.new_id("subscription"), "object": "subscription", "deleted": True}
    stub_item = copy.deepcopy(active["items"]["data"][0])
    stub_item["id"] = factory.new_id("subscription_item")

    with psycopg.connect(database_url) as conn:
        _subscription(conn, canceled, deleted=True)
        _insert(conn, "subscriptions", as_array, deleted=True, status="canceled")
        _insert(conn, "subscription_items", array_item, deleted=True, subscription=as_array["id"])
        _subscription(conn, active, deleted=False)
        _insert(conn, "subscription_items", removed, deleted=True, subscription=active["id"])
        _insert(conn, "subscriptions", stub, deleted=True)
        _insert(conn, "subscription_items", stub_item, deleted=True, subscription=stub["id"])
        _insert(conn, "customers", {"id": "cus_Gone", "object": "customer"}, deleted=True)

    with psycopg.connect(database_url) as conn:
        conn.execute(_migration_sql())

    with psycopg.connect(database_url) as conn:
        assert _deleted(conn, "subscriptions") == {
            canceled["id"]: False,
            as_array["id"]: False,
            active["id"]: False,
            stub["id"]: True,
        }
        assert _deleted(conn, "subscription_items") == {
            canceled["items"]["data"][0]["id"]: False,
            second["id"]: False,
            array_item["id"]: False,
            active["items"]["data"][0]["id"]: False,
            removed["id"]: True,
            stub_item["id"]: True,
        }
        assert _deleted(conn, "customers") == {"cus_Gone": True}
        touched = conn.execute(
            "SELECT count(*) FROM stripe.subscription_items WHERE updated_at IS NOT NULL"
        ).fetchone()
        assert touched == (3,)
