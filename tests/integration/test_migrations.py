"""Migrations against a real PostgreSQL: idempotent, recorded, and never silently edited."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from projections.migrations import MIGRATIONS_DIR, discover, migrate
from streams.errors import MigrationError


def _copy_migrations(target: Path) -> Path:
    shutil.copytree(MIGRATIONS_DIR, target)
    return target


def test_migrating_a_migrated_database_is_a_no_op(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        before = conn.execute(
            "SELECT version, checksum, applied_at FROM public.stripe_streams_migrations"
        ).fetchall()
    assert migrate(database_url) == []
    with psycopg.connect(database_url) as conn:
        after = conn.execute(
            "SELECT version, checksum, applied_at FROM public.stripe_streams_migrations"
        ).fetchall()
    assert after == before
    assert [row[0] for row in after] == [m.version for m in discover()]


def test_ops_tables_exist_after_migrating(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'ops'"
            )
        }
    assert {"event_log", "dead_letters", "batch_jobs", "projection_offsets", "event_stats"} <= (
        tables
    )


def test_an_edited_applied_migration_is_refused(database_url: str, tmp_path: Path) -> None:
    directory = _copy_migrations(tmp_path / "migrations")
    first = sorted(directory.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited after it was applied\n")
    with pytest.raises(MigrationError, match=f"{first.name} changed after it was applied"):
        migrate(database_url, directory)


def test_a_missing_applied_migration_is_refused(database_url: str, tmp_path: Path) -> None:
    directory = _copy_migrations(tmp_path / "migrations")
    sorted(directory.glob("*.sql"))[0].unlink()
    with pytest.raises(MigrationError, match="missing"):
        migrate(database_url, directory)


def test_a_failing_migration_leaves_nothing_behind(database_url: str, tmp_path: Path) -> None:
    directory = _copy_migrations(tmp_path / "migrations")
    (directory / "900_broken.sql").write_text(
        "CREATE TABLE ops.half_done (id int);\nSELECT no_such_function();\n"
    )
    with pytest.raises(MigrationError, match=r"900_broken\.sql failed"):
        migrate(database_url, directory)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('ops.half_done')").fetchone() == (None,)
        assert conn.execute(
            "SELECT count(*) FROM public.stripe_streams_migrations WHERE version = 900"
        ).fetchone() == (0,)
    (directory / "900_broken.sql").write_text("CREATE TABLE ops.fixed (id int);\n")
    assert [m.name for m in migrate(database_url, directory)] == ["900_broken.sql"]
