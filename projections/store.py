"""The projections' PostgreSQL store: one object owns the connections and the SQL of a worker.

Callers hand it consumed events, dead letters and family pauses; it lends a pooled connection
per call, runs the writer, the dead-letter store or the pauses in one transaction, and raises
outages as :class:`~streams.errors.DependencyUnavailable` and refusals as
:class:`~streams.errors.Misconfiguration`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from projections.database import connection, create_pool
from projections.dead_letters import count_open_dead_letters, record_dead_letter
from projections.pauses import pause_family, paused_families, resume_family
from projections.writer import apply_batch
from streams.handlers.registry import HandlerRegistry
from streams.log.consumed import AppliedEvent, ConsumedEvent
from streams.log.envelope import DeadLetter
from streams.settings import Settings


class ProjectionStore:
    """The mirror and ops tables of one database, through a pool of ``connections``."""

    def __init__(self, settings: Settings, registry: HandlerRegistry, connections: int) -> None:
        self.registry = registry
        self.pool = create_pool(settings, min_size=connections, max_size=connections)

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
    ) -> bool:
        """Record a produced dead letter (see :func:`record_dead_letter`)."""
        async with connection(self.pool) as conn:
            return await record_dead_letter(conn, family, event, letter, projection=projection)

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
