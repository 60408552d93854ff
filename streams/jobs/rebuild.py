"""``stripe-streams rebuild``: rebuild mirror tables from the log with no downtime.

The rebuild reads ``<prefix>.events`` from its beginning with a consumer of its own and applies
every event of the families rebuilt, with the family settlers and the writer in rebuild mode,
to tables of the same shape in a schema of its own, while the gateway and the workers keep
running. Once it has caught up with the log, it locks the live tables (live writers wait),
applies what arrived since, and swaps the rebuilt tables in, in one transaction: readers see
the old tables until that commit and the new ones after it, which hold every event up to the
end of the log at the switch, hence every event applied live.

Nothing else changes: ``ops.event_log`` and the dead letters are kept, and the family agents'
positions in ``ops.projection_offsets`` stay true of the rebuilt tables, since these hold every
event the log held when they were swapped in. An event that fails is counted, not
dead-lettered again; the switch happens only when every failed event is one live processing
dead-lettered too, so the rebuilt tables never lack what the live ones hold.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from projections.database import connection, create_pool, database_errors
from projections.jobs import logged_statuses, start_job
from projections.shadow import (
    create_shadow,
    drop_leftovers,
    drop_shadow,
    index_shadow,
    lock_live,
    refuse_dependent_views,
    shadow_schema,
    switch,
)
from projections.writer import Projecting
from streams.errors import DependencyUnavailable, StreamsError
from streams.handlers.registry import load_handlers
from streams.jobs.applying import CONNECTIONS, JobApplier, JobStore
from streams.jobs.reading import LogReader, Range
from streams.jobs.running import Job, exit_code, running_job
from streams.jobs.yielding import LiveTraffic
from streams.log.consumed import ConsumedEvent, Outcome
from streams.log.envelope import DeadLetter
from streams.log.routing import FAMILIES
from streams.settings import Settings
from streams.worker.settling import RetryPolicy, patiently

KIND = "rebuild"
_REBUILD_LOCK = 0x5354524D52424C44
"""Advisory lock held by the one rebuild that may run at a time."""
_FAILURES_SHOWN = 3


async def rebuild(settings: Settings, family: str | None) -> int:
    """Rebuild the mirror tables of ``family`` (every family when None); return the exit code."""
    registry = load_handlers()
    families = [family] if family else list(FAMILIES)
    tables = sorted(t for f in families for t in registry.tables_of(f))
    if not tables:
        raise StreamsError(f"family {family} has no mirror tables to rebuild")
    with database_errors(settings.database_url):
        guard = await AsyncConnection.connect(settings.database_url, autocommit=True)
    pool = create_pool(settings, min_size=2, max_size=CONNECTIONS)
    try:
        cursor = await guard.execute("SELECT pg_try_advisory_lock(%s)", [_REBUILD_LOCK])
        row = await cursor.fetchone()
        if not (row and row[0]):
            raise StreamsError("another rebuild is running; wait for it to end")
        await refuse_dependent_views(guard, tables)
        await drop_leftovers(guard)
        await pool.open(wait=False)
        return await _rebuild(settings, guard, pool, family, tables)
    finally:
        await pool.close()
        await guard.close()


async def _rebuild(
    settings: Settings, guard: AsyncConnection[Any], pool: AsyncConnectionPool,
    family: str | None, tables: list[str],
) -> int:
    failures: dict[str, str] = {}

    async def failed(family: str, event: ConsumedEvent, letter: DeadLetter) -> None:
        """A rebuild dead-letters nothing: live processing did for what failed."""
        failures.setdefault(event.envelope.id, f"{letter.error_type}: {letter.error_message}")

    async def nowhere(letter: DeadLetter) -> None:
        """Nothing is produced: see ``failed``."""

    async def never(letter: DeadLetter) -> bool:
        return False

    async with LogReader(settings.kafka_bootstrap_servers, settings.topic()) as reader:
        partitions = await reader.partitions()
        span = await reader.resolve(partitions)
        async with connection(pool) as conn:
            job = await start_job(
                conn, KIND, {"family": family, "tables": tables}, total=span.remaining
            )
        schema = shadow_schema(job.id)
        retry = RetryPolicy.from_settings(settings)
        applier = JobApplier(
            JobStore(pool, load_handlers(), Projecting.rebuild(schema), never, failed),
            nowhere, RetryPolicy(1, retry.backoff, retry.backoff_max), in_log=True,
            gives_up="left out of the rebuild (not dead-lettered again)",
        )
        await create_shadow(guard, schema, tables)
        try:
            async with LiveTraffic(settings, pool) as live, running_job(
                pool, job, KIND
            ) as running:
                await _catch_up(reader, span, applier, running, family, settings, guard,
                                schema, tables, live)
                if not running.interrupted:
                    await _refuse_new_failures(pool, failures)
                    await _switch(reader, span, applier, running, family, settings, guard,
                                  schema, tables)
        except BaseException:
            await drop_shadow(guard, schema)
            raise
        if running.interrupted:
            await drop_shadow(guard, schema)
        running.summary(
            "interrupted: the live tables are unchanged" if running.interrupted
            else f"switched {len(tables)} table(s)",
            [("tables", ", ".join(tables))],
        )
        return exit_code(running)


async def _catch_up(
    reader: LogReader, span: Range, applier: JobApplier, running: Job, family: str | None,
    settings: Settings, guard: AsyncConnection[Any], schema: str, tables: list[str],
    live: LiveTraffic,
) -> None:
    """Apply the log up to its end as it was at the start, index, then follow the log until
    what is left is less than a batch, giving way to live processing between batches."""
    await _apply_range(reader, span, applier, running, family, settings, live=live)
    if running.interrupted:
        return
    await index_shadow(guard, schema, tables)
    while not running.interrupted:
        span.end = await reader.ends(list(span.next))
        if span.remaining < settings.job_batch_size:
            return
        await _apply_range(reader, span, applier, running, family, settings, live=live)


async def _switch(
    reader: LogReader, span: Range, applier: JobApplier, running: Job, family: str | None,
    settings: Settings, guard: AsyncConnection[Any], schema: str, tables: list[str],
) -> None:
    """Lock the live tables, apply what arrived since, and swap the rebuilt tables in.

    A deadlock with a live writer that locked the same tables in another order is waited
    out and tried again, as live writers do.
    """

    async def attempt() -> None:
        try:
            async with guard.transaction():
                await lock_live(guard, tables)
                span.end = await reader.ends(list(span.next))
                await _apply_range(reader, span, applier, running, family, settings,
                                   until_done=True)
                await switch(guard, schema, tables)
        except psycopg.errors.DeadlockDetected as exc:
            raise DependencyUnavailable(f"the switch met a live writer: {exc}") from exc

    await patiently(attempt, RetryPolicy.from_settings(settings), "switching the tables")


async def _apply_range(
    reader: LogReader, span: Range, applier: JobApplier, running: Job, family: str | None,
    settings: Settings, *, until_done: bool = False, live: LiveTraffic | None = None,
) -> None:
    async for records in reader.read(span, settings.job_batch_size):
        processed, failed = await applier.apply(records, only=family)
        done = running.state.processed + running.state.failed + processed + failed
        await running.advance(processed, failed, total=done + span.remaining)
        if running.interrupted and not until_done:
            return
        if live is not None:
            await live.give_way(running)


async def _refuse_new_failures(pool: AsyncConnectionPool, failures: dict[str, str]) -> None:
    """Raise when an event failed that live processing applied.

    One that live processing dead-lettered failed there too, and one it has not reached yet
    will be settled by it after the switch, against the rebuilt tables.
    """
    if not failures:
        return
    async with connection(pool) as conn:
        statuses = await logged_statuses(conn, list(failures))
    applied = [
        (event_id, error) for event_id, error in failures.items()
        if statuses.get(event_id, Outcome.DEAD_LETTERED) != Outcome.DEAD_LETTERED
    ]
    if applied:
        shown = "; ".join(f"{i}: {e}" for i, e in applied[:_FAILURES_SHOWN])
        raise StreamsError(
            f"{len(applied)} event(s) that live processing applied fail now, so the live "
            f"tables are kept (fix the handler and rebuild again): {shown}"
        )
