"""A regular (non-editable) install carries everything `migrate` and the worker read at run time."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from projections.migrations import discover
from streams.settings import REPO_ROOT, Settings
from tests.integration.test_projection_ordering import envelope_of
from tests.integration.test_projection_writer import customer_events
from tests.integration.worker_support import (
    environment,
    free_port,
    logged_events,
    prepare_topics,
    produce,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The project built as a wheel and installed into a directory of its own."""
    home = tmp_path_factory.mktemp("installed")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(home / "wheel"),
         str(REPO_ROOT)],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = (home / "wheel").glob("stripe_streams-*.whl")
    site = home / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
         str(wheel)],
        check=True, timeout=300,
    )
    return wheel, site


@pytest.fixture
def empty_database(postgres_admin_url: str) -> Iterator[str]:
    name = f"ss_installed_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield urlunsplit(urlsplit(postgres_admin_url)._replace(path=f"/{name}"))
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def test_the_wheel_ships_the_migrations_and_the_avro_schemas(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())

    shipped = {
        path.relative_to(REPO_ROOT).as_posix()
        for pattern in ("projections/sql/migrations/*.sql", "streams/log/schemas/*.avsc")
        for path in REPO_ROOT.glob(pattern)
    }
    assert len(shipped) >= 5
    assert shipped <= names


def test_an_installed_copy_migrates_a_fresh_database(
    installed: tuple[Path, Path], empty_database: str, tmp_path: Path
) -> None:
    _, site = installed
    # Run from elsewhere, with the installed copy first on the path: nothing of the checkout.
    run = subprocess.run(
        [sys.executable, "-c",
         "import sys, streams; print(streams.__file__); "
         "from streams.cli import main; sys.exit(main(['migrate']))"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(site), "DATABASE_URL": empty_database},
    )

    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].startswith(str(site))
    assert f"{len(discover())} migration(s) applied" in run.stdout
    with psycopg.connect(empty_database) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_schema IN ('ops', 'stripe')"
        ).fetchone()
    assert tables is not None and tables[0] >= 20


def test_an_installed_copy_runs_the_worker(
    installed: tuple[Path, Path], settings: Settings, tmp_path: Path
) -> None:
    _, site = installed
    env = {**environment(settings), "PYTHONPATH": str(site)}
    located = subprocess.run(
        [sys.executable, "-c", "import streams.worker.process as p; print(p.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )
    assert located.stdout.startswith(str(site))
    events, customer = customer_events(2)
    prepare_topics(settings)
    asyncio.run(produce(settings, [envelope_of(event) for event in events]))
    log = tmp_path / "worker.log"
    with log.open("wb") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--web-port", str(free_port())],
            cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT, env=env,
        )
    try:
        wait_until(lambda: logged_events(settings.database_url) >= {e["id"] for e in events},
                   90, "the installed worker to apply the events")
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert worker.returncode == 0, log.read_text()[-2000:]
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT last_event_id FROM stripe.customers WHERE id = %s", (customer["id"],)
        ).fetchone()
    assert row == (events[-1]["id"],)
