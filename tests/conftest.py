"""Fixtures giving tests a real Kafka broker and a real PostgreSQL.

Services come from ``KAFKA_BOOTSTRAP_SERVERS`` / ``DATABASE_URL`` when set, else from
testcontainers when a Docker engine answers, else from the project's own local services
(``stripe-streams services up``). Each test that writes PostgreSQL gets a fresh database cloned
from a migrated template, and each test gets its own topic prefix.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from projections.migrations import migrate
from projections.partitions import maintain
from streams.devtools.services import LocalServices
from streams.devtools.services.kafka import LocalKafka, free_port_pair
from streams.devtools.services.postgres import LocalPostgres
from streams.log.topics import delete_topics
from streams.settings import Settings

TEST_SECRETS = {
    "STRIPE_WEBHOOK_SECRETS": "whsec_test_default",
    "STRIPE_WEBHOOK_SECRETS_CONNECT": "whsec_test_connect",
}


def _docker_engine_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def _containers() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.fixture(scope="session")
def kafka_bootstrap(_containers: ExitStack) -> str:
    """Bootstrap servers of a real Kafka broker."""
    if "KAFKA_BOOTSTRAP_SERVERS" in os.environ:
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        container = _containers.enter_context(KafkaContainer("apache/kafka:3.9.1").with_kraft())
        return str(container.get_bootstrap_server())
    local = LocalServices.from_settings(Settings.from_env())
    local.kafka.up()
    return local.kafka.address


@pytest.fixture(scope="session")
def postgres_admin_url(_containers: ExitStack) -> str:
    """URL of a real PostgreSQL server's maintenance database, for creating test databases."""
    if "DATABASE_URL" in os.environ:
        return _with_database(os.environ["DATABASE_URL"], "postgres")
    if _docker_engine_answers():
        from testcontainers.postgres import PostgresContainer

        container = _containers.enter_context(PostgresContainer("postgres:16", driver=None))
        return _with_database(container.get_connection_url(), "postgres")
    local = LocalServices.from_settings(Settings.from_env())
    local.postgres.up()
    return _with_database(local.postgres.url, "postgres")


@pytest.fixture(scope="session")
def migrated_template(postgres_admin_url: str) -> Iterator[str]:
    """A database with every migration applied, cloned by :func:`database_url`."""
    name = f"ss_template_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    migrate(_with_database(postgres_admin_url, name))
    # As 'stripe-streams migrate' does: tests write to this month's partitions, not the default.
    maintain(_with_database(postgres_admin_url, name))
    yield name
    _drop_database(postgres_admin_url, name)


@pytest.fixture
def database_url(postgres_admin_url: str, migrated_template: str) -> Iterator[str]:
    """URL of a fresh, fully migrated database for this test alone."""
    name = f"ss_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(migrated_template)
            )
        )
    yield _with_database(postgres_admin_url, name)
    _drop_database(postgres_admin_url, name)


def _drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def topic_prefix(kafka_bootstrap: str) -> Iterator[str]:
    """A topic prefix no other test uses; its topics are deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    yield prefix
    with suppress(Exception):
        asyncio.run(delete_topics(kafka_bootstrap, f"{prefix}."))


@pytest.fixture
def settings(kafka_bootstrap: str, database_url: str, topic_prefix: str) -> Settings:
    """Settings pointing at the real services, a fresh database and this test's topics."""
    return Settings.from_env(
        {
            **TEST_SECRETS,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "DATABASE_URL": database_url,
            "STRIPE_STREAMS_TOPIC_PREFIX": topic_prefix,
            "STRIPE_STREAMS_PARTITIONS": "3",
        }
    )


@pytest.fixture
def private_kafka() -> Iterator[LocalKafka]:
    """A throwaway broker of this test's own (not started), for tests that stop or restart it.

    It reuses the jars resolved for the shared local broker; ``down`` runs after the test.
    """
    shared = Settings.from_env()
    home = Path(tempfile.mkdtemp(prefix="ss-kafka-"))
    kafka = LocalKafka(version=shared.kafka_version, home=home / "kafka", port=free_port_pair())
    LocalServices.from_settings(shared).kafka.resolve_jars()
    (home / "kafka-jars").symlink_to(shared.state_dir / "kafka-jars")
    yield kafka
    kafka.down()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[LocalPostgres]:
    """A throwaway PostgreSQL cluster of this test's own (not started), for outage tests.

    Its database is migrated by the test when needed; ``down`` runs after the test.
    """
    home = Path(tempfile.mkdtemp(prefix="ss-pg-"))
    home.chmod(0o755)  # The postgres user must reach its data directory inside.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    postgres = LocalPostgres(home=home / "pg", port=port)
    yield postgres
    postgres.down()
    shutil.rmtree(home, ignore_errors=True)
