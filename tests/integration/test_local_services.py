"""`services up|down|status` on private ports: idempotent start, stop by pid, nothing left."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from urllib.parse import urlsplit

import psycopg
import pytest

from streams.devtools.services import kafka
from streams.devtools.services.kafka import LocalKafka
from streams.devtools.services.postgres import LocalPostgres
from streams.devtools.services.process import is_alive
from streams.errors import ServiceError
from streams.log.topics import ensure_topics


def test_kafka_up_is_idempotent_and_down_stops_it(private_kafka: LocalKafka) -> None:
    pid = private_kafka.up()
    try:
        assert private_kafka.up() == pid
        assert private_kafka.pid() == pid
        asyncio.run(ensure_topics(private_kafka.address, ["probe.events"], partitions=2))
    finally:
        assert private_kafka.down() is True
    assert not is_alive(pid)
    assert private_kafka.pid() is None
    assert private_kafka.down() is False


def test_kafka_starts_when_its_cluster_id_starts_with_a_dash(
    private_kafka: LocalKafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One random id in 64 starts with '-', which the storage tool once took for an option."""
    cluster_id = "-7QuT1dRRkS0kq7-1f5ZxA"
    monkeypatch.setattr(kafka, "new_cluster_id", lambda: cluster_id)

    private_kafka.up()

    meta = (private_kafka.data_dir / "meta.properties").read_text()
    assert f"cluster.id={cluster_id}" in meta.splitlines()
    asyncio.run(ensure_topics(private_kafka.address, ["probe.events"], partitions=1))


def test_postgres_up_is_idempotent_and_down_stops_it(private_postgres: LocalPostgres) -> None:
    pid = private_postgres.up()
    try:
        assert private_postgres.up() == pid
        with psycopg.connect(private_postgres.url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("stripe_streams",)
    finally:
        assert private_postgres.down() is True
    assert not is_alive(pid)
    assert private_postgres.pid() is None


def test_up_refuses_an_address_another_process_serves(
    private_postgres: LocalPostgres, postgres_admin_url: str
) -> None:
    taken = urlsplit(postgres_admin_url)
    squatter = replace(private_postgres, host=taken.hostname or "", port=taken.port or 5432)
    with pytest.raises(ServiceError, match="already served by a process"):
        squatter.up()
    assert squatter.pid() is None
