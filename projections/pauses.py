"""Families paused by the dead-letter circuit breaker, in ``ops.family_pauses``.

A pause lives in PostgreSQL, not in a worker: every worker of the consumer group holds the
family while its pause lasts, and ``stripe-streams dlq resume FAMILY``, another process, ends
it by deleting the row. A row whose ``resume_at`` has passed pauses nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from projections.database import queries


async def pause_family(
    conn: AsyncConnection[Any], family: str, resume_at_seconds_from_now: float, reason: str
) -> datetime:
    """Pause ``family`` from now for so many seconds, replacing any pause; return its end."""
    resume_at: datetime
    async with conn.transaction():
        cursor = await conn.execute(
            queries("pauses")["pause_family"],
            {"family": family, "seconds": resume_at_seconds_from_now, "reason": reason},
        )
        [(resume_at,)] = await cursor.fetchall()
    return resume_at


async def paused_families(conn: AsyncConnection[Any]) -> dict[str, datetime]:
    """The families paused right now, each with when its pause ends."""
    async with conn.transaction():
        cursor = await conn.execute(queries("pauses")["paused_families"])
        rows = await cursor.fetchall()
    return {str(family): resume_at for family, resume_at in rows}


async def resume_family(conn: AsyncConnection[Any], family: str) -> bool:
    """End ``family``'s pause; False when it was not paused (no row, or its pause was over)."""
    async with conn.transaction():
        cursor = await conn.execute(queries("pauses")["resume_family"], {"family": family})
        row = await cursor.fetchone()
    return bool(row and row[0])
