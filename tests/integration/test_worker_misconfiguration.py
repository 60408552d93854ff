"""A misconfiguration is not an outage: the real `stripe-streams worker` and `migrate` refuse to
run on a database that cannot work, with one line naming the fix, and wait out one that is down.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from projections.database import connection
from projections.migrations import discover
from streams.devtools.services.postgres import LocalPostgres
from streams.errors import DependencyUnavailable, Misconfiguration
from streams.outages import outages
from streams.settings import Settings
from tests.integration.worker_support import environment, free_port

pytestmark = pytest.mark.integration
# Importing Python, Faust and the clients takes about two seconds; a refusal adds next to nothing.
REFUSAL_SECONDS = 15


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def run(settings: Settings, command: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a stripe-streams command to its end (at most 60 s); return it and how long it took."""
    started = time.monotonic()
    arguments = ["--web-port", str(free_port())] if command == "worker" else []
    finished = subprocess.run(
        [sys.executable, "-m", "streams.cli", command, *arguments],
        env=environment(settings), capture_output=True, text=True, timeout=60, check=False,
    )
    return finished, time.monotonic() - started


def refusal(finished: subprocess.CompletedProcess[str]) -> str:
    """The one line a command ended with, after checking it ended as a refusal should."""
    assert finished.returncode == 1, finished.stdout + finished.stderr
    assert "Traceback" not in finished.stdout + finished.stderr
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1, finished.stderr
    return lines[0]


@pytest.fixture
def empty_database(postgres_admin_url: str) -> Iterator[str]:
    """URL of a database that exists and holds nothing: migrations never ran on it."""
    name = f"ss_empty_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield with_database(postgres_admin_url, name)
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def test_a_worker_on_a_database_that_does_not_exist_stops_at_once_naming_it(
    settings: Settings, postgres_admin_url: str
) -> None:
    missing = f"ss_missing_{uuid.uuid4().hex[:10]}"
    pointed = dataclasses.replace(settings, database_url=with_database(postgres_admin_url, missing))
    finished, seconds = run(pointed, "worker")
    line = refusal(finished)
    assert seconds < REFUSAL_SECONDS
    assert line.startswith("stripe-streams worker: PostgreSQL at ")
    assert f'database "{missing}" does not exist; create it' in line
    assert line.endswith("or fix DATABASE_URL")


def test_a_worker_on_an_unmigrated_database_stops_asking_for_migrate(
    settings: Settings, empty_database: str
) -> None:
    finished, seconds = run(dataclasses.replace(settings, database_url=empty_database), "worker")
    line = refusal(finished)
    assert seconds < REFUSAL_SECONDS
    names = [migration.name for migration in discover()]
    database = urlsplit(empty_database).path.lstrip("/")
    assert line == (
        f"stripe-streams worker: database {database} is not migrated ({len(names)} pending: "
        f"{', '.join(names)}): run 'stripe-streams migrate'"
    )


def test_a_worker_whose_login_is_refused_stops_without_showing_the_password(
    settings: Settings,
) -> None:
    # The local cluster trusts every role it knows (initdb --auth=trust): an unknown role is
    # the refusal it can give, class 28 like a wrong password.
    role = f"nobody_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(settings.database_url)
    url = urlunsplit(parts._replace(netloc=f"{role}:hunter2@{parts.hostname}:{parts.port}"))
    finished, seconds = run(dataclasses.replace(settings, database_url=url), "worker")
    line = refusal(finished)
    assert seconds < REFUSAL_SECONDS
    assert line == (
        f"stripe-streams worker: PostgreSQL at {parts.hostname}:{parts.port} refused the login: "
        f'role "{role}" does not exist; check DATABASE_URL'
    )
    assert "hunter2" not in finished.stdout + finished.stderr


def test_migrate_on_a_database_that_does_not_exist_says_to_create_it(
    settings: Settings, postgres_admin_url: str
) -> None:
    missing = f"ss_missing_{uuid.uuid4().hex[:10]}"
    pointed = dataclasses.replace(settings, database_url=with_database(postgres_admin_url, missing))
    line = refusal(run(pointed, "migrate")[0])
    assert line.startswith("stripe-streams migrate: PostgreSQL at ")
    assert line.endswith(
        f"database \"{missing}\" does not exist; create it and run 'stripe-streams migrate', "
        "or fix DATABASE_URL"
    )


def test_migrate_waits_for_a_postgresql_that_is_starting(
    settings: Settings, private_postgres: LocalPostgres
) -> None:
    private_postgres.up()  # Creates its database: the restart below is what migrate sees.
    private_postgres.down()
    private = dataclasses.replace(settings, database_url=private_postgres.url)
    starter = threading.Timer(3, private_postgres.up)
    starter.start()
    try:
        finished, _ = run(private, "migrate")
    finally:
        starter.join()
    assert finished.returncode == 0, finished.stderr
    assert f"{len(discover())} migration(s) applied" in finished.stdout


async def test_a_missing_database_met_after_start_up_is_a_misconfiguration_not_an_outage(
    postgres_admin_url: str,
) -> None:
    missing = with_database(postgres_admin_url, f"ss_missing_{uuid.uuid4().hex[:10]}")
    async with pool_on(missing) as pool:
        with pytest.raises(Misconfiguration, match=r'database "ss_missing_\w+" does not exist'):
            async with connection(pool):
                pass


async def test_an_unreachable_server_is_an_outage_naming_why() -> None:
    async with pool_on(f"postgresql://postgres@127.0.0.1:{free_port()}/stripe_streams") as pool:
        with pytest.raises(DependencyUnavailable, match="Connection refused") as raised:
            async with connection(pool):
                pass
    assert raised.value.retriable
    assert "postgres" in outages.missing()


@asynccontextmanager
async def pool_on(url: str) -> AsyncIterator[AsyncConnectionPool]:
    """An open pool like the worker's that gives up waiting for a connection after 1 s."""
    pool = AsyncConnectionPool(
        url, min_size=1, max_size=1, open=False, timeout=1, kwargs={"connect_timeout": 5},
    )
    await pool.open(wait=False)
    try:
        yield pool
    finally:
        await pool.close()
