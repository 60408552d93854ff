"""The worker's PostgreSQL connections, named SQL queries, and which database errors are outages.

Callers branch on ``retriable``: a lost connection, a server shutting down, a deadlock or a pool
that cannot hand out a connection in time become :class:`DependencyUnavailable` (wait and retry);
every other database error keeps its psycopg class.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import LiteralString, cast

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from streams.errors import DependencyUnavailable
from streams.settings import Settings

SQL_DIR = Path(__file__).resolve().parent / "sql"
# Long enough to ride out a busy pool, short enough that an outage is logged while it lasts.
CONNECTION_WAIT = 10.0
_QUERY_NAME = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


def create_pool(
    settings: Settings, *, max_size: int = 4, min_size: int = 1
) -> AsyncConnectionPool:
    """Return a closed pool on ``settings.database_url``; open it with ``await pool.open()``.

    The pool keeps ``min_size`` connections open from the moment it opens.

    The pool waits at most :data:`CONNECTION_WAIT` seconds for a connection, so an outage
    surfaces as :class:`DependencyUnavailable` instead of a hung agent.
    """
    return AsyncConnectionPool(
        settings.database_url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        timeout=CONNECTION_WAIT,
        kwargs={"application_name": "stripe-streams", "connect_timeout": 5, "autocommit": True},
        name="stripe-streams",
    )


def is_outage(exc: BaseException) -> bool:
    """Tell whether a database error means PostgreSQL is unreachable or must be asked again."""
    # OperationalError covers lost connections, shutdowns, deadlocks, serialization failures and
    # pool timeouts; InterfaceError is a connection the client already knows to be closed.
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


@asynccontextmanager
async def outages_as_unavailable() -> AsyncIterator[None]:
    """Re-raise database outages inside the block as :class:`DependencyUnavailable`."""
    try:
        yield
    except psycopg.Error as exc:
        if is_outage(exc):
            raise DependencyUnavailable(f"PostgreSQL unavailable: {_describe(exc)}") from exc
        raise


@asynccontextmanager
async def connection(pool: AsyncConnectionPool) -> AsyncIterator[AsyncConnection]:
    """Lend a pooled connection; an outage getting or using it raises DependencyUnavailable."""
    async with outages_as_unavailable(), pool.connection() as conn:
        yield conn


def _describe(exc: BaseException) -> str:
    first_line = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first_line[0] if first_line else 'no message'}"


@cache
def queries(file: str) -> dict[str, LiteralString]:
    """Load the named queries of ``projections/sql/<file>.sql`` (each after ``-- name: <name>``)."""
    text = (SQL_DIR / f"{file}.sql").read_text()
    parts = _QUERY_NAME.split(text)
    # The files ship inside the package: their text is as trusted as a literal in the code.
    return {
        name: cast(LiteralString, body.strip())
        for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }
