"""Mirror tables built beside the live ones and swapped in, in one transaction: a blue/green
switch of the projection.

A rebuild fills tables of the same shape in a schema of its own while readers and the workers
keep using schema ``stripe``; the switch locks the live tables, lets the caller apply what
arrived meanwhile, and moves the rebuilt tables into ``stripe`` with the live tables' index
names and grants, dropping the old ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection, sql

from projections.database import queries
from projections.writer import MIRROR_SCHEMA, SWITCH_LOCK
from streams.errors import StreamsError

SHADOW_PREFIX = "stripe_rebuild_"


def shadow_schema(job_id: int) -> str:
    """The schema a rebuild job fills."""
    return f"{SHADOW_PREFIX}{job_id}"


async def drop_leftovers(conn: AsyncConnection[Any]) -> list[str]:
    """Drop the schemas of rebuilds that died before their end; return their names."""
    cursor = await conn.execute(queries("shadow")["leftover_schemas"])
    leftovers = [str(name) for (name,) in await cursor.fetchall()]
    for name in leftovers:
        await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
    return leftovers


async def refuse_dependent_views(conn: AsyncConnection[Any], tables: Sequence[str]) -> None:
    """Raise a one-line error when views depend on the tables: the switch would drop them."""
    cursor = await conn.execute(
        queries("shadow")["dependent_views"], {"tables": [_live(t) for t in tables]}
    )
    views = [str(name) for (name,) in await cursor.fetchall()]
    if views:
        raise StreamsError(
            f"views {', '.join(views)} depend on the tables to rebuild; drop them first and "
            "create them again after the rebuild"
        )


async def create_shadow(conn: AsyncConnection[Any], schema: str, tables: Sequence[str]) -> None:
    """Create empty copies of the live tables in ``schema`` with their keys, not yet indexed.

    Indexes other than the keys are built by :func:`index_shadow` once the bulk of the rows
    is in: building an index once is cheaper than keeping it up to date row by row.
    """
    async with conn.transaction():
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        for table in tables:
            shadow = sql.Identifier(schema, table)
            await conn.execute(sql.SQL(
                "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                "INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMMENTS)"
            ).format(shadow, sql.Identifier(MIRROR_SCHEMA, table)))
            cursor = await conn.execute(
                queries("shadow")["index_constraints"], {"table": _live(table)}
            )
            for name, definition in await cursor.fetchall():
                await conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                    shadow, sql.Identifier(str(name)), sql.SQL(str(definition))
                ))


async def index_shadow(conn: AsyncConnection[Any], schema: str, tables: Sequence[str]) -> None:
    """Build on the shadow tables every other index the live tables have, with its name."""
    async with conn.transaction():
        for table in tables:
            shadow = sql.Identifier(schema, table).as_string(conn)
            cursor = await conn.execute(
                queries("shadow")["plain_indexes"], {"table": _live(table), "shadow": shadow}
            )
            for (definition,) in await cursor.fetchall():
                await conn.execute(sql.SQL(str(definition)))


async def lock_live(conn: AsyncConnection[Any], tables: Sequence[str]) -> None:
    """Lock the live tables against every reader and writer until the transaction ends.

    Call inside the transaction that ends with :func:`switch`; live writers wait, readers
    too, for as long as the caller takes to catch up. Writers wait at the writer's switch lock,
    before they name a table, so they resolve the tables swapped in.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", [SWITCH_LOCK])
    await conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
        sql.SQL(", ").join(sql.Identifier(MIRROR_SCHEMA, t) for t in sorted(tables))
    ))


async def switch(conn: AsyncConnection[Any], schema: str, tables: Sequence[str]) -> None:
    """Replace the live tables by those of ``schema`` and drop the old ones and ``schema``.

    Runs in the caller's transaction, after :func:`lock_live`.
    """
    for table in tables:
        cursor = await conn.execute(
            queries("shadow")["grants"], {"schema": MIRROR_SCHEMA, "table": table}
        )
        grants = await cursor.fetchall()
        await conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(MIRROR_SCHEMA, table)))
        await conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
            sql.Identifier(schema, table), sql.Identifier(MIRROR_SCHEMA)
        ))
        for grantee, privilege in grants:
            await conn.execute(sql.SQL("GRANT {} ON {} TO {}").format(
                sql.SQL(str(privilege)), sql.Identifier(MIRROR_SCHEMA, table),
                sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(str(grantee)),
            ))
    await conn.execute(sql.SQL("DROP SCHEMA {}").format(sql.Identifier(schema)))


async def drop_shadow(conn: AsyncConnection[Any], schema: str) -> None:
    """Drop a rebuild's schema and everything in it."""
    await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _live(table: str) -> str:
    return f"{MIRROR_SCHEMA}.{table}"
