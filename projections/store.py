"""The projections' PostgreSQL store: one object owns the connections and the SQL of a worker.

Callers hand it consumed events and dead letters; it lends a pooled connection per call, runs
the writer or the dead-letter store in one transaction, and raises outages as
:class:`~streams.errors.DependencyUnavailable` and refusals as
:class:`~streams.errors.Misconfiguration`.
"""

from __future__ import annotations

from collections.abc import Sequence

from projections.database import connection, create_pool
from projections.dead_letters import count_open_dead_letters, record_dead_letter
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
