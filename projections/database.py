"""The worker's PostgreSQL connections, named SQL queries, and what each database error means.

Callers branch on ``retriable``. An outage (a lost or refused connection, a server shutting down
or in recovery, too many connections, a deadlock, a serialization failure, a lock not available,
a pool that cannot hand out a connection in time) becomes :class:`DependencyUnavailable`: wait
and retry. A refusal waiting cannot change (a database URL libpq cannot use, a wrong password or
role, no pg_hba entry, a missing database, this project's schema not migrated) becomes
:class:`Misconfiguration`, whose one-line message names the fix. Every other database error
keeps its psycopg class.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import cache
from pathlib import Path
from typing import Any, LiteralString, cast

import psycopg
from psycopg import AsyncConnection, pq
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from streams.errors import DependencyUnavailable, Misconfiguration, StreamsError
from streams.outages import outages
from streams.settings import Settings

SQL_DIR = Path(__file__).resolve().parent / "sql"
# Long enough to ride out a busy pool, short enough that an outage is logged while it lasts.
CONNECTION_WAIT = 10.0
_QUERY_NAME = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)
_OUTAGE_CLASSES = frozenset({"08", "53"})
_OUTAGE_STATES = frozenset({"57P01", "57P02", "57P03", "40001", "40P01", "55P03"})
# libpq reports a failed connection without a SQLSTATE; these texts are the server's final
# refusals (its FATAL message) or libpq's own lack of a password.
_NO_DATABASE = re.compile(r'database "[^"]*" does not exist')
_LOGIN_REFUSED = re.compile(
    r'authentication failed|no pg_hba\.conf entry|role "[^"]*" does not exist|no password supplied'
    r"|is not permitted to log in|permission denied for database"
)
# libpq refuses a connection option's value (port, sslmode, ...) before it contacts the server.
_BAD_OPTION = re.compile(r"^connection is bad: invalid ")
_OUR_RELATION = re.compile(r'relation "(ops|stripe)\.')
# JIT compiled the monitor's sums for longer than they ran, and a generic plan chosen for one
# window scanned every minute for the others.
_READ_ONLY = (
    "-c default_transaction_read_only=on -c statement_timeout=5000 -c jit=off "
    "-c plan_cache_mode=force_custom_plan"
)
_DATABASE = "database"
"""What the worker's pooled connections report to the outage log as."""


def create_pool(
    settings: Settings, *, max_size: int = 4, min_size: int = 1, read_only: bool = False
) -> AsyncConnectionPool:
    """Return a closed pool on ``settings.database_url``; open it with ``await pool.open()``.

    The pool keeps ``min_size`` connections open from the moment it opens. A ``read_only``
    pool's transactions cannot write, and each statement gets at most a few seconds.

    The pool waits at most :data:`CONNECTION_WAIT` seconds for a connection, so an outage
    surfaces as :class:`DependencyUnavailable` instead of a hung agent.
    """
    return AsyncConnectionPool(
        settings.database_url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        timeout=CONNECTION_WAIT,
        kwargs={
            "application_name": "stripe-streams", "connect_timeout": 5, "autocommit": True,
            **({"options": _READ_ONLY} if read_only else {}),
        },
        name="stripe-streams",
    )


def is_outage(exc: BaseException) -> bool:
    """Tell whether a database error means PostgreSQL is unreachable or must be asked again."""
    if isinstance(exc, psycopg.InterfaceError):
        # The client refuses to use a connection, or its cursors, once it knows it is closed.
        return "closed" in str(exc)
    if not isinstance(exc, psycopg.Error):
        return False
    state = _sqlstate(exc)
    if state is None:
        # No SQLSTATE and no refusal: libpq could not connect, lost the connection, or timed out.
        return isinstance(exc, psycopg.OperationalError)
    return state[:2] in _OUTAGE_CLASSES or state in _OUTAGE_STATES


def misconfiguration(exc: BaseException, conninfo: str) -> Misconfiguration | None:
    """The :class:`Misconfiguration` a database error stands for, if waiting cannot fix it.

    That is a ``conninfo`` (the database URL) libpq cannot use, a refused login (class 28), a
    missing database (3D000), or this project's schema behind its code (3F000, 42P01 in the
    ``ops`` or ``stripe`` schema, 42703: a missing column counts whatever its table, as every
    statement of this project reads or writes its own schemas). The message names the server
    and the database, never the password.
    """
    if not isinstance(exc, psycopg.Error):
        return None
    try:
        given = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        # libpq's own message would quote the part it cannot parse, maybe the password.
        return Misconfiguration(
            "DATABASE_URL is not a valid PostgreSQL URL; check its syntax (percent-encode "
            "special characters)"
        )
    state = _sqlstate(exc)
    if state is None:
        return None
    server, database = _where(given)
    reason = _reason(exc)
    if state == "22023" and exc.sqlstate is None:
        return Misconfiguration(f"DATABASE_URL is invalid: {reason}")
    if state == "3D000":
        return Misconfiguration(
            f"PostgreSQL at {server}: {reason}; create it and run 'stripe-streams migrate', "
            "or fix DATABASE_URL"
        )
    if state.startswith("28"):
        return Misconfiguration(
            f"PostgreSQL at {server} refused the login: {reason}; check DATABASE_URL"
        )
    if state in ("3F000", "42703") or (state == "42P01" and _OUR_RELATION.search(reason)):
        return Misconfiguration(
            f"database {database} is not migrated ({reason}): run 'stripe-streams migrate'"
        )
    return None


@contextmanager
def database_errors(conninfo: str) -> Iterator[None]:
    """Re-raise outages inside the block as DependencyUnavailable, refusals as Misconfiguration."""
    try:
        yield
    except psycopg.Error as exc:
        meaning: StreamsError | None = misconfiguration(exc, conninfo)
        if meaning is None and is_outage(exc):
            meaning = DependencyUnavailable(f"PostgreSQL unavailable: {_describe(exc)}")
        if meaning is None:
            raise
        raise meaning from exc


@asynccontextmanager
async def outages_as_unavailable(conninfo: str) -> AsyncIterator[None]:
    """:func:`database_errors` for the worker: outages also go to the process's outage log."""
    try:
        with database_errors(conninfo):
            yield
    except DependencyUnavailable as exc:
        outages.failed(_DATABASE, exc)
        raise
    outages.recovered(_DATABASE)


@asynccontextmanager
async def connection(pool: AsyncConnectionPool) -> AsyncIterator[AsyncConnection]:
    """Lend a pooled connection; an outage getting or using it raises DependencyUnavailable.

    A wrong password or a missing database raises Misconfiguration, even after start-up.
    """
    # create_pool gives every pool a fixed URL and connection arguments, not callables.
    conninfo, kwargs = cast(str, pool.conninfo), cast(dict[str, Any], pool.kwargs)
    try:
        async with outages_as_unavailable(conninfo):
            try:
                async with pool.connection() as conn:
                    yield conn
            except PoolTimeout:
                # The pool only logs why it cannot connect: one connection of our own tells a
                # refusal, which stops the worker, from an outage, which it waits out.
                probe = await AsyncConnection.connect(conninfo, **kwargs)
                await probe.close()
                raise
    except DependencyUnavailable:
        # Idle connections may have died with the server: checking them all now replaces the
        # dead ones at once, instead of each failing one more try once the server is back.
        if not pool.closed:
            await pool.check()
        raise


def _sqlstate(exc: psycopg.Error) -> str | None:
    """The SQLSTATE the server sent, or the one libpq's refusal to connect stands for."""
    if exc.sqlstate is not None:
        return exc.sqlstate
    message = str(exc)
    if _NO_DATABASE.search(message):
        return "3D000"
    if _LOGIN_REFUSED.search(message):
        return "28000"
    if _BAD_OPTION.search(message):
        return "22023"
    return None


def _reason(exc: psycopg.Error) -> str:
    """The server's own words: its primary message, else what follows libpq's ``failed:``."""
    if exc.sqlstate is not None and exc.diag.message_primary:
        return exc.diag.message_primary
    fatal = _first_line(exc).rpartition(" failed: ")[2].removeprefix("connection is bad: ")
    return fatal.removeprefix("FATAL:").strip()


def _where(given: dict[str, Any]) -> tuple[str, str]:
    """``host:port`` and the database name of connection parameters, with libpq's defaults."""
    defaults = {
        option.keyword.decode(): (option.val or option.compiled or b"").decode()
        for option in pq.Conninfo.get_defaults()
    }
    settings = {**defaults, **{key: str(value) for key, value in given.items() if value}}
    server = f"{settings.get('host') or 'localhost'}:{settings.get('port')}"
    return server, settings.get("dbname") or settings.get("user", "")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else "no message"


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
