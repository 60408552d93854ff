"""Jobs give way to live processing: a replay or a rebuild waits while the workers fall behind.

On one machine a rebuild and the live pipeline share the cores; left alone, the rebuild took
them and live latency grew to minutes. Between batches a job reads how many events wait for the
workers: in ``<prefix>.events`` beyond their group's committed offsets (the routers' backlog)
and in the family topics beyond their stored positions. While that backlog exceeds
``STRIPE_STREAMS_JOB_YIELD_BACKLOG`` it waits, so live webhooks keep their latency and the job
uses what the workers leave.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from psycopg_pool import AsyncConnectionPool

from projections.database import connection
from projections.monitor.reads import family_positions
from streams.jobs.running import Job
from streams.log.routing import FAMILIES
from streams.settings import Settings

_CHECK_EVERY = 0.5
_STALLED = 10.0
"""Seconds without the workers moving a position or a commit (they commit every second)
after which a job stops waiting for them, until they move again."""
_LONGEST_WAIT = 60.0
"""A job waits at most this long per batch: it must end even beside workers that stopped."""


class LiveTraffic:
    """The live pipeline's backlog in the family topics; use as ``async with``."""

    def __init__(self, settings: Settings, pool: AsyncConnectionPool) -> None:
        self._limit = settings.job_yield_backlog
        self._prefix = settings.topic_prefix
        self._group = settings.group_id
        self._pool = pool
        self._servers = settings.kafka_bootstrap_servers
        self._log = settings.topic()
        self._topics = [self._log, *(settings.topic(family) for family in FAMILIES)]
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._partitions: list[TopicPartition] = []
        self._progress: int | None = None
        self._moved_at = time.monotonic()

    async def __aenter__(self) -> LiveTraffic:
        if self._limit:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._servers, group_id=None, enable_auto_commit=False
            )
            admin = AIOKafkaAdminClient(bootstrap_servers=self._servers)
            await consumer.start()
            self._consumer = consumer
            await admin.start()
            self._admin = admin
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
        if self._admin is not None:
            await self._admin.close()

    async def backlog(self) -> tuple[int, int]:
        """Events waiting for the workers, and the sum of the offsets they committed and the
        positions they stored (which moves while they work)."""
        if self._consumer is None or self._admin is None or not self._partitions:
            return 0, 0
        ends = await self._consumer.end_offsets(self._partitions)
        committed = await self._admin.list_consumer_group_offsets(self._group)
        async with connection(self._pool) as conn:
            positions = await family_positions(conn, self._prefix)
        done: dict[TopicPartition, int] = {}
        for tp in self._partitions:
            if tp.topic == self._log:
                meta = committed.get(tp)
                done[tp] = meta.offset if meta is not None and meta.offset >= 0 else ends[tp]
            else:
                done[tp] = positions.get((tp.topic, tp.partition), ends[tp])
        behind = sum(max(0, ends[tp] - done[tp]) for tp in self._partitions)
        return behind, sum(done.values())

    async def give_way(self, job: Job) -> None:
        """Wait while the workers are more than the limit behind and catching up.

        Workers that do not move (stopped, paused by the breaker) are not waited for once
        they stood still for ``_STALLED`` seconds, and no wait lasts more than a minute: the
        job must end beside a pipeline that never catches up.
        """
        if not self._limit:
            return
        started = time.monotonic()
        told = False
        while not job.interrupted and time.monotonic() - started < _LONGEST_WAIT:
            try:
                behind, progress = await self.backlog()
            except KafkaError:
                return
            now = time.monotonic()
            if progress != self._progress:
                self._progress, self._moved_at = progress, now
            if behind <= self._limit or now - self._moved_at > _STALLED:
                break
            if not told:
                told = True
                job.console.print(
                    f"{job.what} job {job.state.id}: waiting while live processing is "
                    f"{behind:,} events behind", highlight=False,
                )
            await asyncio.sleep(_CHECK_EVERY)
