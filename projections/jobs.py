"""The rows of ``ops.batch_jobs``: what replays, rebuilds and retries did, updated as they go.

A job's row is written in its own short transactions, so the monitoring API and a second
terminal see the counts move while the job runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from projections.database import queries
from streams.errors import StreamsError


@dataclass
class JobState:
    """What a job has done so far, and where it is (its own notion of a position)."""

    id: int
    kind: str
    params: dict[str, Any]
    total: int | None = None
    processed: int = 0
    failed: int = 0
    position: dict[str, Any] = field(default_factory=dict)


async def start_job(
    conn: AsyncConnection[Any], kind: str, params: dict[str, Any], *,
    total: int | None = None, position: dict[str, Any] | None = None,
) -> JobState:
    """Insert a running job of ``kind`` and return its state."""
    async with conn.transaction():
        cursor = await conn.execute(
            queries("jobs")["start_job"],
            {"kind": kind, "params": Jsonb(params), "total": total,
             "position": Jsonb(position or {})},
        )
        row = await cursor.fetchone()
    assert row is not None
    return JobState(int(row[0]), kind, params, total, position=dict(position or {}))


async def resume_job(conn: AsyncConnection[Any], job_id: int, kind: str) -> JobState:
    """Mark job ``job_id`` running again and return where it stopped.

    Raises a one-line error when there is no such job of ``kind`` or it already succeeded.
    """
    async with conn.transaction():
        cursor = await conn.execute(queries("jobs")["resume_job"], {"id": job_id, "kind": kind})
        row = await cursor.fetchone()
        if row is None:
            found = await (await conn.execute(queries("jobs")["job_status"], {"id": job_id})
                           ).fetchone()
    if row is None:
        if found is None:
            raise StreamsError(f"there is no batch job {job_id}")
        if found[0] != kind:
            raise StreamsError(f"batch job {job_id} is a {found[0]}, not a {kind}")
        raise StreamsError(f"batch job {job_id} already succeeded: nothing to resume")
    params, total, processed, failed, position = row
    return JobState(
        job_id, kind, dict(params), None if total is None else int(total), int(processed),
        int(failed), dict(position or {}),
    )


async def record_progress(conn: AsyncConnection[Any], job: JobState) -> None:
    """Store the job's counts and position."""
    async with conn.transaction():
        await conn.execute(queries("jobs")["record_progress"], _row(job))


async def finish_job(
    conn: AsyncConnection[Any], job: JobState, status: str, error: str | None = None
) -> None:
    """Store the job's final counts and ``status``: succeeded, failed or cancelled."""
    async with conn.transaction():
        await conn.execute(
            queries("jobs")["finish_job"], {**_row(job), "status": status, "error": error}
        )


def _row(job: JobState) -> dict[str, Any]:
    return {
        "id": job.id, "total": job.total, "processed": job.processed, "failed": job.failed,
        "position": Jsonb(job.position),
    }


async def logged_statuses(conn: AsyncConnection[Any], event_ids: list[str]) -> dict[str, str]:
    """The ``ops.event_log`` status of each of the events that has one."""
    async with conn.transaction():
        cursor = await conn.execute(queries("jobs")["logged_statuses"], {"event_ids": event_ids})
        return {str(event_id): str(status) for event_id, status in await cursor.fetchall()}


async def known_events(conn: AsyncConnection[Any], event_ids: list[str]) -> set[str]:
    """The ids among ``event_ids`` a worker logged or a backfill appended already."""
    async with conn.transaction():
        cursor = await conn.execute(queries("jobs")["known_events"], {"event_ids": event_ids})
        return {str(event_id) for (event_id,) in await cursor.fetchall()}


async def sending_backfilled(conn: AsyncConnection[Any], job: int, event_ids: list[str]) -> None:
    """Remember that backfill job ``job`` is appending these events to the log."""
    async with conn.transaction():
        await conn.execute(
            queries("jobs")["sending_backfilled"], {"event_ids": event_ids, "job": job}
        )


async def appended_backfilled(conn: AsyncConnection[Any], event_ids: list[str]) -> None:
    """Remember that Kafka acknowledged these backfilled events."""
    async with conn.transaction():
        await conn.execute(queries("jobs")["appended_backfilled"], {"event_ids": event_ids})


async def unsettled_backfilled(conn: AsyncConnection[Any], job: int) -> dict[str, datetime]:
    """The events job ``job`` was appending when it stopped, each with when it sent them."""
    async with conn.transaction():
        cursor = await conn.execute(queries("jobs")["unsettled_backfilled"], {"job": job})
        return {str(event_id): sent_at for event_id, sent_at in await cursor.fetchall()}


async def forget_backfilled(conn: AsyncConnection[Any], event_ids: list[str]) -> None:
    """Forget events a stopped job sent that never reached the log: they are holes again."""
    async with conn.transaction():
        await conn.execute(queries("jobs")["forget_backfilled"], {"event_ids": event_ids})
