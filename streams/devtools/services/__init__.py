"""Real local Kafka and PostgreSQL for development and CI, started without Docker."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from streams.devtools.services.kafka import LocalKafka
from streams.devtools.services.postgres import LocalPostgres
from streams.settings import Settings


@dataclass(frozen=True)
class LocalServices:
    """The local Kafka cluster and PostgreSQL cluster at the addresses the settings name."""

    kafka: LocalKafka
    postgres: LocalPostgres

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalServices:
        """Place the services where the settings expect them, under the state directory."""
        first = settings.kafka_bootstrap_servers.split(",")[0].strip()
        kafka_host, _, kafka_port = first.rpartition(":")
        url = urlsplit(settings.database_url)
        return cls(
            kafka=LocalKafka(
                version=settings.kafka_version,
                home=settings.state_dir / "kafka",
                host=kafka_host,
                port=int(kafka_port),
                brokers=settings.kafka_brokers,
            ),
            postgres=LocalPostgres(
                home=settings.state_dir / "postgres",
                host=url.hostname or "127.0.0.1",
                port=url.port or 5432,
                database=url.path.lstrip("/") or "stripe_streams",
                user=url.username or "postgres",
            ),
        )
