"""Numbered SQL migrations: each applied once, in its own transaction, and never edited after.

Applied files are recorded with a SHA-256 checksum in ``public.stripe_streams_migrations``; a file
whose content changed after it was applied, or that disappeared, stops the run before anything is
applied. An advisory lock lets several workers start at once without racing. Workers call
:func:`require_migrated` before they start, and refuse to run on a schema behind their code.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.rows import TupleRow

from projections.database import SQL_DIR, database_errors
from streams.errors import MigrationError, Misconfiguration

MIGRATIONS_DIR = SQL_DIR / "migrations"
"""Where the migrations ship: inside the package, so any installation finds them."""
_FILE_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")
# Arbitrary constant naming this project's migration lock among advisory locks.
_LOCK_KEY = 0x5354524D
_CONNECT_TIMEOUT = 5

_CREATE_HISTORY = """
CREATE TABLE IF NOT EXISTS public.stripe_streams_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    """One numbered migration file."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Return a directory's migrations in version order; refuse bad names, duplicates and none.

    An installation without its migration files would otherwise report an empty database as
    up to date.
    """
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNN_snake_case.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path.name}: version {version} is used twice")
        found[version] = Migration(version, path.name, path.read_text(encoding="utf-8"))
    if not found:
        raise MigrationError(f"no migration files in {directory}: this installation is incomplete")
    return [found[version] for version in sorted(found)]


def migrate(database_url: str, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply pending migrations and return them; applied ones are left untouched.

    Raises DependencyUnavailable when PostgreSQL cannot be reached (waiting can help) and
    Misconfiguration when it refuses the login or has no such database.
    """
    migrations = discover(directory)
    with database_errors(database_url), _connect(database_url) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(_CREATE_HISTORY)
            applied = _applied(conn)
            _check_unchanged(migrations, applied)
            pending = [m for m in migrations if m.version not in applied]
            for migration in pending:
                _apply(conn, migration)
            return pending
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def require_migrated(database_url: str, directory: Path = MIGRATIONS_DIR) -> None:
    """Raise Misconfiguration naming the migrations of ``directory`` not applied yet, if any.

    Errors reaching PostgreSQL are raised as by :func:`migrate`.
    """
    migrations = discover(directory)
    with database_errors(database_url), _connect(database_url) as conn:
        history = conn.execute(
            "SELECT to_regclass('public.stripe_streams_migrations') IS NOT NULL"
        ).fetchone()
        applied = _applied(conn) if history and history[0] else {}
        database = conn.info.dbname
    pending = [m.name for m in migrations if m.version not in applied]
    if pending:
        raise Misconfiguration(
            f"database {database} is not migrated ({len(pending)} pending: "
            f"{', '.join(pending)}): run 'stripe-streams migrate'"
        )


def _connect(database_url: str) -> psycopg.Connection[TupleRow]:
    return psycopg.connect(
        database_url, autocommit=True, connect_timeout=_CONNECT_TIMEOUT,
        application_name="stripe-streams",
    )


def _applied(conn: psycopg.Connection[TupleRow]) -> dict[int, str]:
    applied: dict[int, str] = dict(
        conn.execute("SELECT version, checksum FROM public.stripe_streams_migrations").fetchall()
    )
    return applied


def _check_unchanged(migrations: list[Migration], applied: dict[int, str]) -> None:
    by_version = {m.version: m for m in migrations}
    for version, checksum in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(f"applied migration {version:03d} is missing from the directory")
        if migration.checksum != checksum:
            raise MigrationError(
                f"{migration.name} changed after it was applied; add a new migration instead"
            )


def _apply(conn: psycopg.Connection[tuple[object, ...]], migration: Migration) -> None:
    try:
        with conn.transaction():
            conn.execute(migration.sql.encode("utf-8"))
            conn.execute(
                "INSERT INTO public.stripe_streams_migrations (version, name, checksum)"
                " VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
    except psycopg.Error as exc:
        raise MigrationError(f"{migration.name} failed: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return next(iter(str(exc).strip().splitlines()), type(exc).__name__)

