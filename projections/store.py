"""The projections' PostgreSQL store: one object owns the connections and the SQL of a worker.

Callers hand it consumed events, dead letters and family pauses; it lends a pooled connection
per call, runs the writer, the dead-letter store or the pauses in one transaction, and raises
outages as :class:`~streams.errors.DependencyUnavailable` and refusals as
:class:`~streams.errors.Misconfiguration`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from functools import partial

from projections.database import connection, create_pool
from projections.dead_letters import (
    count_open_dead_letters,
    publish_dead_letter,
    record_dead_letter,
    unpublished_dead_letters,
)
from projections.pauses import pause_family, paused_families, resume_family
from projections.writer import apply_batch
from streams.handlers.registry import HandlerRegistry
from streams.log.consumed import AppliedEvent, ConsumedEvent
from streams.log.dead_letter_topic import holds_dead_letter
from streams.log.envelope import DeadLetter
from streams.log.topics import DEAD_LETTER_SUFFIX
from streams.settings import Settings


class ProjectionStore:
    """The mirror and ops tables of one database, through a pool of ``connections``."""

    def __init__(self, settings: Settings, registry: HandlerRegistry, connections: int) -> None:
        self.registry = registry
        self.pool = create_pool(settings, min_size=connections, max_size=connections)
        self._produced = partial(
            holds_dead_letter, settings.kafka_bootstrap_servers,
            settings.topic(DEAD_LETTER_SUFFIX),
        )

    async def open(self) -> None:
        """Start opening the pool's connections; calls wait for one as they need it."""
        await self.pool.open(wait=False)

    async def close(self) -> None:
        """Close every connection."""
        await self.pool.close()

    async def apply(
        self, family: str, events: Sequence[ConsumedEvent], attempts: int
    ) -> list[AppliedEvent]:
        """Apply events of ``family`` in one transaction (see :func:`apply_batch`)."""
        async with connection(self.pool) as conn:
            return await apply_batch(conn, family, events, self.registry, attempts=attempts)

    async def record_dead_letter(
        self, family: str, event: ConsumedEvent, letter: DeadLetter, projection: str | None
    ) -> int | None:
        """Record a dead letter still to produce (see :func:`record_dead_letter`)."""
        async with connection(self.pool) as conn:
            return await record_dead_letter(conn, family, event, letter, projection=projection)

    async def produce_dead_letter(
        self, dead_letter: int, publish: Callable[[DeadLetter], Awaitable[None]]
    ) -> None:
        """Produce a recorded dead letter exactly once (see :func:`publish_dead_letter`)."""
        async with connection(self.pool) as conn:
            await publish_dead_letter(conn, dead_letter, publish, self._produced)

    async def publish_abandoned(
        self, publish: Callable[[DeadLetter], Awaitable[None]], age: float
    ) -> int:
        """Produce the dead letters recorded ``age`` seconds ago and never produced (their
        worker died in between), unless another worker is at it; return how many."""
        async with connection(self.pool) as conn:
            abandoned = await unpublished_dead_letters(conn, age)
            published = 0
            for dead_letter in abandoned:
                published += await publish_dead_letter(
                    conn, dead_letter, publish, self._produced, wait=False
                )
        return published

    async def open_dead_letters(self) -> int:
        """How many dead letters wait for review."""
        async with connection(self.pool) as conn:
            return await count_open_dead_letters(conn)

    async def pause_family(self, family: str, seconds: float, reason: str) -> datetime:
        """Pause ``family`` for ``seconds`` (see :func:`pause_family`); return when it resumes."""
        async with connection(self.pool) as conn:
            return await pause_family(conn, family, seconds, reason)

    async def paused_families(self) -> dict[str, datetime]:
        """The families paused right now, each with when its pause ends."""
        async with connection(self.pool) as conn:
            return await paused_families(conn)

    async def resume_family(self, family: str) -> bool:
        """End ``family``'s pause at once; False when it was not paused."""
        async with connection(self.pool) as conn:
            return await resume_family(conn, family)
