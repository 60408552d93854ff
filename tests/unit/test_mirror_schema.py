"""The canonical schema's mirror tables match the tables and typed columns the handlers declare.

The canonical schema is what every migration produces (an integration test compares the two),
so a change to a mirror table changes it too.
"""

from __future__ import annotations

import re

from projections.database import SQL_DIR
from streams.handlers.registry import load_handlers

MIGRATION = SQL_DIR / "schema.sql"
COMMON_COLUMNS = {
    "id": "text PRIMARY KEY",
    "data": "jsonb NOT NULL",
    "deleted": "boolean NOT NULL DEFAULT false",
    "livemode": "boolean",
    "account": "text",
    "last_event_id": "text",
    "last_event_created": "timestamptz",
    "last_event_offset": "bigint",
    "updated_at": "timestamptz",
}
TABLE = re.compile(r"^CREATE TABLE stripe\.(\w+) \((.*?)^\);", re.MULTILINE | re.DOTALL)
INDEX = re.compile(r"^CREATE INDEX (\w+) ON stripe\.(\w+) \(([^)]*)\);", re.MULTILINE)


def _tables() -> dict[str, dict[str, str]]:
    """Table name to column name to its definition, as the migration creates them."""
    tables = {}
    for name, body in TABLE.findall(MIGRATION.read_text()):
        columns = [line.strip().rstrip(",") for line in body.strip().splitlines()]
        tables[name] = dict(column.split(None, 1) for column in columns)
    return tables


def _indexes() -> list[tuple[str, str, list[str]]]:
    return [
        (name, table, [column.strip() for column in columns.split(",")])
        for name, table, columns in INDEX.findall(MIGRATION.read_text())
    ]


def test_migration_creates_the_stripe_schema_and_the_contract_tables() -> None:
    assert "CREATE SCHEMA IF NOT EXISTS stripe;" in MIGRATION.read_text()
    required = {
        "customers",
        "subscriptions",
        "subscription_items",
        "invoices",
        "payment_intents",
        "charges",
        "refunds",
        "checkout_sessions",
        "products",
        "prices",
        "disputes",
        "payment_methods",
        "setup_intents",
    }
    assert required <= set(_tables())


def test_every_declared_table_is_created_and_nothing_else() -> None:
    assert set(_tables()) == set(load_handlers().tables)


def test_every_table_has_the_common_columns() -> None:
    for name, columns in _tables().items():
        assert {column: columns.get(column) for column in COMMON_COLUMNS} == COMMON_COLUMNS, name


def test_typed_columns_match_the_handlers_in_name_and_type() -> None:
    tables = _tables()
    for name, table in load_handlers().tables.items():
        created = {
            column: definition
            for column, definition in tables[name].items()
            if column not in COMMON_COLUMNS
        }
        assert created == dict(table.column_types), name
        assert tuple(table.column_types) == table.columns


def test_indexes_cover_existing_columns_with_unique_names() -> None:
    tables = _tables()
    indexes = _indexes()
    assert len({name for name, _, _ in indexes}) == len(indexes)
    for name, table, columns in indexes:
        assert set(columns) <= set(tables[table]), name


def test_customer_and_child_set_lookups_are_indexed() -> None:
    leading = {(table, columns[0]) for _, table, columns in _indexes()}
    for name, columns in _tables().items():
        if "customer" in columns:
            assert (name, "customer") in leading, name
    assert ("subscription_items", "subscription") in leading
