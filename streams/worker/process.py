"""The ``stripe-streams worker`` command: the Faust worker with every agent and ``/metrics``.

Before Faust starts, the worker checks its dependencies once: PostgreSQL must accept the login,
hold the database and have every migration applied, and Kafka must serve the worker's topics
with their retention. A refusal waiting cannot change ends the command with one line naming the
fix; an outage is waited out with backoff, logged when it starts and ends.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from functools import partial

import faust
import uvloop

from projections.migrations import require_migrated
from streams.log.topics import (
    FOREVER,
    Replication,
    Retention,
    ensure_topics,
    retention_ms,
    worker_topics,
)
from streams.outages import KAFKA, POSTGRES, RepeatFilter
from streams.settings import Settings
from streams.worker.agents import maintain_partitions
from streams.worker.app import create_app
from streams.worker.memory import collect_garbage_less_often
from streams.worker.settling import RetryPolicy, patiently

log = logging.getLogger(__name__)

# Faust's own log format, so the lines before and after Faust takes over logging look alike.
_LOG_FORMAT = "[%(asctime)s] [%(process)s] [%(levelname)s] %(message)s"

_UNITS = (("day", 86_400_000), ("hour", 3_600_000), ("minute", 60_000), ("second", 1000))


class _Worker(faust.Worker):
    """Faust's worker, with the clients' repeated connection errors summarised in its log."""

    def __init__(self, app: faust.App, repeats: RepeatFilter) -> None:
        super().__init__(app, loglevel=logging.INFO, quiet=not sys.stdout.isatty())
        self._repeats = repeats

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        """Filter the handlers Faust has just given the root logger."""
        super().on_setup_root_logger(logger, level)
        self._repeats.install(logger.handlers)


def run_worker(settings: Settings, web_port: int | None = None) -> int:
    """Check PostgreSQL and Kafka, create or adjust the topics, then run the worker until stopped.

    Returns the worker's exit code: 0 after SIGTERM or SIGINT, non-zero when an agent stopped
    it because a batch could not be settled. Raises StreamsError, before anything runs, when
    PostgreSQL refuses the login, lacks the database or a migration, or Kafka refuses a topic.
    """
    # Faust's worker and its consumer thread create their loops from this policy.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    repeats = RepeatFilter()
    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT, stream=sys.stdout)
    repeats.install(logging.root.handlers)
    asyncio.run(preflight(settings))
    app = create_app(settings, web_port=web_port)
    collect_garbage_less_often()
    worker = _Worker(app, repeats)
    try:
        worker.execute_from_commandline()
    except SystemExit as stopped:
        return stopped.code if isinstance(stopped.code, int) else 1
    return 0


async def preflight(settings: Settings) -> None:
    """Wait until PostgreSQL and Kafka answer; raise StreamsError if one never will as set up.

    PostgreSQL goes first: its refusals (login, database, migrations) are reported at once,
    even while Kafka is down. Once the topics have their retention, warns if the log's is finite.
    """
    retry = RetryPolicy.from_settings(settings)
    await patiently(
        partial(asyncio.to_thread, require_migrated, settings.database_url), retry, POSTGRES
    )
    await patiently(partial(maintain_partitions, settings), retry, POSTGRES)
    await patiently(
        partial(
            ensure_topics, settings.kafka_bootstrap_servers, worker_topics(settings.topic_prefix),
            settings.topic_partitions,
            replication=Replication(settings.replication_factor, settings.min_insync_replicas),
            retention=Retention(settings.log_retention_ms, settings.family_retention_ms),
        ),
        retry, KAFKA,
    )
    log_retention = await patiently(
        partial(retention_ms, settings.kafka_bootstrap_servers, settings.topic()), retry, KAFKA
    )
    warn_of_finite_retention(settings.topic(), log_retention)


def warn_of_finite_retention(topic: str, retention: int) -> None:
    """Warn, in one line, when the log ``topic`` deletes events older than ``retention`` ms."""
    if retention != FOREVER:
        log.warning(
            "%s keeps events for %s only (retention.ms=%d): events older than that cannot be "
            "replayed or rebuilt; set STRIPE_STREAMS_LOG_RETENTION_MS=-1 to keep them forever",
            topic, _duration(retention), retention,
        )


def _duration(ms: int) -> str:
    """``ms`` milliseconds in the largest unit it reaches, e.g. ``30 days`` or ``1.5 hours``."""
    for unit, size in _UNITS:
        if ms >= size:
            amount = round(ms / size, 1)
            return f"{amount:g} {unit}{'' if amount == 1 else 's'}"
    return f"{ms} ms"
