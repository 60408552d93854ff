"""Applying messages a job read from the log: the worker's settler and writer, in another mode.

A job's batch is split by family with the router's table and each family's events are settled
in log order by that family's :class:`~streams.worker.settling.BatchSettler`, exactly as its
agent would settle them; only the writer's :class:`~projections.writer.Projecting` differs.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRecord
from psycopg_pool import AsyncConnectionPool

from projections.database import connection
from projections.dead_letters import publish_dead_letter, record_dead_letter
from projections.writer import Projecting, apply_batch
from streams.errors import CodecError
from streams.handlers.registry import HandlerRegistry
from streams.log.consumed import AppliedEvent, ConsumedEvent, Outcome, decode_consumed
from streams.log.envelope import DeadLetter
from streams.log.routing import FAMILIES, OTHER, route_event
from streams.worker.settling import BatchSettler, PublishDeadLetter, RetryPolicy

Failures = Callable[[str, ConsumedEvent, DeadLetter], Awaitable[None]]
"""Where a rebuild's failed event goes: counted, neither recorded nor produced."""
Produced = Callable[[DeadLetter], Awaitable[bool]]
"""Whether the dead-letter topic holds a dead letter already."""
CONNECTIONS = len(FAMILIES) + 1
"""Pool size of a job that applies: a connection per family settled at once, and one more."""
_COUNTED = 0
"""What a failure handed to ``failures`` stands as in place of a dead letter's id (ids start
at 1)."""


@dataclass
class JobStore:
    """The settler's store for a job: the writer in ``projecting``'s mode, over ``pool``.

    A failed event is dead-lettered as the worker does (``produced`` tells whether a produce
    cut short reached the topic), or, given ``failures``, only handed to it.
    """

    pool: AsyncConnectionPool
    registry: HandlerRegistry
    projecting: Projecting
    produced: Produced
    failures: Failures | None = None

    async def apply(
        self, family: str, events: Sequence[ConsumedEvent], attempts: int
    ) -> list[AppliedEvent]:
        async with connection(self.pool) as conn:
            return await apply_batch(
                conn, family, events, self.registry, projecting=self.projecting,
                attempts=attempts,
            )

    async def record_dead_letter(
        self, family: str, event: ConsumedEvent, letter: DeadLetter, projection: str | None
    ) -> int | None:
        if self.failures is not None:
            await self.failures(family, event, letter)
            return _COUNTED
        async with connection(self.pool) as conn:
            return await record_dead_letter(conn, family, event, letter, projection=None)

    async def produce_dead_letter(self, dead_letter: int, publish: PublishDeadLetter) -> None:
        if dead_letter == _COUNTED:
            return
        async with connection(self.pool) as conn:
            await publish_dead_letter(conn, dead_letter, publish, self.produced)


@dataclass
class JobApplier:
    """Settles a job's batches family by family; counts what it applied and what failed.

    ``seen`` holds the event ids applied earlier in the job, as 128-bit digests (a third of
    the memory of the ids): like live processing, a job projects only the first copy of an
    event the log holds. The families of a batch are settled concurrently, each on a
    connection of its own, so PostgreSQL works on one family while this process decodes and
    plans another.
    """

    store: JobStore
    publish: PublishDeadLetter
    retry: RetryPolicy
    in_log: bool
    gives_up: str = "dead-lettered"
    seen: set[int] = field(default_factory=set)
    _settlers: dict[str, BatchSettler] = field(default_factory=dict)

    def settler(self, family: str) -> BatchSettler:
        if family not in self._settlers:
            registry = self.store.registry

            def handler_of(event_type: str) -> str:
                registered = registry.lookup(event_type)
                return registered.name if registered else f"{family}.unhandled"

            self._settlers[family] = BatchSettler(
                family, store=self.store, projection=None, publish=self.publish,
                handler_of=handler_of, retry=self.retry, gives_up=self.gives_up,
            )
        return self._settlers[family]

    async def apply(
        self, records: Sequence[ConsumerRecord[Any, Any]], only: str | None = None
    ) -> tuple[int, int]:
        """Settle ``records``; return how many were applied (or skipped) and how many failed.

        With ``only``, events of other families are passed over and not counted.
        """
        by_family: dict[str, list[tuple[ConsumerRecord[Any, Any], Any]]] = defaultdict(list)
        for record in records:
            decoded = decode_consumed(
                record.topic, record.partition, record.offset, record.value, record.headers,
                in_log=self.in_log,
            )
            event = decoded if isinstance(decoded, ConsumedEvent) else (
                None if isinstance(decoded, CodecError) else decoded[0]
            )
            family = route_event(event.envelope.type) if event is not None else OTHER
            if only is None or family == only:
                by_family[family].append((record, decoded))
        settling = [
            asyncio.ensure_future(self._settle(self.settler(family), decoded_records))
            for family, decoded_records in by_family.items()
        ]
        try:
            settled = await asyncio.gather(*settling)
        except BaseException:
            # One family's failure ends the batch: the others stop rather than write on.
            for task in settling:
                task.cancel()
            await asyncio.gather(*settling, return_exceptions=True)
            raise
        applied = [a for family_applied in settled for a in family_applied]
        failed = sum(1 for a in applied if a.outcome is Outcome.DEAD_LETTERED)
        return sum(len(v) for v in by_family.values()) - failed, failed

    async def _settle(
        self, settler: BatchSettler, decoded_records: list[tuple[ConsumerRecord[Any, Any], Any]]
    ) -> list[AppliedEvent]:
        applied: list[AppliedEvent] = []
        run: list[ConsumedEvent] = []
        for record, decoded in decoded_records:
            if isinstance(decoded, ConsumedEvent):
                if _digest(decoded.envelope.id) not in self.seen:
                    run.append(decoded)
                continue
            applied.extend(await self._apply(settler, run))
            run = []
            if isinstance(decoded, CodecError):
                applied.append(await settler.dead_letter_undecodable(
                    record.topic, record.partition, record.offset, record.key, record.value,
                    record.timestamp / 1000, decoded,
                ))
            else:
                applied.append(await settler.dead_letter_invalid(*decoded))
        applied.extend(await self._apply(settler, run))
        return applied

    async def _apply(
        self, settler: BatchSettler, run: list[ConsumedEvent]
    ) -> list[AppliedEvent]:
        applied = await settler.apply(run)
        # A dead-lettered event is not seen: a later copy of it is another attempt.
        self.seen.update(
            _digest(a.event.envelope.id) for a in applied
            if a.outcome is not Outcome.DEAD_LETTERED
        )
        return applied


def _digest(event_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=16).digest())
