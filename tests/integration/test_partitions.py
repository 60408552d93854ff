"""The event log and the audit trail by month: migrated with their rows, created ahead, expired."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from projections.migrations import MIGRATIONS_DIR, migrate
from projections.partitions import maintain_partitions

pytestmark = pytest.mark.integration

_INSERT = (
    "INSERT INTO ops.event_log (event_id, type, family, object_id, livemode, created, "
    "received_at, processed_at, status, source, topic, \"partition\", \"offset\") VALUES "
    "(%s, 'customer.updated', 'customers', 'cus_1', false, %s, %s, %s, 'processed', 'webhook', "
    "'stripe.events.customers', 0, %s)"
)


@pytest.fixture
def empty_url(postgres_admin_url: str) -> Iterator[str]:
    name = f"ss_partitions_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(postgres_admin_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _holders(url: str, table: str) -> dict[str, str]:
    """Each row's id and the partition that holds it."""
    with psycopg.connect(url) as conn:
        key = "event_id"
        rows = conn.execute(
            sql.SQL("SELECT {}, tableoid::regclass::text FROM {}").format(
                sql.Identifier(key), sql.Identifier("ops", table)
            )
        ).fetchall()
    return {str(k): str(v) for k, v in rows}


def test_the_migration_keeps_every_logged_event_in_the_partition_of_its_month(
    empty_url: str, tmp_path: Path
) -> None:
    before = tmp_path / "before"
    before.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if int(path.name[:3]) < 8:
            shutil.copy(path, before)
    migrate(empty_url, before)
    october, november = datetime(2026, 10, 5, tzinfo=UTC), datetime(2026, 11, 30, 23, tzinfo=UTC)
    with psycopg.connect(empty_url) as conn:
        conn.execute(_INSERT, ("evt_oct", october, october, october, 1))
        conn.execute(_INSERT, ("evt_nov", november, november, november, 2))

    migrate(empty_url)

    assert _holders(empty_url, "event_log") == {
        "evt_oct": "ops.event_log_2026_10", "evt_nov": "ops.event_log_2026_11",
    }
    with psycopg.connect(empty_url) as conn:
        # A redelivery of a migrated event still finds its row: one row, two deliveries.
        conn.execute(
            _INSERT.replace(") VALUES", ", deliveries) VALUES").replace("%s)", "%s, 1)")
            + " ON CONFLICT (event_id, created) DO UPDATE SET deliveries = "
            "ops.event_log.deliveries + 1",
            ("evt_nov", november, november, november, 9),
        )
        assert conn.execute(
            "SELECT deliveries, \"offset\" FROM ops.event_log WHERE event_id = 'evt_nov'"
        ).fetchall() == [(2, 2)]


def test_maintenance_creates_months_ahead_moves_strays_and_drops_expired_months(
    database_url: str,
) -> None:
    now = datetime(2031, 6, 15, tzinfo=UTC)
    stray = datetime(2031, 8, 2, tzinfo=UTC)
    ancient = datetime(2019, 1, 1, tzinfo=UTC)
    with psycopg.connect(database_url) as conn:
        # Months nothing created yet: both rows wait in the default partition.
        conn.execute(_INSERT, ("evt_stray", stray, stray, stray, 1))
        conn.execute(_INSERT, ("evt_ancient", ancient, ancient, ancient, 2))
    assert set(_holders(database_url, "event_log").values()) == {"ops.event_log_default"}

    with psycopg.connect(database_url, autocommit=True) as conn:
        first = maintain_partitions(conn, now=now)
        again = maintain_partitions(conn, now=now)

    assert first is not None and again is not None
    assert [n for n in first.created if n.startswith("event_log_")] == [
        "event_log_2031_06", "event_log_2031_07", "event_log_2031_08", "event_log_2031_09",
    ]
    assert first.moved == 1
    assert again.created == [] and again.moved == 0
    assert _holders(database_url, "event_log") == {
        "evt_stray": "ops.event_log_2031_08", "evt_ancient": "ops.event_log_default",
    }

    later = datetime(2031, 10, 3, tzinfo=UTC)
    with psycopg.connect(database_url, autocommit=True) as conn:
        expired = maintain_partitions(conn, now=later, retention_months=2)

    assert expired is not None
    assert "event_log_2031_06" in expired.dropped and "event_log_2031_07" in expired.dropped
    assert "event_log_2031_08" not in expired.dropped
    assert expired.purged == 1
    assert _holders(database_url, "event_log") == {"evt_stray": "ops.event_log_2031_08"}


def test_a_second_process_skips_maintenance_while_one_runs(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as holder, psycopg.connect(
        database_url, autocommit=True
    ) as other:
        holder.execute("SELECT pg_advisory_lock(%s)", (0x53545054,))
        assert maintain_partitions(other, now=datetime.now(UTC)) is None
