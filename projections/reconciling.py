"""What reconcile reads of the mirrors: rows to compare with Stripe's objects, and ties."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, sql

from projections.database import queries
from projections.writer import MIRROR_SCHEMA


@dataclass(frozen=True)
class MirrorRow:
    """A mirror row as reconcile compares it."""

    data: dict[str, Any]
    deleted: bool
    last_event_created: int | None


async def mirror_rows(
    conn: AsyncConnection[Any], table: str, ids: list[str]
) -> dict[str, MirrorRow]:
    """The rows of mirror table ``table`` among ``ids``."""
    statement = sql.SQL(queries("reconciling")["mirror_rows"]).format(
        table=sql.Identifier(MIRROR_SCHEMA, table)
    )
    async with conn.transaction():
        cursor = await conn.execute(statement, {"ids": ids})
        return {
            str(row_id): MirrorRow(data, bool(deleted), None if created is None else int(created))
            for row_id, data, deleted, created in await cursor.fetchall()
        }


async def ties(conn: AsyncConnection[Any], table: str | None) -> list[tuple[str, str]]:
    """The (table, object id) of every recorded tie, of ``table`` only if given."""
    async with conn.transaction():
        cursor = await conn.execute(queries("reconciling")["ties"], {"table": table})
        return [(str(t), str(o)) for t, o in await cursor.fetchall()]


async def forget_tie(conn: AsyncConnection[Any], table: str, object_id: str) -> None:
    """Drop a tie reconcile has settled."""
    async with conn.transaction():
        await conn.execute(queries("reconciling")["forget_tie"],
                           {"table": table, "object_id": object_id})
