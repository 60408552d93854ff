"""Monthly partitions of ``ops.event_log`` and ``ops.event_trail``: created ahead, dropped old.

Both tables grow with every event. Each month has a partition of its own, named
``<table>_YYYY_MM``, so dropping a month is instant and lookups by time prune to the months they
touch; a default partition takes whatever falls outside (events older than any partition, say a
backfill of last year). ``stripe-streams migrate`` and every worker start (then every few hours)
create the months ahead, moving a month's rows out of the default partition first if some landed
there, and drop the months older than the retention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from projections.database import database_errors

PARTITIONED = {"event_log": "created", "event_trail": "at"}
"""Each partitioned table of schema ops and the timestamp column it is partitioned by."""
MONTHS_AHEAD = 3
"""Months after the current one that always have a partition (a worker may be down for weeks)."""
# Arbitrary constant naming partition maintenance among advisory locks.
_LOCK_KEY = 0x53545054
_LOCK_TIMEOUT = "5s"


@dataclass
class Maintenance:
    """What one run of :func:`maintain_partitions` changed."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    moved: int = 0
    """Rows moved out of a default partition into the month created for them."""
    purged: int = 0
    """Rows older than the retention deleted from a default partition."""


def month_start(moment: datetime, shift: int = 0) -> datetime:
    """The first instant (UTC) of the month ``shift`` months after the one holding ``moment``."""
    index = moment.astimezone(UTC).year * 12 + moment.astimezone(UTC).month - 1 + shift
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partition_name(table: str, month: datetime) -> str:
    return f"{table}_{month:%Y_%m}"


def maintain_partitions(
    conn: psycopg.Connection[tuple[object, ...]],
    *,
    now: datetime,
    retention_months: int = 0,
) -> Maintenance | None:
    """Create this month's partitions and the next ones, and drop expired ones.

    ``retention_months`` keeps that many whole months before the current one (0 keeps every
    month). Returns None without waiting when another process is maintaining the partitions.
    ``conn`` must be in autocommit mode: each partition is its own transaction, so a lock that
    times out (a long query on the table) costs one partition, retried on the next run.
    """
    with conn.transaction():
        locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_KEY,)).fetchone()
    if not locked or not locked[0]:
        return None
    try:
        done = Maintenance()
        for table, column in PARTITIONED.items():
            existing = _months(conn, table)
            for shift in range(MONTHS_AHEAD + 1):
                month = month_start(now, shift)
                if month not in existing:
                    done.moved += _create(conn, table, column, month)
                    done.created.append(partition_name(table, month))
            if retention_months > 0:
                cutoff = month_start(now, -retention_months)
                for month in sorted(m for m in existing if m < cutoff):
                    _drop(conn, partition_name(table, month))
                    done.dropped.append(partition_name(table, month))
                done.purged += _purge_default(conn, table, column, cutoff)
        return done
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def maintain(database_url: str, *, retention_months: int = 0) -> Maintenance | None:
    """Run :func:`maintain_partitions` on a connection of its own, now."""
    with database_errors(database_url), psycopg.connect(database_url, autocommit=True) as conn:
        return maintain_partitions(
            conn, now=datetime.now(UTC), retention_months=retention_months
        )


def _months(conn: psycopg.Connection[tuple[object, ...]], table: str) -> set[datetime]:
    """The months that have a partition of ``ops.<table>``, read from their names."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass",
        (f"ops.{table}",),
    ).fetchall()
    months = set()
    for (name,) in rows:
        suffix = str(name).removeprefix(f"{table}_")
        try:
            months.add(datetime.strptime(suffix, "%Y_%m").replace(tzinfo=UTC))
        except ValueError:
            continue
    return months


def _create(
    conn: psycopg.Connection[tuple[object, ...]], table: str, column: str, month: datetime
) -> int:
    """Create the partition of ``month``, first moving its rows out of the default partition."""
    name = partition_name(table, month)
    ids = {
        "parent": sql.Identifier("ops", table),
        "default": sql.Identifier("ops", f"{table}_default"),
        "partition": sql.Identifier("ops", name),
        "column": sql.Identifier(column),
    }
    bounds = {"start": month, "end": month_start(month, 1)}
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(_LOCK_TIMEOUT)))
        conn.execute(
            sql.SQL(
                "CREATE TABLE {partition} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            ).format(**ids)
        )
        moved = conn.execute(
            sql.SQL(
                "WITH moved AS (DELETE FROM {default} WHERE {column} >= %(start)s "
                "AND {column} < %(end)s RETURNING *) INSERT INTO {partition} SELECT * FROM moved"
            ).format(**ids),
            bounds,
        ).rowcount
        # DDL takes no parameters: the bounds are rendered as literals.
        conn.execute(
            sql.SQL(
                "ALTER TABLE {parent} ATTACH PARTITION {partition} FOR VALUES FROM ({start}) "
                "TO ({end})"
            ).format(**ids, start=sql.Literal(bounds["start"]), end=sql.Literal(bounds["end"]))
        )
    return max(moved, 0)


def _drop(conn: psycopg.Connection[tuple[object, ...]], name: str) -> None:
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(_LOCK_TIMEOUT)))
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("ops", name)))


def _purge_default(
    conn: psycopg.Connection[tuple[object, ...]], table: str, column: str, cutoff: datetime
) -> int:
    with conn.transaction():
        deleted = conn.execute(
            sql.SQL("DELETE FROM {} WHERE {} < %s").format(
                sql.Identifier("ops", f"{table}_default"), sql.Identifier(column)
            ),
            (cutoff,),
        ).rowcount
    return max(deleted, 0)
