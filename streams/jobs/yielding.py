"""Jobs give way to live processing: a replay or a rebuild waits while the workers fall behind.

On one machine a rebuild and the live pipeline share the cores; left alone, the rebuild took
them and live latency grew to minutes. Between batches a job reads how many events wait in the
family topics beyond the workers' stored positions, and while that backlog exceeds
``STRIPE_STREAMS_JOB_YIELD_BACKLOG`` it waits, so live webhooks keep their latency and the job
uses what the workers leave.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from psycopg_pool import AsyncConnectionPool

from projections.database import connection
from projections.monitor.reads import family_positions
from streams.jobs.running import Job
from streams.log.routing import FAMILIES
from streams.settings import Settings

_CHECK_EVERY = 0.5
_STALLED = 2.0
"""Seconds without a worker moving a position after which a job stops waiting for them."""
_LONGEST_WAIT = 60.0
"""A job waits at most this long per batch: it must end even beside workers that stopped."""


class LiveTraffic:
    """The live pipeline's backlog in the family topics; use as ``async with``."""

    def __init__(self, settings: Settings, pool: AsyncConnectionPool) -> None:
        self._limit = settings.job_yield_backlog
        self._prefix = settings.topic_prefix
        self._pool = pool
        self._servers = settings.kafka_bootstrap_servers
        self._topics = [settings.topic(family) for family in FAMILIES]
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []

    async def __aenter__(self) -> LiveTraffic:
        if self._limit:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._servers, group_id=None, enable_auto_commit=False
            )
            await consumer.start()
            self._consumer = consumer
            await consumer._client.force_metadata_update()
            self._partitions = [
                TopicPartition(topic, p)
                for topic in self._topics
                for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def backlog(self) -> tuple[int, int]:
        """Events in the family topics beyond what the workers committed to PostgreSQL, and
        the sum of the workers' positions (which moves while they work)."""
        if self._consumer is None or not self._partitions:
            return 0, 0
        ends = await self._consumer.end_offsets(self._partitions)
        async with connection(self._pool) as conn:
            positions = await family_positions(conn, self._prefix)
        behind = sum(
            max(0, ends[tp] - positions.get((tp.topic, tp.partition), ends[tp]))
            for tp in self._partitions
        )
        return behind, sum(positions.values())

    async def give_way(self, job: Job) -> None:
        """Wait while the workers are more than the limit behind and catching up.

        Workers that do not move (stopped, paused by the breaker) are not waited for, and no
        wait lasts more than a minute: the job must end beside a pipeline that never catches up.
        """
        if not self._limit:
            return
        started = time.monotonic()
        told = False
        moved_at = started
        last: int | None = None
        while not job.interrupted and time.monotonic() - started < _LONGEST_WAIT:
            try:
                behind, progress = await self.backlog()
            except KafkaError:
                return
            now = time.monotonic()
            if progress != last:
                last, moved_at = progress, now
            if behind <= self._limit or now - moved_at > _STALLED:
                break
            if not told:
                told = True
                job.console.print(
                    f"{job.what} job {job.state.id}: waiting while live processing is "
                    f"{behind:,} events behind", highlight=False,
                )
            await asyncio.sleep(_CHECK_EVERY)
