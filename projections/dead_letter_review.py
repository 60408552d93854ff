"""Dead letters as operators see them: listed, shown, resolved, and picked for a retry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from projections.database import queries


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters a listing shows; None selects everything."""

    status: str | None = "open"
    type: str | None = None
    family: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class RetryItem:
    """What a retry republishes of one dead letter."""

    id: int
    event_id: str
    type: str
    payload: str
    endpoint: str | None
    received_at: datetime | None


async def list_dead_letters(
    conn: AsyncConnection[Any], where: DeadLetterFilter, *, after: int = 0, limit: int = 50
) -> list[dict[str, Any]]:
    """One page of dead letters, oldest id first, after the id ``after``."""
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            queries("dead_letter_review")["list_dead_letters"],
            {
                "status": where.status, "type": where.type, "family": where.family,
                "since": where.since, "until": where.until, "after": after, "limit": limit,
            },
        )
        return await cursor.fetchall()


async def show_dead_letter(conn: AsyncConnection[Any], dead_letter: int) -> dict[str, Any] | None:
    """Every field of one dead letter, its payload included; None when there is no such id."""
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(queries("dead_letter_review")["show_dead_letter"],
                             {"id": dead_letter})
        return await cursor.fetchone()


async def resolve_dead_letter(conn: AsyncConnection[Any], dead_letter: int, note: str) -> bool:
    """Close a dead letter with the operator's note; False when none is left to resolve."""
    async with conn.transaction():
        cursor = await conn.execute(
            queries("dead_letter_review")["resolve_dead_letter"], {"id": dead_letter, "note": note}
        )
        return await cursor.fetchone() is not None


async def retry_selection(
    conn: AsyncConnection[Any], *, ids: list[int] | None = None, type: str | None = None
) -> list[int]:
    """Ids of the open dead letters among ``ids``, of ``type``, or all of them."""
    async with conn.transaction():
        cursor = await conn.execute(
            queries("dead_letter_review")["retry_selection"], {"ids": ids, "type": type}
        )
        return [int(row[0]) for row in await cursor.fetchall()]


async def retry_items(conn: AsyncConnection[Any], ids: list[int]) -> list[RetryItem]:
    """What to republish of each of these dead letters."""
    async with conn.transaction():
        cursor = await conn.execute(queries("dead_letter_review")["retry_items"], {"ids": ids})
        return [RetryItem(int(i), str(e), str(t), str(p), endpoint, received)
                for i, e, t, p, endpoint, received in await cursor.fetchall()]


async def retry_outcomes(
    conn: AsyncConnection[Any], ids: list[int], published: datetime
) -> dict[int, tuple[str, str]]:
    """Per dead letter retried at ``published``: retried, failed again, or pending, and its
    latest error."""
    async with conn.transaction():
        cursor = await conn.execute(
            queries("dead_letter_review")["retry_outcomes"], {"ids": ids, "published": published}
        )
        return {int(i): (str(outcome), str(error)) for i, outcome, error
                in await cursor.fetchall()}
