"""What a PostgreSQL error means to the worker: an outage to wait out, a misconfiguration that
stops it with the fix on one line, or an error of the data that stays what it is."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors
from psycopg_pool import PoolTimeout

from projections.database import database_errors, is_outage, misconfiguration
from streams.errors import DependencyUnavailable, Misconfiguration

URL = "postgresql://stripe:hunter2@db.internal:6432/stripe_streams"


def server_error(sqlstate: str, message: str = "the server says no") -> psycopg.Error:
    """The error psycopg raises for a server error of this SQLSTATE."""
    error: psycopg.Error = errors.lookup(sqlstate)(message)
    return error


def refused_connection(reason: str) -> psycopg.OperationalError:
    """What psycopg raises when libpq fails to connect: no SQLSTATE, libpq's message."""
    return psycopg.OperationalError(
        f'connection failed: connection to server at "10.0.0.5", port 6432 failed: {reason}'
    )


@pytest.mark.parametrize(
    "sqlstate",
    ["08006", "08001", "57P01", "57P02", "57P03", "40001", "40P01", "53300", "53200", "55P03"],
)
def test_outages_are_waited_out(sqlstate: str) -> None:
    error = server_error(sqlstate)
    assert is_outage(error)
    assert misconfiguration(error, URL) is None
    with pytest.raises(DependencyUnavailable) as raised, database_errors(URL):
        raise error
    assert raised.value.retriable


@pytest.mark.parametrize(
    "error",
    [
        refused_connection("Connection refused\n\tIs the server running on that host?"),
        refused_connection("server closed the connection unexpectedly"),
        refused_connection("timeout expired"),
        refused_connection("FATAL:  the database system is starting up"),
        refused_connection("FATAL:  sorry, too many clients already"),
        PoolTimeout("couldn't get a connection after 10.00 sec"),
        psycopg.OperationalError("the connection is closed"),
        psycopg.InterfaceError("the connection is closed"),
    ],
    ids=repr,
)
def test_connections_lost_refused_or_timed_out_are_outages(error: psycopg.Error) -> None:
    assert is_outage(error)
    assert misconfiguration(error, URL) is None


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (refused_connection('FATAL:  password authentication failed for user "stripe"'),
         'password authentication failed for user "stripe"'),
        (refused_connection('FATAL:  role "stripe" does not exist'),
         'role "stripe" does not exist'),
        (refused_connection(
            'FATAL:  no pg_hba.conf entry for host "10.0.0.9", user "stripe", database "x"'),
         'no pg_hba.conf entry for host "10.0.0.9", user "stripe", database "x"'),
        (refused_connection("fe_sendauth: no password supplied"),
         "fe_sendauth: no password supplied"),
        (server_error("28P01", 'password authentication failed for user "stripe"'),
         'password authentication failed for user "stripe"'),
    ],
    ids=lambda value: str(value)[:40],
)
def test_a_refused_login_stops_the_command_naming_the_server_and_the_fix(
    error: psycopg.Error, reason: str
) -> None:
    assert not is_outage(error)
    with pytest.raises(Misconfiguration) as raised, database_errors(URL):
        raise error
    assert str(raised.value) == (
        f"PostgreSQL at db.internal:6432 refused the login: {reason}; check DATABASE_URL"
    )
    assert not raised.value.retriable


@pytest.mark.parametrize(
    "error",
    [refused_connection('FATAL:  database "stripe_streams" does not exist'),
     server_error("3D000", 'database "stripe_streams" does not exist')],
    ids=["at connection", "with sqlstate"],
)
def test_a_missing_database_is_named_with_the_fix(error: psycopg.Error) -> None:
    assert not is_outage(error)
    assert str(misconfiguration(error, URL)) == (
        'PostgreSQL at db.internal:6432: database "stripe_streams" does not exist; create it '
        "and run 'stripe-streams migrate', or fix DATABASE_URL"
    )


@pytest.mark.parametrize(
    ("sqlstate", "message"),
    [
        ("42P01", 'relation "ops.event_log" does not exist'),
        ("42P01", 'relation "stripe.customers" does not exist'),
        ("3F000", 'schema "stripe" does not exist'),
        ("42703", 'column "last_event_offset" of relation "customers" does not exist'),
    ],
)
def test_a_schema_behind_the_code_asks_for_migrate(sqlstate: str, message: str) -> None:
    assert str(misconfiguration(server_error(sqlstate, message), URL)) == (
        f"database stripe_streams is not migrated ({message}): run 'stripe-streams migrate'"
    )


@pytest.mark.parametrize(
    ("sqlstate", "message"),
    [
        ("22012", "division by zero"),
        ("22P02", 'invalid input syntax for type bigint: "x"'),
        ("23505", 'duplicate key value violates unique constraint "customers_pkey"'),
        ("54000", "index row size 9000 exceeds btree version 4 maximum 2704"),
        ("54001", "stack depth limit exceeded"),
        ("42P01", 'relation "someone_elses_table" does not exist'),
        ("57014", "canceling statement due to statement timeout"),
    ],
)
def test_errors_of_the_data_keep_their_psycopg_class(sqlstate: str, message: str) -> None:
    error = server_error(sqlstate, message)
    assert not is_outage(error)
    assert misconfiguration(error, URL) is None
    with pytest.raises(type(error)), database_errors(URL):
        raise error


def test_an_interface_error_that_is_no_closed_connection_is_no_outage() -> None:
    assert not is_outage(psycopg.InterfaceError("None dumper not found"))


def test_the_password_of_the_url_never_shows() -> None:
    for error in (
        refused_connection('FATAL:  password authentication failed for user "stripe"'),
        server_error("3D000", 'database "stripe_streams" does not exist'),
        server_error("42P01", 'relation "ops.event_log" does not exist'),
    ):
        assert "hunter2" not in str(misconfiguration(error, URL))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://stripe:hunter2@127.0.0.1:64x32/stripe_streams",
         'invalid integer value "64x32" for connection option "port"'),
        ("postgresql://stripe:hunter2@127.0.0.1/stripe_streams?sslmode=bogus",
         'invalid sslmode value: "bogus"'),
    ],
)
def test_a_url_libpq_cannot_use_is_named_not_waited_for(url: str, reason: str) -> None:
    with pytest.raises(psycopg.Error) as connecting:
        psycopg.connect(url)
    assert not is_outage(connecting.value)
    assert str(misconfiguration(connecting.value, url)) == f"DATABASE_URL is invalid: {reason}"


def test_a_url_that_does_not_parse_is_refused_without_quoting_it() -> None:
    url = "postgresql://stripe:hunter 2@db.internal:6432/stripe_streams"
    with pytest.raises(psycopg.Error) as connecting:
        psycopg.connect(url)
    refusal = str(misconfiguration(connecting.value, url))
    assert refusal.startswith("DATABASE_URL is not a valid PostgreSQL URL; check its syntax")
    assert "hunter" not in refusal
