"""Every migration applied in order yields exactly the canonical schema file."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from projections.database import SQL_DIR

pytestmark = pytest.mark.integration
SCHEMAS = ("ops", "stripe")
# Monthly partitions depend on the day the database was migrated, not on the schema.
MONTHLY = r"_[0-9]{4}_[0-9]{2}(_|$)"
CATALOG = {
    "columns": """
        SELECT table_schema, table_name, column_name, data_type, is_nullable, column_default
        FROM information_schema.columns WHERE table_schema = ANY(%(schemas)s)
          AND table_name !~ %(monthly)s
        ORDER BY 1, 2, ordinal_position
    """,
    "constraints": """
        SELECT n.nspname, c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
        FROM pg_constraint AS c JOIN pg_namespace AS n ON n.oid = c.connamespace
        WHERE n.nspname = ANY(%(schemas)s) AND c.conrelid::regclass::text !~ %(monthly)s
        ORDER BY 1, 2, 3
    """,
    "indexes": """
        SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = ANY(%(schemas)s) AND tablename !~ %(monthly)s ORDER BY 1, 2, 3
    """,
}


@pytest.fixture
def canonical_url(postgres_admin_url: str) -> Iterator[str]:
    """A database built from the canonical schema file alone."""
    name = f"ss_canonical_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(urlsplit(postgres_admin_url)._replace(path=f"/{name}"))
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute((SQL_DIR / "schema.sql").read_text().encode())
        yield url
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _catalog(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return {
            part: conn.execute(
                query.encode(), {"schemas": list(SCHEMAS), "monthly": MONTHLY}
            ).fetchall()
            for part, query in CATALOG.items()
        }


def test_the_migrations_produce_the_canonical_schema(database_url: str, canonical_url: str) -> None:
    migrated, canonical = _catalog(database_url), _catalog(canonical_url)

    for part in CATALOG:
        assert migrated[part] == canonical[part], part
    assert len(canonical["columns"]) > 100
